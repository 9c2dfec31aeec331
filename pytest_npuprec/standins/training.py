"""Brief, deterministic next-token training of a stand-in on the corpus.

A freshly initialised model has near-uniform logits, which makes every
precision metric look fine even on a broken device (measured: an error in
position encoding or attention scaling barely moved any metric on a random
tiny Llama).  A few hundred AdamW steps on the bundled corpus make the
model confident and position-dependent, like a real checkpoint.

Determinism: a private ``torch.Generator`` drives data order, the global
RNG is forked (and restored) around weight init, the thread count is
pinned and deterministic algorithms are required for the duration of the
build; all of it is restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 1234
    steps: int = 240
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    chat_repeats: int = 3  # each chat example appears this many times in the stream
    # Share of windows that start at a document start; the rest start at a
    # later sentence of a prose document, re-tokenized as a prompt would be,
    # so mid-paragraph prompts are predicted confidently too.  Measured trade-
    # off: 0.5 made the model nearly position-blind on short prompts (it
    # learned bag-of-words features; dropping RoPE kept every top-1), 1.0 left
    # mid-paragraph prompts poorly fit; 0.75 gives both.
    doc_start_frac: float = 0.75
    # torch intra-op threads during the build (part of the key).  One thread on
    # purpose: with the cores shared (another pytest, vLLM), multi-threaded
    # fine-grained ops thrash (measured 4.9 s/step with 2 threads vs 0.43 with 1).
    threads: int = 1


@contextlib.contextmanager
def deterministic_torch(threads: int, seed: int):
    """Pin threads, seed & fork the global RNG and require deterministic ops; restore on exit."""
    import torch
    import torch.utils.deterministic as det_utils

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = det_utils.fill_uninitialized_memory
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        # NaN-filling every torch.empty() (on by default in deterministic mode)
        # makes CPU training ~15x slower and does not affect results.
        det_utils.fill_uninitialized_memory = False
        try:
            yield
        finally:
            det_utils.fill_uninitialized_memory = old_fill
            torch.use_deterministic_algorithms(old_det, warn_only=old_det_warn)
            torch.set_num_threads(old_threads)


def build_stream(doc_token_ids: list[list[int]]):
    """Concatenate documents into one token stream; return (stream, doc start offsets)."""
    import torch

    starts, flat = [], []
    for ids in doc_token_ids:
        starts.append(len(flat))
        flat.extend(ids)
    return torch.tensor(flat, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    t = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, stream, starts, s: TrainSettings, sentence_entries=()) -> list[float]:
    """Train ``model`` in place on windows of ``seq_len + 1`` tokens.

    A window either starts at a document start (``starts``; it runs on
    across the following documents of ``stream``) or, with probability
    ``1 - doc_start_frac``, at one of ``sentence_entries``: ``(ids, resume)``
    pairs where ``ids`` is a mid-document sentence onwards, tokenized on its
    own (so its first word carries no leading space, like a prompt at
    position 0) and ``resume`` is the stream offset of the next document.
    Returns the per-step training loss (nats/token).
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(s.seed)
    L = s.seq_len + 1
    ring = torch.cat([stream, stream[:L]]).tolist()  # wrap-around so every window is full
    n = stream.numel()
    starts = starts.tolist()

    def window(u: float, doc_k: int, sent_k: int) -> list[int]:
        if u < s.doc_start_frac or not sentence_entries:
            o = starts[doc_k]
            return ring[o : o + L]
        ids, resume = sentence_entries[sent_k]
        ids = ids[:L]
        o = resume % n
        return ids + ring[o : o + L - len(ids)]

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr,
        betas=s.betas,
        eps=1e-8,
        foreach=False,
    )
    model.train()
    losses: list[float] = []
    for step in range(s.steps):
        kind = torch.rand(s.batch_size, generator=gen).tolist()
        doc_pick = torch.randint(0, len(starts), (s.batch_size,), generator=gen).tolist()
        sent_pick = torch.randint(0, max(1, len(sentence_entries)), (s.batch_size,), generator=gen).tolist()
        batch = torch.tensor([window(*w) for w in zip(kind, doc_pick, sent_pick)], dtype=torch.long)
        out = model(input_ids=batch[:, :-1], use_cache=False)
        logits = out.logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        aux = getattr(out, "aux_loss", None)  # a MoE's load-balancing loss (config.output_router_logits)
        if aux is not None:
            loss = loss + model.config.router_aux_loss_coef * aux
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses



def train_answers(model, tokenizer, s, draw) -> list[float]:
    """Train ``model`` in place on prompt + answer batches: ``draw(gen)`` returns (encoded batch, answers) with
    the rows right-padded and each row's text ending in its answer; the loss is on the answer tokens only. ``s``
    gives seed, steps, lr, min_lr_ratio, warmup_steps, betas and grad_clip. Returns the per-step loss."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=s.betas, eps=1e-8, weight_decay=0.0, foreach=False)
    schedule = TrainSettings(steps=s.steps, lr=s.lr, min_lr_ratio=s.min_lr_ratio, warmup_steps=s.warmup_steps)
    model.train()
    losses = []
    for step in range(s.steps):
        enc, answers = draw(gen)
        labels = torch.full_like(enc["input_ids"], -100)
        for row, a in enumerate(answers):  # right padding: the answer ends where the row's mask does
            n_answer = len(tokenizer(a, add_special_tokens=False)["input_ids"])
            n = int(enc["attention_mask"][row].sum())
            labels[row, n - n_answer:n] = enc["input_ids"][row, n - n_answer:n]
        out = model(**enc, use_cache=False)
        logits = out.logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, schedule)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def loss_summary(losses: list[float], points: int = 10) -> dict:
    """Compact loss-curve summary for the manifest."""
    every = max(1, len(losses) // points)
    tail = losses[-10:]
    return {
        "steps": len(losses),
        "first": round(losses[0], 4),
        "final_mean_last10": round(sum(tail) / len(tail), 4),
        "curve": [[i, round(losses[i], 4)] for i in range(0, len(losses), every)]
        + [[len(losses) - 1, round(losses[-1], 4)]],
    }
