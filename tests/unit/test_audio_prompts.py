"""Audio prompts between the config and the runners: placeholder expansion by the model's processor, the clear
errors (a sound for a model without an audio tower, at another sample rate, longer than the window), the
device's multi_modal_data and the reference's mel features."""
from types import SimpleNamespace

import numpy as np
import pytest

from pytest_npuprec.capture.audio import AudioClip, audio_token_id
from pytest_npuprec.config.loader import load_config
from pytest_npuprec.config.reader import ConfigError
from pytest_npuprec.runners.vllm_media import ExpansionMismatch, check_expansion, vllm_prompts

MODEL = "tiny-Qwen2-Audio-7B-Instruct"


@pytest.fixture(scope="module")
def tiny_audio():
    from pytest_npuprec.standins import ensure_standin

    return ensure_standin(MODEL)


@pytest.fixture(scope="module")
def tiny_llama_dir():
    from pytest_npuprec.standins import ensure_standin

    return ensure_standin("tiny-llama")


def _render(tmp_path, model_dir, prompts: str):
    from pytest_npuprec.capture.prompts import load_tokenizer, render_prompts

    path = tmp_path / "m.yaml"
    path.write_text("model_name: org/m\nprecision:\n  max_tokens: 2\n  thresholds: {token_agreement: {min: 0.9}}\n"
                    "  prompts:" + prompts)
    return path, lambda: render_prompts(load_config(path), load_tokenizer(model_dir, False), model_dir)


def test_audio_prompts_render_expanded_with_the_placeholder_positions(tmp_path, tiny_audio):
    token = audio_token_id(tiny_audio)
    _, render = _render(tmp_path, tiny_audio, """
    - {id: one, audios: [{synthetic: tone, seconds: 1.0, seed: 1}], text: "Describe the sound."}
    - id: two
      messages:
        - role: user
          content:
            - {type: audio, audio: {synthetic: noise, seconds: 0.5, seed: 1}}
            - {type: text, text: "and"}
            - {type: audio, audio: {synthetic: chirp, seconds: 1.5, seed: 2}}
    - {id: text, messages: [{role: user, content: "Describe the sound."}]}
""")
    one, two, text = render()
    # 1 s at 16 kHz = 100 mel frames -> 50 after the stride-2 conv -> 25 after the pooling
    assert len(one.media_positions) == 25 and len(one.images) == 1 and one.modality == "audio"
    assert [one.token_ids[p] for p in one.media_positions] == [token] * 25
    assert one.media_positions == tuple(range(one.media_positions[0], one.media_positions[0] + 25))
    assert len(two.images) == 2 and len(two.media_positions) == 12 + 37  # 0.5 s and 1.5 s
    assert text.images == () and token not in text.token_ids
    assert one.image_digests != two.image_digests[:1]


def test_a_sound_for_a_model_without_an_audio_tower_is_a_config_error(tmp_path, tiny_llama_dir):
    path, render = _render(tmp_path, tiny_llama_dir, """
    - plain
    - {id: hear, audios: [{synthetic: tone}], text: "What is it?"}
""")
    with pytest.raises(ConfigError) as info:
        render()
    message = str(info.value)
    assert str(path) in message and "precision.prompts[1].audios[0]" in message and "'hear'" in message
    assert "takes no audio" in message


@pytest.mark.parametrize("entry, words", [
    ("{synthetic: tone, sample_rate: 8000}", ["8000 Hz", "takes 16000 Hz", "sample_rate: 16000"]),
    ("long.wav", ["long.wav: 31.00 s", "window of 30 s", "cut off"]),
])
def test_a_sound_the_feature_extractor_would_alter_is_a_config_error(tmp_path, tiny_audio, entry, words):
    import wave

    with wave.open(str(tmp_path / "long.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.zeros(31 * 16000, "<i2").tobytes())
    path, render = _render(tmp_path, tiny_audio, f"\n    - {{id: hear, audios: [{entry}], text: hi}}\n")
    with pytest.raises(ConfigError) as info:
        render()
    message = str(info.value)
    assert str(path) in message and "precision.prompts[0].audios[0]" in message and "'hear'" in message
    for word in words:
        assert word in message, (word, message)


AUD = 7


def test_device_prompts_carry_one_placeholder_per_sound_and_the_samples():
    clip = AudioClip(np.zeros(16000, np.float32), 16000)
    prompt, = vllm_prompts([[1, AUD, AUD, AUD, 2]], [(clip,)], {"audio": AUD}, ["s"])
    assert prompt["prompt_token_ids"] == [1, AUD, 2]
    (samples, rate), = prompt["multi_modal_data"]["audio"]
    assert samples is clip.samples and rate == 16000 and "image" not in prompt["multi_modal_data"]
    with pytest.raises(ExpansionMismatch, match="audio input for a model without a audio token id"):
        vllm_prompts([[1, AUD, 2]], [(clip,)], {"image": 5}, ["s"])


def test_a_different_audio_expansion_names_both_lengths():
    clip = AudioClip(np.zeros(16000, np.float32), 16000)
    expected = [1, AUD, AUD, AUD, 2]
    check_expansion("m", [expected], [(clip,)], [SimpleNamespace(prompt_token_ids=list(expected))], {"audio": AUD})
    with pytest.raises(ExpansionMismatch) as info:
        check_expansion("m", [expected], [(clip,)], [SimpleNamespace(prompt_token_ids=[1, AUD, AUD, 2])],
                        {"audio": AUD})
    message = str(info.value)
    assert "m: audio prompt 1" in message and "1 audio(s)" in message
    assert "4 tokens with 2 audio tokens" in message and "reference to 5 tokens with 3 audio tokens" in message


def test_reference_gets_the_processors_mel_features(tiny_audio):
    import torch

    from pytest_npuprec.capture.multimodal import load_processor
    from pytest_npuprec.runners.reference_media import media_inputs
    from pytest_npuprec.standins.synthetic_audio import synthetic_waveform

    processor = load_processor(tiny_audio, False)
    clip = AudioClip(synthetic_waveform("tone", 1.0, 16000, 1), 16000)
    got = media_inputs(SimpleNamespace(forward=lambda input_ids: None), processor, torch.zeros(1, 3), (clip,))
    assert set(got) == {"input_features", "feature_attention_mask"}
    assert tuple(got["input_features"].shape) == (1, 80, 3000) and int(got["feature_attention_mask"].sum()) == 100
    whole = processor(text=["<|AUDIO|>"], audio=[clip.samples], sampling_rate=16000, return_tensors="pt")
    assert torch.equal(whole["input_features"], got["input_features"])
