"""The device's side of image prompts: vLLM prompt objects carrying `multi_modal_data`, and the proof that vLLM
expanded each prompt's image placeholders to the very token ids the reference ran.

The device gets the prompt with ONE placeholder per image and expands it with its own processor (its own
resize and patch grid); the reference's processor made the expanded ids (capture/multimodal.py). A resize or
processor difference then shows as a different number or place of image tokens, a precision bug of its own,
named here with both lengths, instead of logits compared at shifted positions."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import NpuprecError


class ExpansionMismatch(NpuprecError, RuntimeError):
    pass


def collapse_placeholders(tokens: Sequence[int], token_id: int) -> list[int]:
    """Each run of image placeholder tokens down to one (the prompt as a chat template renders it)."""
    out: list[int] = []
    for t in tokens:
        if t == token_id and out and out[-1] == token_id:
            continue
        out.append(int(t))
    return out


def vllm_prompts(prompts: Sequence[Sequence[int]], images: Sequence[tuple[Any, ...]] | None,
                 token_id: int | None, salts: Sequence[str]) -> list[Any]:
    from vllm.inputs import TokensPrompt

    out = []
    for k, (tokens, salt) in enumerate(zip(prompts, salts, strict=True)):
        ims = images[k] if images else ()
        if not ims:
            out.append(TokensPrompt(prompt_token_ids=list(tokens), cache_salt=salt))
            continue
        if token_id is None:
            raise ExpansionMismatch("a prompt with images for a model without an image token id")
        out.append(TokensPrompt(prompt_token_ids=collapse_placeholders(tokens, token_id),
                                multi_modal_data={"image": list(ims)}, cache_salt=salt))
    return out


def check_expansion(model: str, prompts: Sequence[Sequence[int]], images: Sequence[tuple[Any, ...]] | None,
                    outputs: Sequence[Any], token_id: int | None) -> None:
    """vLLM's prompt token ids of every image prompt must equal the reference's expanded ids."""
    for k, (tokens, out) in enumerate(zip(prompts, outputs)):
        if not (images and images[k]):
            continue
        used = list(getattr(out, "prompt_token_ids", None) or [])
        expected = list(tokens)
        if used == expected:
            continue
        n_used, n_expected = used.count(token_id), expected.count(token_id)
        first = next((i for i, (a, b) in enumerate(zip(used, expected)) if a != b), min(len(used), len(expected)))
        raise ExpansionMismatch(
            f"{model}: image prompt {k + 1} of the batch ({len(images[k])} image(s)): the device expanded it to "
            f"{len(used)} tokens with {n_used} image tokens, the reference to {len(expected)} tokens with "
            f"{n_expected} image tokens (first difference at position {first}); the two processors differ (resize, "
            "patch grid or placeholder), so no logits of it can be compared")
