"""Image prompts between the config and the runners: placeholder expansion on both sides, the text positions
compared, and the clear errors (an image for a text-only model; two sides that expanded differently)."""
from types import SimpleNamespace

import pytest

from pytest_npuprec.capture.multimodal import image_token_id, text_positions
from pytest_npuprec.config.loader import load_config
from pytest_npuprec.config.reader import ConfigError
from pytest_npuprec.runners.vllm_media import ExpansionMismatch, check_expansion, collapse_placeholders

IMG = 5


@pytest.fixture(scope="module")
def tiny_vl():
    from pytest_npuprec.standins import ensure_standin

    return ensure_standin("tiny-Qwen3-VL-8B-Instruct")


@pytest.fixture(scope="module")
def tiny_llama_dir():
    from pytest_npuprec.standins import ensure_standin

    return ensure_standin("tiny-llama")


def _write(tmp_path, prompts: str):
    path = tmp_path / "m.yaml"
    path.write_text("model_name: org/m\nprecision:\n  max_tokens: 2\n  thresholds: {token_agreement: {min: 0.9}}\n"
                    "  prompts:" + prompts)
    return path


def test_collapse_keeps_one_placeholder_per_image():
    ids = [1, 3, IMG, IMG, IMG, 4, 7, 3, IMG, IMG, 4, 9]
    assert collapse_placeholders(ids, IMG) == [1, 3, IMG, 4, 7, 3, IMG, 4, 9]
    assert collapse_placeholders([1, 2], IMG) == [1, 2]


def test_text_positions_skip_rows_at_or_predicting_a_placeholder():
    # tokens 3..5 are image placeholders: row 2 predicts one, rows 3..5 read one
    assert text_positions(tuple(range(0, 9)), (3, 4, 5)) == (0, 1, 6, 7, 8)
    assert text_positions((7, 8), ()) == (7, 8)


def test_same_expansion_passes_and_a_different_one_names_both_lengths():
    expected = [1, 3, IMG, IMG, IMG, 4, 9]
    check_expansion("m", [expected], [("img",)], [SimpleNamespace(prompt_token_ids=list(expected))], {"image": IMG})
    check_expansion("m", [[1, 2]], None, [SimpleNamespace(prompt_token_ids=[9])], {"image": IMG})  # text prompts: not checked
    with pytest.raises(ExpansionMismatch) as info:
        check_expansion("m", [expected], [("img",)],
                        [SimpleNamespace(prompt_token_ids=[1, 3, IMG, IMG, IMG, IMG, 4, 9])], {"image": IMG})
    message = str(info.value)
    assert "m: image prompt 1" in message and "8 tokens with 4 image tokens" in message
    assert "reference to 7 tokens with 3 image tokens" in message and "position 5" in message


def test_image_token_id_only_for_vision_language_checkpoints(tmp_path, tiny_vl, tiny_llama_dir):
    assert image_token_id(tiny_vl) == IMG
    assert image_token_id(tiny_llama_dir) is None
    assert image_token_id(tmp_path) is None


def test_an_image_for_a_text_only_model_is_a_config_error(tmp_path, tiny_llama_dir):
    from pytest_npuprec.capture.prompts import load_tokenizer, render_prompts

    path = _write(tmp_path, """
    - plain
    - {id: look, images: [{synthetic: noise, size: [8, 8]}], text: "What is it?"}
""")
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        render_prompts(config, load_tokenizer(tiny_llama_dir, False), tiny_llama_dir)
    message = str(info.value)
    assert str(path) in message and "precision.prompts[1].images[0]" in message and "'look'" in message
    assert "takes no images" in message


def test_image_prompts_render_expanded_with_the_placeholder_positions(tmp_path, tiny_vl):
    from pytest_npuprec.capture.prompts import load_tokenizer, render_prompts

    path = _write(tmp_path, """
    - {id: one, images: [{synthetic: shapes, size: [96, 96], seed: 1}], text: "Describe the image."}
    - id: two
      messages:
        - role: user
          content:
            - {type: image, image: {synthetic: shapes, size: [96, 96], seed: 1}}
            - {type: text, text: "Describe the image."}
            - {type: image, image: {synthetic: noise, size: [64, 32], seed: 1}}
    - {id: text, messages: [{role: user, content: "Describe the image."}]}
""")
    one, two, text = render_prompts(load_config(path), load_tokenizer(tiny_vl, False), tiny_vl)
    assert len(one.media_positions) == 9 and len(one.images) == 1  # 96 x 96: 6 x 6 patches, 2 x 2 merged
    assert [one.token_ids[p] for p in one.media_positions] == [IMG] * 9
    assert one.media_positions == tuple(range(one.media_positions[0], one.media_positions[0] + 9))
    assert len(two.images) == 2 and len(two.media_positions) == 9 + 2  # 64 x 32: 4 x 2 patches -> 2 tokens
    assert text.images == () and IMG not in text.token_ids
    assert one.image_digests != two.image_digests[1:]
