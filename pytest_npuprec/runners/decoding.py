"""The one decoding rule both sides follow: greedy on raw logits, every logits processor off.

A checkpoint's generation_config.json may ask for a repetition penalty, an n-gram ban, bad words, a minimum
length, suppressed or forced tokens. transformers' `generate` applies them even at do_sample=False; vLLM takes
some of them as defaults for requests without SamplingParams. Either way the continuation both sides score
would be one the model does not write, and two sides applying them differently part for reasons that are not
precision. So the reference runs its own greedy loop over the model's forward (reference.py) and the device
sends SamplingParams with every processor neutral (device.py). Both stop at max_tokens or at an EOS id: the
generation config's eos_token_id(s) and the tokenizer's, which is what vLLM stops at (its input processor adds
the generation config's ids to the tokenizer's EOS).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# what a baseline records as the rule its continuations followed (baselines/provenance.py)
RULE = "greedy on raw logits; stop at EOS (generation_config eos_token_id + tokenizer eos) or max_tokens"

# generation_config keys that name tokens or say nothing about how a token is chosen
_NOT_SETTINGS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
    "_from_model_config", "use_cache", "max_length", "max_new_tokens", "return_dict_in_generate", "output_scores",
    "output_logits", "output_attentions", "output_hidden_states", "num_return_sequences", "cache_implementation",
})
# a setting at one of these values changes nothing under greedy decoding (do_sample false: temperature, top_k,
# top_p... are sampling knobs; do_sample true is a setting of its own and is ignored, like the rest)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "do_sample": (False, None), "num_beams": (1, None), "num_beam_groups": (1, None), "temperature": (1.0, None),
    "top_k": (50, 0, -1, None), "top_p": (1.0, None), "min_p": (0.0, None), "typical_p": (1.0, None),
    "epsilon_cutoff": (0.0, None), "eta_cutoff": (0.0, None), "repetition_penalty": (1.0, None),
    "encoder_repetition_penalty": (1.0, None), "presence_penalty": (0.0, None), "frequency_penalty": (0.0, None),
    "length_penalty": (1.0, None), "no_repeat_ngram_size": (0, None), "encoder_no_repeat_ngram_size": (0, None),
    "bad_words_ids": (None, []), "force_words_ids": (None, []), "min_length": (0, None),
    "min_new_tokens": (0, None), "suppress_tokens": (None, []), "begin_suppress_tokens": (None, []),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "forced_decoder_ids": (None, []),
    "sequence_bias": (None, {}), "exponential_decay_length_penalty": (None,), "renormalize_logits": (False, None),
    "remove_invalid_values": (False, None), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "early_stopping": (False, None), "diversity_penalty": (0.0, None), "stop_strings": (None, []),
    "low_memory": (None, False),
}


def ignored_settings(model_path: Path) -> dict[str, Any]:
    """The settings of the checkpoint's generation_config.json that the rule ignores (not neutral under greedy
    decoding, in file order); {} without the file."""
    path = Path(model_path) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # transformers and vLLM refuse an unreadable file themselves, naming it
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in doc.items() if k not in _NOT_SETTINGS and v not in _NEUTRAL.get(k, ())}


def describe(model_path: Path) -> str:
    """The rule in words, with what the checkpoint asked for and did not get: the report's `decoding`."""
    ignored = ignored_settings(model_path)
    said = ", ".join(f"{k}={json.dumps(v)}" for k, v in ignored.items())
    return f"{RULE}; generation_config ignored: {said}" if ignored else f"{RULE}; generation_config: nothing to ignore"


def eos_ids(generation_eos: Any, tokenizer_eos: int | None) -> frozenset[int]:
    """The ids generation stops at: the generation config's eos_token_id (an int or a list) and the tokenizer's."""
    ids = set() if generation_eos is None else ({generation_eos} if isinstance(generation_eos, int)
                                                else set(generation_eos))
    if tokenizer_eos is not None:
        ids.add(tokenizer_eos)
    return frozenset(int(i) for i in ids)


def greedy_sampling_params(max_tokens: int, seed: int) -> Any:
    """vLLM SamplingParams for plain greedy on raw logits: every processor set neutral explicitly (an engine's
    defaults from generation_config apply only to requests sent without SamplingParams, but say it anyway)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                          presence_penalty=0.0, frequency_penalty=0.0, min_tokens=0, logit_bias=None,
                          bad_words=None, allowed_token_ids=None, ignore_eos=False, stop=None,
                          max_tokens=max_tokens, seed=seed)
