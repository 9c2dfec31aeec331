"""Row-wise logit metrics: hand-computed values, properties, NaN/Inf handling, chunking."""
from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats

# property tests need the test extra (pip install -e .[test]); a plain install skips this module
pytest.importorskip("hypothesis")
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_npuprec.metrics import logits
from pytest_npuprec.metrics.logits import (
    CHUNK_ROWS,
    ROW_METRICS,
    compare_rows,
    cosine_similarity,
    count_nonfinite,
    kl_divergence,
    max_abs_diff,
    mean_abs_diff,
    nonfinite_rows,
    pearson_correlation,
    relative_l2,
)
from pytest_npuprec.metrics.registry import METRICS


def rows(*values):
    return np.array(values, dtype=np.float32)


# ---------------------------------------------------------------- hand-computed values


def test_cosine_hand_values():
    device = rows([1, 0], [1, 1], [1, 1])
    reference = rows([0, 1], [1, 0], [-2, -2])
    np.testing.assert_allclose(cosine_similarity(device, reference), [0.0, 1 / math.sqrt(2), -1.0])


def test_parallel_rows_have_cosine_and_pearson_one():
    device, reference = rows([1, 2, 3]), rows([2, 4, 6])
    assert cosine_similarity(device, reference)[0] == pytest.approx(1.0, abs=1e-15)
    assert pearson_correlation(device, reference)[0] == pytest.approx(1.0, abs=1e-15)


def test_pearson_hand_values():
    # [1,2,3] vs [1,3,2]: centred [-1,0,1] and [-1,1,0], dot 1, norms sqrt(2) -> 1/2.
    device = rows([1, 2, 3], [1, 2, 3], [1, 2, 3])
    reference = rows([1, 3, 2], [3, 2, 1], [11, 12, 13])
    np.testing.assert_allclose(pearson_correlation(device, reference), [0.5, -1.0, 1.0])


def test_pearson_of_constant_row_is_nan():
    # In float64, mean([0.1, 0.1, 0.1]) is 0.10000000000000002: centring alone leaves
    # a tiny non-zero row whose "correlation" would look like a finite number.
    device = np.array([[0.1, 0.1, 0.1], [1, 2, 3]])
    reference = np.array([[1, 2, 3], [5, 5, 5]], dtype=np.float64)
    assert np.isnan(pearson_correlation(device, reference)).all()
    assert np.isnan(pearson_correlation(reference, device)).all()


def test_rounding_never_pushes_correlations_past_one_or_kl_below_zero():
    # Without clamping, x vs 3x gives cosine 1 + 2**-52 on some of these rows,
    # and r vs r * (1 + 1e-9) gives KL around -3e-16.
    x = np.random.default_rng(0).standard_normal((300, 42))
    for metric in (cosine_similarity, pearson_correlation):
        values = metric(3 * x, x)
        assert (values <= 1.0).all() and (metric(-3 * x, x) >= -1.0).all()
    assert (kl_divergence(x * (1 + 1e-9), x) >= 0.0).all()


def test_cosine_of_zero_row_is_nan():
    assert np.isnan(cosine_similarity(rows([0, 0, 0]), rows([1, 2, 3]))).all()


def test_kl_hand_value_and_direction():
    # reference [0, ln 3] -> p = [1/4, 3/4]; device [0, 0] -> q = [1/2, 1/2].
    # KL(p||q) = 1/4 ln((1/4)/(1/2)) + 3/4 ln((3/4)/(1/2)) = -1/4 ln 2 + 3/4 ln 1.5 = 0.1308120...
    # The other direction, KL(q||p) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3) = 0.1438410..., must not be used.
    expected = -0.25 * math.log(2) + 0.75 * math.log(1.5)
    assert expected == pytest.approx(0.130812035941137, abs=1e-14)
    device = np.array([[0.0, 0.0]])
    reference = np.array([[0.0, math.log(3)]])
    assert kl_divergence(device, reference)[0] == pytest.approx(expected, rel=1e-12)
    assert kl_divergence(reference, device)[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)


def test_kl_of_far_apart_logits_is_finite_and_large():
    # Softmax in float64 would underflow p to 0 for the losing entries; log_softmax must not.
    device = np.array([[0.0, 1000.0]])
    reference = np.array([[1000.0, 0.0]])
    assert kl_divergence(device, reference)[0] == pytest.approx(1000.0, rel=1e-12)


def test_relative_l2_hand_value():
    # ||[1,2,2]|| / ||[3,4,0]|| = 3 / 5.
    assert relative_l2(rows([4, 6, 2]), rows([3, 4, 0]))[0] == pytest.approx(0.6, rel=1e-15)


def test_relative_l2_against_zero_reference():
    np.testing.assert_array_equal(relative_l2(rows([0, 0], [1, 0]), rows([0, 0], [0, 0])), [0.0, np.inf])


def test_abs_diff_hand_values():
    # |[1,-2,3] - [0.5,1,3]| = [0.5, 3, 0]: max 3, mean 3.5/3.
    device, reference = rows([1, -2, 3]), rows([0.5, 1, 3])
    assert max_abs_diff(device, reference)[0] == 3.0
    assert mean_abs_diff(device, reference)[0] == pytest.approx(3.5 / 3, rel=1e-15)


def test_float32_inputs_are_computed_in_float64():
    # 1 + 2**-20 vs 1 in float32: the difference must survive as exactly 2**-20.
    device = np.array([[1 + 2**-20, 1.0]], dtype=np.float32)
    reference = np.array([[1.0, 1.0]], dtype=np.float32)
    for metric in ROW_METRICS.values():
        assert metric(device, reference).dtype == np.float64
    assert max_abs_diff(device, reference)[0] == 2**-20


def test_row_metrics_cover_the_per_position_registry_entries():
    assert set(ROW_METRICS) == {name for name, spec in METRICS.items() if spec.per == "position"}


# ---------------------------------------------------------------- shape handling


@pytest.mark.parametrize("metric", ROW_METRICS.values(), ids=ROW_METRICS.keys())
@pytest.mark.parametrize(
    ("device_shape", "reference_shape"),
    [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((3,), (3,)), ((1, 2, 3), (1, 2, 3)), ((2, 0), (2, 0))],
)
def test_shape_errors_name_both_shapes(metric, device_shape, reference_shape):
    with pytest.raises(ValueError) as excinfo:
        metric(np.zeros(device_shape), np.ones(reference_shape))
    assert str(device_shape) in str(excinfo.value)
    assert str(reference_shape) in str(excinfo.value)


@pytest.mark.parametrize("metric", ROW_METRICS.values(), ids=ROW_METRICS.keys())
def test_no_positions_gives_empty_result(metric):
    result = metric(np.zeros((0, 5)), np.zeros((0, 5)))
    assert result.shape == (0,) and result.dtype == np.float64


# ---------------------------------------------------------------- properties

# Logits on a 1/8 grid: shifting by an integer is exact, and a row is never
# "almost constant" (which would make Pearson ill-conditioned, not wrong).
grid_logit = st.integers(-800, 800).map(lambda i: i / 8)
logit_matrix = st.tuples(st.integers(1, 5), st.integers(2, 40)).flatmap(
    lambda shape: st.tuples(
        hnp.arrays(np.float64, shape, elements=grid_logit),
        hnp.arrays(np.float64, shape, elements=grid_logit),
    )
)


@given(logit_matrix)
def test_cosine_and_pearson_lie_in_range(pair):
    device, reference = pair
    for metric in (cosine_similarity, pearson_correlation):
        values = metric(device, reference)
        defined = ~np.isnan(values)
        assert ((values[defined] >= -1) & (values[defined] <= 1)).all()
    # NaN exactly where undefined.
    zero = ~device.any(axis=1) | ~reference.any(axis=1)
    np.testing.assert_array_equal(np.isnan(cosine_similarity(device, reference)), zero)
    constant = (np.ptp(device, axis=1) == 0) | (np.ptp(reference, axis=1) == 0)
    np.testing.assert_array_equal(np.isnan(pearson_correlation(device, reference)), constant)


@given(logit_matrix, st.integers(-100, 100), st.floats(0.01, 100))
def test_pearson_invariant_to_shift_and_positive_scale(pair, shift, scale):
    device, reference = pair
    base = pearson_correlation(device, reference)
    np.testing.assert_allclose(pearson_correlation(device + shift, reference), base, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(pearson_correlation(device * scale, reference), base, atol=1e-12, equal_nan=True)


@given(logit_matrix, st.data())
def test_kl_nonnegative_zero_on_identity_and_shift_invariant(pair, data):
    device, reference = pair
    kl = kl_divergence(device, reference)
    assert (kl >= 0).all()
    np.testing.assert_array_equal(kl_divergence(reference, reference), 0.0)
    shifts = hnp.arrays(np.float64, (device.shape[0], 1), elements=st.integers(-100, 100).map(float))
    shifted = kl_divergence(device + data.draw(shifts), reference + data.draw(shifts))
    np.testing.assert_allclose(shifted, kl, rtol=1e-9, atol=1e-12)


@given(logit_matrix)
def test_relative_l2_is_zero_iff_rows_equal(pair):
    device, reference = pair
    device[0] = reference[0]  # always have at least one equal row
    values = relative_l2(device, reference)
    np.testing.assert_array_equal(values == 0, (device == reference).all(axis=1))
    assert (values >= 0).all()


@given(logit_matrix)
def test_abs_diffs_bound_each_other(pair):
    device, reference = pair
    largest, mean = max_abs_diff(device, reference), mean_abs_diff(device, reference)
    assert (mean <= largest + 1e-12).all() and (mean >= 0).all()


def _softmax_rows(x):
    return scipy.special.softmax(x, axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_straightforward_float64_implementations(seed):
    rng = np.random.default_rng(seed)
    reference = (4 * rng.standard_normal((7, 1000))).astype(np.float32)
    device = (reference + 0.3 * rng.standard_normal((7, 1000))).astype(np.float32)
    d, r = device.astype(np.float64), reference.astype(np.float64)

    expected = {
        "cosine_similarity": [1 - scipy.spatial.distance.cosine(a, b) for a, b in zip(d, r)],
        "pearson_correlation": [scipy.stats.pearsonr(a, b).statistic for a, b in zip(d, r)],
        "kl_divergence": scipy.special.rel_entr(_softmax_rows(r), _softmax_rows(d)).sum(axis=1),
        "relative_l2": np.linalg.norm(d - r, axis=1) / np.linalg.norm(r, axis=1),
        "max_abs_diff": np.abs(d - r).max(axis=1),
        "mean_abs_diff": np.abs(d - r).mean(axis=1),
    }
    for name, metric in ROW_METRICS.items():
        np.testing.assert_allclose(metric(device, reference), expected[name], rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("metric", ROW_METRICS.values(), ids=ROW_METRICS.keys())
def test_chunked_equals_unchunked(metric):
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((150, 300)).astype(np.float32)
    device = (reference + 0.05 * rng.standard_normal((150, 300))).astype(np.float32)
    device[70, 5] = np.nan  # a bad row in a middle chunk stays put
    whole = metric(device, reference, chunk_rows=1000)
    for chunk_rows in (1, 7, 64):
        np.testing.assert_allclose(metric(device, reference, chunk_rows=chunk_rows), whole,
                                   rtol=1e-13, atol=1e-15, equal_nan=True)
    assert np.isnan(whole[70]) and np.isfinite(np.delete(whole, 70)).all()


@pytest.mark.parametrize("metric", ROW_METRICS.values(), ids=ROW_METRICS.keys())
def test_peak_memory_is_bounded_by_chunks_not_positions(metric):
    positions, vocab, chunk_rows = 256, 4096, 16
    device = np.ones((positions, vocab), dtype=np.float32)
    reference = np.full((positions, vocab), 2.0, dtype=np.float32)
    full_float64 = positions * vocab * 8
    tracemalloc.start()
    try:
        metric(device, reference, chunk_rows=chunk_rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A float64 copy of either input alone would be full_float64; chunks are 1/16 of it.
    assert peak < full_float64 / 2, f"peak {peak} bytes vs one full float64 copy {full_float64}"


# ---------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("metric", ROW_METRICS.values(), ids=ROW_METRICS.keys())
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("side", ["device", "reference", "both"])
def test_nonfinite_entry_poisons_only_its_row(metric, bad, side):
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((4, 6)).astype(np.float32)
    device = (reference + 0.1 * rng.standard_normal((4, 6))).astype(np.float32)
    clean = metric(device, reference)
    if side in ("device", "both"):
        device[2, 3] = bad
    if side in ("reference", "both"):
        reference[2, 3] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from inf - inf or 0/0 either
        result = metric(device, reference)
    assert np.isnan(result[2])
    np.testing.assert_array_equal(np.delete(result, 2), np.delete(clean, 2))


@pytest.mark.parametrize("metric", ROW_METRICS.values(), ids=ROW_METRICS.keys())
def test_all_minus_inf_row_is_nan_not_a_finite_value(metric):
    # Identical -inf rows would give KL 0, max diff 0, etc. if handled naively.
    row = np.full((1, 4), -np.inf)
    assert np.isnan(metric(row, row)).all()


def test_nonfinite_rows_locates_bad_rows():
    array = np.zeros((100, 5), dtype=np.float32)
    array[3, 0] = np.nan
    array[40, 4] = np.inf
    array[99, 2] = -np.inf
    found = nonfinite_rows(array, chunk_rows=16)
    np.testing.assert_array_equal(found, [3, 40, 99])
    assert found.dtype.kind == "i"
    assert nonfinite_rows(np.zeros((3, 5))).size == 0


def test_nonfinite_rows_rejects_non_2d():
    with pytest.raises(ValueError, match=r"\(5,\)"):
        nonfinite_rows(np.zeros(5))


def test_count_nonfinite():
    assert count_nonfinite([1.0, np.nan, np.inf, -np.inf, 0.0]) == 3
    assert count_nonfinite(np.zeros(7, dtype=np.float32)) == 0


# ---------------------------------------------------------------- compare_rows: every metric in one pass


def _same_bits(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.dtype == expected.dtype == np.float64, what
    np.testing.assert_array_equal(actual.view(np.uint64), expected.view(np.uint64), err_msg=what)


def _awkward_rows(n_rows: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """normal(0, 3) reference, device = reference + noise, and rows that take every special path."""
    rng = np.random.default_rng(seed)
    reference = (3 * rng.standard_normal((n_rows, vocab))).astype(np.float32)
    device = (reference + 0.01 * rng.standard_normal((n_rows, vocab))).astype(np.float32)
    device[1, 5] = np.nan
    reference[2, 0] = np.inf
    device[3, -1] = -np.inf
    device[4, 7] = reference[4, 9] = np.nan  # both sides bad in one row
    device[5] = reference[5] = 0.0  # zero rows: cosine and Pearson NaN, relative_l2 0
    device[6] = 0.1  # constant device row: Pearson NaN
    reference[7] = -2.5  # constant reference row
    device[8] = reference[8]  # identical rows: relative_l2, KL, abs diffs 0
    reference[9] = 0.0  # zero reference, non-zero device: relative_l2 inf
    device[-1, 0] = np.nan  # the last row, alone in its chunk for some chunk_rows
    return device, reference


def _assert_fused_equals_per_metric(device, reference, chunk_rows: int) -> None:
    fused = compare_rows(device, reference, chunk_rows=chunk_rows)
    assert list(fused.metrics) == list(ROW_METRICS)
    for name, metric in ROW_METRICS.items():
        expected = metric(device, reference, chunk_rows=chunk_rows)
        _same_bits(fused.metrics[name], expected, f"{name}, chunk_rows {chunk_rows}")
    np.testing.assert_array_equal(fused.device_nonfinite, nonfinite_rows(device))
    np.testing.assert_array_equal(fused.reference_nonfinite, nonfinite_rows(reference))
    assert fused.device_nonfinite.dtype == fused.reference_nonfinite.dtype == np.int64


@pytest.mark.parametrize("block_values", [2 * 300, 3 * 300, 10**6], ids=["2-row", "3-row", "whole-chunk"])
@pytest.mark.parametrize("chunk_rows", [1, 2, 4, 7, 32, 1000])
def test_compare_rows_is_bitwise_each_metric_with_special_rows(monkeypatch, chunk_rows, block_values):
    # 41 rows: chunks of 4 and 7 end in a lone row, and 3-row blocks leave lone rows inside chunks.
    monkeypatch.setattr(logits, "BLOCK_VALUES", block_values)
    device, reference = _awkward_rows(41, 300, seed=chunk_rows)
    _assert_fused_equals_per_metric(device, reference, chunk_rows)
    fused = compare_rows(device, reference, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(fused.device_nonfinite, [1, 3, 4, 40])
    np.testing.assert_array_equal(fused.reference_nonfinite, [2, 4])
    for values in fused.metrics.values():
        assert np.isnan(values[[1, 2, 3, 4, 40]]).all()
    assert fused.metrics["relative_l2"][5] == fused.metrics["relative_l2"][8] == 0.0
    assert np.isinf(fused.metrics["relative_l2"][9])
    assert np.isnan(fused.metrics["pearson_correlation"][[5, 6, 7]]).all()


@pytest.mark.parametrize("chunk_rows", [4, 32])
def test_compare_rows_is_bitwise_each_metric_at_a_real_vocab(chunk_rows):
    # Rows longer than einsum's 8192-element buffer are where a 1-row block would sum differently.
    device, reference = _awkward_rows(13, 151_936, seed=10)
    _assert_fused_equals_per_metric(device, reference, chunk_rows)


def test_compare_rows_is_bitwise_each_metric_on_tiny_kl():
    # device = reference + 1e-4 noise: KL ~1e-8 comes out of heavy cancellation; it must not move a bit.
    rng = np.random.default_rng(11)
    reference = (3 * rng.standard_normal((9, 151_936))).astype(np.float32)
    device = (reference + 1e-4 * rng.standard_normal(reference.shape)).astype(np.float32)
    fused = compare_rows(device, reference, chunk_rows=4)
    assert (fused.metrics["kl_divergence"] < 1e-7).all()
    _same_bits(fused.metrics["kl_divergence"], kl_divergence(device, reference, chunk_rows=4), "kl_divergence")


def test_compare_rows_reads_a_memmap(tmp_path):
    device, reference = _awkward_rows(37, 2000, seed=12)
    np.save(tmp_path / "device.npy", device)
    np.save(tmp_path / "reference.npy", reference)
    device_map = np.load(tmp_path / "device.npy", mmap_mode="r")
    reference_map = np.load(tmp_path / "reference.npy", mmap_mode="r")
    assert isinstance(device_map, np.memmap)
    fused = compare_rows(device_map, reference_map, chunk_rows=8)
    for name, metric in ROW_METRICS.items():
        _same_bits(fused.metrics[name], metric(device, reference, chunk_rows=8), name)
    np.testing.assert_array_equal(fused.device_nonfinite, nonfinite_rows(device))


def test_compare_rows_on_float64_and_small_inputs():
    device = rows([1, 2, 3], [4, 6, 2], [0, 0, 0]).astype(np.float64)
    reference = rows([1, 3, 2], [3, 4, 0], [1, 1, 1]).astype(np.float64)
    _assert_fused_equals_per_metric(device, reference, CHUNK_ROWS)
    empty = compare_rows(np.zeros((0, 5)), np.zeros((0, 5)))
    assert all(v.shape == (0,) and v.dtype == np.float64 for v in empty.metrics.values())
    assert empty.device_nonfinite.size == empty.reference_nonfinite.size == 0


@pytest.mark.parametrize(
    ("device_shape", "reference_shape"),
    [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((3,), (3,)), ((2, 0), (2, 0))],
)
def test_compare_rows_shape_errors_name_both_shapes(device_shape, reference_shape):
    with pytest.raises(ValueError) as excinfo:
        compare_rows(np.zeros(device_shape), np.ones(reference_shape))
    assert str(device_shape) in str(excinfo.value) and str(reference_shape) in str(excinfo.value)


def test_compare_rows_rejects_chunk_rows_below_one():
    with pytest.raises(ValueError, match="chunk_rows"):
        compare_rows(np.zeros((3, 4)), np.zeros((3, 4)), chunk_rows=0)


def test_compare_rows_warns_about_nothing():
    device, reference = _awkward_rows(12, 50, seed=13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_rows(device, reference)


def test_compare_rows_peak_memory_is_a_few_rows():
    positions, vocab = 256, 4096
    device = np.ones((positions, vocab), dtype=np.float32)
    reference = np.full((positions, vocab), 2.0, dtype=np.float32)
    full_float64 = positions * vocab * 8
    tracemalloc.start()
    try:
        compare_rows(device, reference)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Five float64 buffers of at most CHUNK_ROWS rows: 5 * 32 / 256 of one full copy.
    assert peak < full_float64 * 0.7, f"peak {peak} bytes vs one full float64 copy {full_float64}"


def _two_prompts() -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, ...]]]:
    devices, references = zip(*(_awkward_rows(12, 64, seed) for seed in (20, 21)))
    tokens = [tuple(range(1, 13))] * 2  # both sides agree: every step row is a decode row to judge
    return list(devices), list(references), tokens


def _old_style_cells_and_nonfinite(devices, references, capture, first_row: int, device_side: str):
    """What measure() stored before compare_rows: each metric's values, then each side's non-finite rows."""
    cells, nonfinite = {name: [] for name in ROW_METRICS}, []
    for index, (device, reference) in enumerate(zip(devices, references)):
        device, reference = device[first_row:], reference[first_row:]
        positions = capture.prompts[index].positions[first_row:]
        for name, metric in ROW_METRICS.items():
            cells[name].append(metric(device, reference))
        nonfinite += [(side, index, positions[row], int(np.count_nonzero(~np.isfinite(array[row]))))
                      for side, array in ((device_side, device), ("reference", reference))
                      for row in nonfinite_rows(array)]
    return {name: np.concatenate(parts) for name, parts in cells.items()}, nonfinite


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_measure_cells_and_nonfinite_are_the_per_metric_ones(make_capture, phase):
    from pytest_npuprec.measure.steps import measure_decode
    from pytest_npuprec.measure.thresholds import measure

    devices, references, tokens = _two_prompts()
    capture = make_capture(references, devices, ref_tokens=tokens, dev_tokens=tokens)
    measured = measure(capture)
    if phase == "decode":
        measured = measure_decode(capture, measured)
    first_row, side = (0, "device") if phase == "prefill" else (1, "device decode")  # step row 0 is the prefill
    cells, nonfinite = _old_style_cells_and_nonfinite(devices, references, capture, first_row, side)
    for name, values in cells.items():
        _same_bits(measured.cells[name].values, values, name)
    assert [(n.side, n.prompt, n.position, n.count) for n in measured.nonfinite] == nonfinite
    assert all(n.vocab == 64 for n in measured.nonfinite)
