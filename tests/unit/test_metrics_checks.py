"""Pure functions behind the check kinds: perplexity, labels, thinking sections, ternary groups, and
the numpy safetensors reader the ternary check uses."""
import json
import math
import struct

import numpy as np
import pytest

from pytest_npuprec.checkpoints.tensors import CheckpointError, iter_tensors, tensor_names
from pytest_npuprec.metrics.perplexity import perplexity, token_nll
from pytest_npuprec.metrics.ternary import check_ternary, grouped
from pytest_npuprec.metrics.text import extract_label, prompt_opens_thinking, split_thinking


def test_token_nll_matches_a_direct_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(40, 77)).astype(np.float32)
    targets = rng.integers(0, 77, 40)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)
    expected = -np.log(p[np.arange(40), targets])
    np.testing.assert_allclose(token_nll(logits, targets), expected, rtol=1e-10)
    assert perplexity(expected) == pytest.approx(math.exp(expected.mean()))


def test_uniform_logits_have_vocab_size_perplexity():
    assert perplexity(token_nll(np.zeros((5, 50)), np.arange(5))) == pytest.approx(50)


def test_nonfinite_rows_make_perplexity_nan():
    logits = np.zeros((3, 10))
    logits[1, 4] = np.nan
    nll = token_nll(logits, [0, 1, 2])
    assert np.isnan(nll[1]) and np.isfinite(nll[[0, 2]]).all() and math.isnan(perplexity(nll))
    assert math.isnan(perplexity(np.array([])))


def test_token_nll_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        token_nll(np.zeros((2, 10)), [0, 10])
    with pytest.raises(ValueError, match="one target per row"):
        token_nll(np.zeros((2, 10)), [0])


@pytest.mark.parametrize("pattern, text, label", [
    (r"Safety: (Safe|Unsafe)\nCategories: ([^\n<]+)", "Safety: Unsafe\nCategories: Violent<|im_end|>", "Unsafe/Violent"),
    (r"Safety: (Safe|Unsafe)", "blah Safety: Safe", "Safe"),
    (r"Paris|Berlin", "The capital is Paris.", "Paris"),
    (r"Safety: (Safe|Unsafe)", "no verdict here", None),
])
def test_extract_label(pattern, text, label):
    assert extract_label(pattern, text) == label


@pytest.mark.parametrize("output, opened, state, thinking, answer", [
    ("<think>\nadd them\n</think>\n\nIt is 4.", False, "closed", "add them", "It is 4."),
    ("\nadd them\n</think>\n\nIt is 4.", True, "closed", "add them", "It is 4."),
    ("<think>\nstill going", False, "unclosed", "still going", ""),
    ("It is 4.", False, "none", "", "It is 4."),
    ("add them</think>It is 4.", False, "closed", "add them", "It is 4."),
    ("<think>\n\n</think>\n\nIt is 4.", False, "closed", "", "It is 4."),
])
def test_split_thinking(output, opened, state, thinking, answer):
    split = split_thinking(output, "<think>", "</think>", opened)
    assert (split.state, split.thinking, split.answer) == (state, thinking, answer)


def test_prompt_opens_thinking():
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n", "<think>", "</think>")
    assert not prompt_opens_thinking("<think>a</think>b<|im_start|>assistant\n", "<think>", "</think>")
    assert not prompt_opens_thinking("plain", "<think>", "</think>")


def ternary(shape, scale, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(-1, 2, size=shape) * scale).astype(np.float32)


def test_ternary_tensor_passes_whole_and_grouped():
    w = ternary((8, 64), 0.37)
    assert check_ternary(w, -1).ternary and check_ternary(w, 16).ternary
    assert check_ternary(np.zeros((4, 8)), -1).ternary  # all-zero: no nonzero magnitude at all


def test_per_group_scales_pass_grouped_and_fail_whole():
    scales = np.arange(1, 33, dtype=np.float32)[:, None]  # one scale per group of 16
    w = (ternary((32, 16), 1.0) * scales).reshape(8, 64)
    assert check_ternary(w, 16).ternary
    whole = check_ternary(w, -1)
    assert not whole.ternary and whole.worst_values > 3


def test_dense_weight_fails_and_names_the_worst_group():
    w = ternary((8, 64), 0.5)
    w[5, 20] = 0.25  # one stray magnitude in group (row 5, columns 16..31)
    result = check_ternary(w, 16)
    assert result.bad_groups == 1 and result.worst_group == 5 * 4 + 1 and result.worst_values == 4


def test_nan_weight_is_not_ternary():
    w = ternary((4, 8), 0.5)
    w[0, 0] = np.nan
    assert not check_ternary(w, -1).ternary


def test_group_size_must_divide_the_input_dimension():
    with pytest.raises(ValueError, match="not a multiple of group_size 48"):
        grouped(np.zeros((4, 64)), 48)


def write_safetensors(path, tensors):
    """A minimal safetensors writer (BF16 given as the top 16 bits of float32)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        blob = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_reader_widens_bf16_exactly_and_filters(tmp_path):
    values = np.array([[0.5, -0.5, 0.0], [1.5, -2.0, 3.140625]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)
    write_safetensors(tmp_path / "model.safetensors", {
        "a.q_proj.weight": ("BF16", bf16), "a.norm.weight": ("F32", np.ones(3, np.float32))})
    assert tensor_names(tmp_path) == ["a.q_proj.weight", "a.norm.weight"]
    got = dict(iter_tensors(tmp_path, r"proj\.weight$"))
    assert list(got) == ["a.q_proj.weight"]
    np.testing.assert_array_equal(got["a.q_proj.weight"], values)
    assert list(dict(iter_tensors(tmp_path, "weight", exclude="norm"))) == ["a.q_proj.weight"]


def test_reader_errors_name_the_folder(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no \\*.safetensors file.*pytorch_model.bin"):
        list(iter_tensors(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="truncated"):
        list(iter_tensors(tmp_path))
