"""The device's side of image and audio prompts: vLLM prompt objects carrying `multi_modal_data`, and the proof
that vLLM expanded each prompt's image / audio placeholders to the very token ids the reference ran.

The device gets the prompt with ONE placeholder per image (sound) and expands it with its own processor (its
own resize and patch grid; its own mel frames); the reference's processor made the expanded ids
(capture/multimodal.py). A resize or processor difference then shows as a different number or place of image tokens, a precision bug of its own,
named here with both lengths, instead of logits compared at shifted positions."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

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


def _split(items: Sequence[Any]) -> dict[str, list[Any]]:
    """A prompt's media by modality, as vLLM's multi_modal_data takes them: PIL images; sounds as (samples,
    sample rate) at the rate the feature extractor takes (capture/audio.py checked it), so vLLM resamples nothing."""
    images = [item for item in items if not hasattr(item, "sample_rate")]
    audio = [(item.samples, item.sample_rate) for item in items if hasattr(item, "sample_rate")]
    return {k: v for k, v in (("image", images), ("audio", audio)) if v}


def vllm_prompts(prompts: Sequence[Sequence[int]], media: Sequence[tuple[Any, ...]] | None,
                 token_ids: Mapping[str, int], salts: Sequence[str]) -> list[Any]:
    """`media`: per prompt its images / sounds; `token_ids`: modality -> placeholder id (multimodal.py)."""
    from vllm.inputs import TokensPrompt

    out = []
    for k, (tokens, salt) in enumerate(zip(prompts, salts, strict=True)):
        items = _split(media[k] if media else ())
        if not items:
            out.append(TokensPrompt(prompt_token_ids=list(tokens), cache_salt=salt))
            continue
        collapsed = list(tokens)
        for modality in items:
            if modality not in token_ids:
                raise ExpansionMismatch(f"a prompt with {modality} input for a model without a {modality} token id")
            collapsed = collapse_placeholders(collapsed, token_ids[modality])
        out.append(TokensPrompt(prompt_token_ids=collapsed, multi_modal_data=items, cache_salt=salt))
    return out


def check_expansion(model: str, prompts: Sequence[Sequence[int]], media: Sequence[tuple[Any, ...]] | None,
                    outputs: Sequence[Any], token_ids: Mapping[str, int]) -> None:
    """vLLM's prompt token ids of every image / audio prompt must equal the reference's expanded ids."""
    for k, (tokens, out) in enumerate(zip(prompts, outputs)):
        if not (media and media[k]):
            continue
        used = list(getattr(out, "prompt_token_ids", None) or [])
        expected = list(tokens)
        if used == expected:
            continue
        modalities = _split(media[k])
        what = " and ".join(modalities)
        placeholders = {token_ids[m] for m in modalities if m in token_ids}
        n_used, n_expected = (sum(t in placeholders for t in ids) for ids in (used, expected))
        first = next((i for i, (a, b) in enumerate(zip(used, expected)) if a != b), min(len(used), len(expected)))
        items = ", ".join(f"{len(v)} {m}(s)" for m, v in modalities.items())
        raise ExpansionMismatch(
            f"{model}: {what} prompt {k + 1} of the batch ({items}): the device expanded it to "
            f"{len(used)} tokens with {n_used} {what} tokens, the reference to {len(expected)} tokens with "
            f"{n_expected} {what} tokens (first difference at position {first}); the two processors differ "
            "(resize, patch grid, feature window or placeholder), so no logits of it can be compared")
