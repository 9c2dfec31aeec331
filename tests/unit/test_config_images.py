"""Image prompts in a config: files next to it, seeded synthetic images, content-part messages, and the clear
errors for a broken one (file, key and prompt named)."""
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.config.loader import ConfigError, load_config
from pytest_npuprec.config.schema import ImageSource
from pytest_npuprec.standins.synthetic import PATTERNS, shapes_scene, synthetic_image, synthetic_pixels

HEAD = """
model_name: "org/Some-VL-8B"
serve: {max_model_len: 512}
precision:
  max_tokens: 4
  thresholds: {token_agreement: {min: 0.99}}
  prompts:
"""


def write(tmp_path: Path, prompts: str, serve: str = "") -> Path:
    path = tmp_path / "Some-VL-8B.yaml"
    text = HEAD.replace("serve: {max_model_len: 512}", serve or "serve: {max_model_len: 512}")
    path.write_text(text + prompts, encoding="utf-8")
    return path


def error_of(tmp_path: Path, prompts: str, serve: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, prompts, serve))
    return str(info.value)


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_image("shapes", (32, 24), 1).save(path)
    return path


def test_text_prompt_with_a_file_and_a_synthetic_image(tmp_path):
    png(tmp_path / "images" / "shapes.png")
    config = load_config(write(tmp_path, """
    - id: shapes
      images: [images/shapes.png, {synthetic: gradient, size: [64, 48], seed: 7}]
      text: "Describe the image."
"""))
    prompt = config.precision.prompts[0]
    assert prompt.text == "Describe the image."
    file, synthetic = prompt.images
    assert file.path == (tmp_path / "images" / "shapes.png").resolve()
    assert (synthetic.synthetic, synthetic.size, synthetic.seed) == ("gradient", (64, 48), 7)
    assert prompt.all_images == prompt.images
    assert prompt.label == "[image] [image] Describe the image."


def test_messages_with_image_and_text_parts(tmp_path):
    config = load_config(write(tmp_path, """
    - id: chat
      messages:
        - role: user
          content:
            - {type: image, image: {synthetic: shapes, size: [96, 96], seed: 3}}
            - {type: text, text: "What colour are the shapes?"}
"""))
    message = config.precision.prompts[0].messages[0]
    assert message.template_content() == [{"type": "image"}, {"type": "text", "text": "What colour are the shapes?"}]
    assert message.text == "[image] What colour are the shapes?"
    assert config.precision.prompts[0].all_images == (ImageSource(key="x", synthetic="shapes", size=(96, 96), seed=3),)


@pytest.mark.parametrize("prompts, words", [
    ("    - {id: a, images: [nope.png], text: hi}\n", ["precision.prompts[0].images[0]", "'a'", "nope.png", "not found"]),
    ("    - {id: a, images: [bad.png], text: hi}\n", ["images[0]", "'a'", "not a readable image"]),
    ("    - {id: a, images: [{synthetic: stripes, size: [8, 8]}], text: hi}\n", ["images[0].synthetic", "stripes"]),
    ("    - {id: a, images: [{synthetic: noise, size: [8]}], text: hi}\n", ["images[0].size", "[width, height]"]),
    ("    - {id: a, images: [{synthetic: noise, size: [0, 8]}], text: hi}\n", ["images[0].size"]),
    ("    - {id: a, images: [], text: hi}\n", ["images", "empty"]),
    ("    - {id: a, images: [7], text: hi}\n", ["images[0]", "image path"]),
    ("    - {id: a, images: [x.png], messages: [{role: user, content: hi}]}\n", ["images", "content list"]),
    ("    - {id: a, messages: [{role: user, content: [{type: image}]}]}\n", ["content[0]", "type: image` part"]),
    ("    - {id: a, messages: [{role: user, content: [{type: video, video: v.mp4}]}]}\n", ["content[0]", "type"]),
    ("    - {id: a, messages: [{role: user, content: []}]}\n", ["content", "non-empty list"]),
])
def test_bad_image_entries_name_file_key_and_prompt(tmp_path, prompts, words):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    message = error_of(tmp_path, prompts)
    assert str(tmp_path / "Some-VL-8B.yaml") in message
    for word in words:
        assert word in message, (word, message)


def test_more_images_than_the_engine_limit(tmp_path):
    serve = "serve: {max_model_len: 512, limit_mm_per_prompt: {image: 1}}"
    message = error_of(tmp_path, """
    - id: two
      images: [{synthetic: noise, size: [8, 8]}, {synthetic: noise, size: [8, 8], seed: 1}]
      text: hi
""", serve)
    assert "'two' has 2 images" in message and "limit_mm_per_prompt.image = 1" in message


@pytest.mark.parametrize("pattern", PATTERNS)
def test_synthetic_images_are_seeded(pattern):
    a = synthetic_pixels(pattern, (40, 30), 5)
    assert a.shape == (30, 40, 3) and a.dtype == np.uint8
    assert np.array_equal(a, synthetic_pixels(pattern, (40, 30), 5))
    assert not np.array_equal(a, synthetic_pixels(pattern, (40, 30), 6))
    assert synthetic_image(pattern, (40, 30), 5).size == (40, 30)


def test_shapes_show_their_scene():
    """The colour a shapes image is labelled with is the colour its pixels have (what the VL stand-in learns)."""
    from pytest_npuprec.standins.synthetic import COLOURS

    for seed in range(12):
        scene = shapes_scene(seed)
        pixels = synthetic_pixels("shapes", (96, 96), seed).reshape(-1, 3)
        coloured = np.all(pixels == COLOURS[scene.colour], axis=1).sum()
        assert coloured > 100 * scene.count, (seed, scene)
        assert scene.caption().split()[0] in ("One", "Two", "Three")
