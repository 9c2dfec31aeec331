"""Audio prompts in a config: WAV files next to it, seeded synthetic sounds, content-part messages, and the clear
errors for a broken one (file, key and prompt named)."""
import wave
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.config.audios import read_wav
from pytest_npuprec.config.loader import ConfigError, load_config
from pytest_npuprec.config.schema import AudioSource
from pytest_npuprec.standins.synthetic_audio import LOUDNESS, SOUNDS, sound_scene, synthetic_waveform

HEAD = """
model_name: "org/Some-Audio-7B"
serve: {max_model_len: 512}
precision:
  max_tokens: 4
  thresholds: {token_agreement: {min: 0.99}}
  prompts:
"""


def write(tmp_path: Path, prompts: str, serve: str = "") -> Path:
    path = tmp_path / "Some-Audio-7B.yaml"
    text = HEAD.replace("serve: {max_model_len: 512}", serve or "serve: {max_model_len: 512}")
    path.write_text(text + prompts, encoding="utf-8")
    return path


def error_of(tmp_path: Path, prompts: str, serve: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, prompts, serve))
    return str(info.value)


def wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.repeat(pcm, channels).tobytes())
    return path


def test_text_prompt_with_a_wav_file_and_a_synthetic_sound(tmp_path):
    tone = synthetic_waveform("tone", 0.5, 16000, 3)
    wav(tmp_path / "sounds" / "tone.wav", tone, channels=2)
    config = load_config(write(tmp_path, """
    - id: both
      audios: [sounds/tone.wav, {synthetic: chirp, seconds: 1.5, sample_rate: 16000, seed: 7}]
      text: "Describe the sound."
"""))
    prompt = config.precision.prompts[0]
    file, synthetic = prompt.audios
    assert file.path == (tmp_path / "sounds" / "tone.wav").resolve()
    assert (synthetic.synthetic, synthetic.seconds, synthetic.sample_rate, synthetic.seed) == ("chirp", 1.5, 16000, 7)
    assert prompt.all_audios == prompt.audios and prompt.all_images == ()
    assert prompt.label == "[audio] [audio] Describe the sound."
    samples, rate = read_wav(file.path)  # stereo averaged to mono, 16-bit PCM scaled to [-1, 1]
    assert rate == 16000 and samples.dtype == np.float32 and np.max(np.abs(samples - tone)) < 1e-4


def test_messages_with_audio_and_text_parts(tmp_path):
    config = load_config(write(tmp_path, """
    - id: chat
      messages:
        - role: user
          content:
            - {type: audio, audio: {synthetic: noise, seed: 2}}
            - {type: text, text: "What kind of sound is it?"}
"""))
    message = config.precision.prompts[0].messages[0]
    assert message.template_content() == [{"type": "audio"}, {"type": "text", "text": "What kind of sound is it?"}]
    assert message.text == "[audio] What kind of sound is it?"
    assert config.precision.prompts[0].all_audios == (AudioSource(key="x", synthetic="noise", seed=2),)


@pytest.mark.parametrize("prompts, words", [
    ("    - {id: a, audios: [nope.wav], text: hi}\n", ["precision.prompts[0].audios[0]", "'a'", "nope.wav", "not found"]),
    ("    - {id: a, audios: [bad.wav], text: hi}\n", ["audios[0]", "'a'", "bad.wav", "not a readable sound"]),
    ("    - {id: a, audios: [{synthetic: whistle}], text: hi}\n", ["audios[0].synthetic", "whistle", "tone"]),
    ("    - {id: a, audios: [{synthetic: tone, seconds: 0}], text: hi}\n", ["audios[0].seconds", "> 0"]),
    ("    - {id: a, audios: [{synthetic: tone, sample_rate: 100}], text: hi}\n", ["audios[0].sample_rate", "Hz"]),
    ("    - {id: a, audios: [{synthetic: tone, pitch: high}], text: hi}\n", ["audios[0].pitch", "unknown key"]),
    ("    - {id: a, audios: [], text: hi}\n", ["audios", "empty"]),
    ("    - {id: a, audios: [x.wav], messages: [{role: user, content: hi}]}\n", ["audios", "content list"]),
    ("    - {id: a, messages: [{role: user, content: [{type: audio}]}]}\n", ["content[0]", "type: audio` part"]),
    ("    - {id: a, messages: [{role: user, content: [{type: audio, audio: x.wav, text: t}]}]}\n",
     ["content[0]", "no `text:`"]),
])
def test_bad_audio_entries_name_file_key_and_prompt(tmp_path, prompts, words):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt truncated")
    message = error_of(tmp_path, prompts)
    assert str(tmp_path / "Some-Audio-7B.yaml") in message
    for word in words:
        assert word in message, (word, message)


def test_more_sounds_than_the_engine_limit(tmp_path):
    serve = "serve: {max_model_len: 512, limit_mm_per_prompt: {audio: 1}}"
    message = error_of(tmp_path, """
    - id: two
      audios: [{synthetic: tone}, {synthetic: noise, seed: 1}]
      text: hi
""", serve)
    assert "'two' has 2 sounds" in message and "limit_mm_per_prompt.audio = 1" in message


@pytest.mark.parametrize("kind", SOUNDS)
def test_synthetic_sounds_are_seeded_and_as_loud_as_their_scene_says(kind):
    a = synthetic_waveform(kind, 0.5, 16000, 5)
    assert a.shape == (8000,) and a.dtype == np.float32 and np.max(np.abs(a)) <= 1.0
    assert np.array_equal(a, synthetic_waveform(kind, 0.5, 16000, 5))
    assert not np.array_equal(a, synthetic_waveform(kind, 0.5, 16000, 6))
    for seed in range(8):
        scene = sound_scene(kind, seed)
        rms = float(np.sqrt(np.mean(synthetic_waveform(kind, 1.0, 16000, seed) ** 2)))
        assert abs(rms - LOUDNESS[scene.loudness]) < 0.2 * LOUDNESS[scene.loudness], (kind, seed, rms)


@pytest.mark.parametrize("kind", SOUNDS)
def test_synthetic_sounds_sit_in_their_pitch_band(kind):
    """Most of a sound's energy lies on its side of 1 kHz (what the audio stand-in learns as low / high)."""
    for seed in range(8):
        scene = sound_scene(kind, seed)
        spectrum = np.abs(np.fft.rfft(synthetic_waveform(kind, 1.0, 16000, seed))) ** 2
        low_share = spectrum[:1000].sum() / spectrum.sum()  # 1 Hz bins: below 1 kHz
        assert (low_share > 0.7) if scene.pitch == "low" else (low_share < 0.3), (kind, seed, low_share)
