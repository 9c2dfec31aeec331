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
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    chat_repeats: int = 3  # each chat example appears this many times in the stream
    threads: int = 2  # torch intra-op threads during the build (part of the key)


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


def train(model, stream, starts, s: TrainSettings) -> list[float]:
    """Train ``model`` in place; windows start at document boundaries (so
    every document is also seen from position 0) and run on across the
    following documents.  Returns the per-step training loss (nats/token)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(s.seed)
    n = stream.numel()
    # wrap around so a window starting near the end still has seq_len + 1 tokens
    ring = torch.cat([stream, stream[: s.seq_len + 1]])
    offs = torch.arange(s.seq_len + 1)
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
        pick = starts[torch.randint(0, starts.numel(), (s.batch_size,), generator=gen)]
        batch = ring[(pick[:, None] + offs[None, :]) % (n + s.seq_len + 1)]
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
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
        "curve": [[i, round(losses[i], 4)] for i in range(0, len(losses), every)] + [[len(losses) - 1, round(losses[-1], 4)]],
    }
