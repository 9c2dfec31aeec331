"""precision.checks in YAML: every kind parses, and every mistake names file, key and what was expected."""
import pytest

from pytest_npuprec.config.loader import ConfigError, load_config

BASE = """
model_name: "org/M"
precision:
  max_tokens: 4
  prompts:
    - "plain"
    - id: guard
      messages: [{role: user, content: "hi"}]
  thresholds:
    cosine_similarity: {min: 0.999}
"""

ALL_KINDS = """
  checks:
    determinism: {runs: 3}
    perplexity: {text: "some fixed text", max_ratio: 1.02}
    labels: {pattern: 'Safety: (Safe|Unsafe)', prompts: [guard]}
    thinking: {}
    ternary_weights: {group_size: 64}
    qat_equivalence:
      converter: some.module:convert
      thresholds:
        cosine_similarity: {min: 0.9999, reduce: min}
        max_abs_diff: {max: 0.05, reduce: max}
    batch_invariance: {}
    graph_mode: {max_abs_diff: 0.5}
"""


def load(tmp_path, checks: str):
    path = tmp_path / "M.yaml"
    path.write_text(BASE + checks, encoding="utf-8")
    return load_config(path)


def error(tmp_path, checks: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, checks)
    return str(info.value)


def test_every_kind_parses_and_becomes_a_check(tmp_path):
    c = load(tmp_path, ALL_KINDS)
    k = c.checks
    assert k.determinism.runs == 3 and k.determinism.max_abs_diff == 0
    assert k.perplexity.max_ratio == 1.02 and k.labels.prompts == ("guard",)
    assert k.thinking.open == "<think>" and k.thinking.compare_answer
    assert k.ternary_weights.group_size == 64 and "proj" in k.ternary_weights.include
    assert k.qat_equivalence.converter == "some.module:convert" and k.qat_equivalence.group_size == -1
    assert k.batch_invariance.max_abs_diff == 0 and k.graph_mode.max_abs_diff == 0.5
    assert c.check_ids == ("finite_logits", "cosine_similarity", "cosine_similarity-decode",
                           "qat_equivalence-cosine_similarity", "qat_equivalence-max_abs_diff", "ternary_weights",
                           "determinism", "perplexity", "labels", "thinking", "batch_invariance", "graph_mode")


def test_no_checks_section_means_only_thresholds(tmp_path):
    c = load(tmp_path, "")
    assert c.checks.enabled() == () and c.check_ids == ("finite_logits", "cosine_similarity",
                                                         "cosine_similarity-decode")


def test_converter_command_needs_placeholders(tmp_path):
    c = load(tmp_path, """
  checks:
    qat_equivalence:
      converter: [python, qat-convert.py, --input, "{input}", --output, "{output}", --group_size, "{group_size}"]
      thresholds: {cosine_similarity: {min: 0.9999}}
""")
    assert c.checks.qat_equivalence.converter[3] == "{input}"


@pytest.mark.parametrize("checks, key, expected", [
    ("  checks: {speed: {}}", "precision.checks.speed", "unknown key"),
    ("  checks: {determinism: {runs: 1}}", "precision.checks.determinism.runs", "at least 2 runs"),
    ("  checks: {graph_mode: {}}", "precision.checks.graph_mode.max_abs_diff", "missing; expected a number"),
    ("  checks: {batch_invariance: {max_abs_diff: -1}}", "precision.checks.batch_invariance.max_abs_diff", ">= 0"),
    ("  checks: {batch_invariance: {runs: 2}}", "precision.checks.batch_invariance.runs", "unknown key"),
    ("  checks: {determinism: {max_abs_diff: -1}}", "precision.checks.determinism.max_abs_diff", ">= 0"),
    ("  checks: {perplexity: {max_ratio: 1.1}}", "precision.checks.perplexity.text", "missing"),
    ("  checks: {perplexity: {text: x, max_ratio: 0.9}}", "precision.checks.perplexity.max_ratio", ">= 1"),
    ("  checks: {labels: {pattern: '(unclosed'}}", "precision.checks.labels.pattern", "not a valid regular"),
    ("  checks: {labels: {pattern: x, prompts: [nope]}}", "precision.checks.labels.prompts[0]",
     "unknown prompt id 'nope'"),
    ("  checks: {thinking: {open: ''}}", "precision.checks.thinking.open", "empty"),
    ("  checks: {ternary_weights: {group_size: 0}}", "precision.checks.ternary_weights.group_size", "-1"),
    ("  checks: {qat_equivalence: {thresholds: {cosine_similarity: {min: 0.9}}}}",
     "precision.checks.qat_equivalence.converter", "missing"),
    ("  checks: {qat_equivalence: {converter: 'not a path', thresholds: {cosine_similarity: {min: 0.9}}}}",
     "precision.checks.qat_equivalence.converter", "package.module:function"),
    ("  checks: {qat_equivalence: {converter: [python, x.py], thresholds: {cosine_similarity: {min: 0.9}}}}",
     "precision.checks.qat_equivalence.converter", "{input} and {output}"),
    ("  checks: {qat_equivalence: {converter: 'a:b'}}", "precision.checks.qat_equivalence.thresholds", "missing"),
    ("  checks: {qat_equivalence: {converter: 'a:b', thresholds: {cosine_similarity: {max: 0.9}}}}",
     "precision.checks.qat_equivalence.thresholds.cosine_similarity.max", "expected a `min` bound"),
])
def test_mistakes_name_the_key(tmp_path, checks, key, expected):
    message = error(tmp_path, checks + "\n")
    assert "M.yaml" in message and key in message and expected in message, message


def test_thinking_without_chat_prompts_is_an_error(tmp_path):
    path = tmp_path / "T.yaml"
    path.write_text(BASE.replace("""    - id: guard
      messages: [{role: user, content: "hi"}]
""", "") + "  checks: {thinking: {}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"precision.checks.thinking.prompts: no prompt is given as messages"):
        load_config(path)


class _WordTokenizer:
    """One id per word: enough to tokenize a perplexity text without a model."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text.split())))}


@pytest.mark.parametrize("text, max_model_len, expected", [
    ("one", 64, r"precision.checks.perplexity.text: 1 token\(s\); expected at least 2"),
    ("a b c d e f", 4, r"precision.checks.perplexity.text: 6 tokens exceed serve.max_model_len 4"),
])
def test_perplexity_text_that_cannot_be_scored_is_named(tmp_path, text, max_model_len, expected):
    from pytest_npuprec.capture.prompts import PromptError, perplexity_input

    path = tmp_path / "M.yaml"
    path.write_text(BASE.replace('model_name: "org/M"', f'model_name: "org/M"\nserve: {{max_model_len: {max_model_len}}}')
                    + f"  checks: {{perplexity: {{text: '{text}', max_ratio: 1.01}}}}\n", encoding="utf-8")
    with pytest.raises(PromptError, match=rf"M.yaml: {expected}"):
        perplexity_input(load_config(path), _WordTokenizer(), 2)


def test_perplexity_text_is_scored_at_every_position(tmp_path):
    from pytest_npuprec.capture.prompts import perplexity_input

    prompt = perplexity_input(load(tmp_path, ALL_KINDS), _WordTokenizer(), 2)
    assert (prompt.kind, prompt.id, prompt.index, prompt.token_ids) == ("perplexity", "perplexity", 2, (0, 1, 2))
