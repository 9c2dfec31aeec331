"""Digests of checkpoint files are remembered across runs, and never for bytes they were not computed from."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from pytest_npuprec.baselines import digests


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUPREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "digests"


def settle(path, seconds_ago: float = 10.0) -> None:
    """Make the file look unchanged for a while (its ctime cannot be moved, so the clock is)."""
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))


def counting_hasher(monkeypatch) -> list:
    calls = []
    real = digests._hash_file
    monkeypatch.setattr(digests, "_hash_file", lambda path, chunk: (calls.append(path), real(path, chunk))[1])
    return calls


def test_a_settled_file_is_hashed_once(cache, tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    monkeypatch.setattr(digests, "SETTLED_NS", -1)  # ctime was just set; count it as settled
    calls = counting_hasher(monkeypatch)
    first = digests.sha256_file(weights)
    assert first == hashlib.sha256(b"weights v1").hexdigest()
    assert digests.sha256_file(weights) == first and len(calls) == 1
    assert len(list(cache.iterdir())) == 1


def test_a_rewritten_file_is_hashed_again_even_with_the_same_size_and_mtime(cache, tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    settle(weights)
    monkeypatch.setattr(digests, "SETTLED_NS", -1)
    calls = counting_hasher(monkeypatch)
    digests.sha256_file(weights)
    mtime = weights.stat().st_mtime_ns
    weights.write_bytes(b"weights v2")  # same size
    os.utime(weights, ns=(mtime, mtime))  # and the old mtime: ctime still moves
    assert digests.sha256_file(weights) == hashlib.sha256(b"weights v2").hexdigest() and len(calls) == 2


def test_a_file_changed_moments_ago_is_not_remembered(cache, tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"fresh")
    calls = counting_hasher(monkeypatch)
    digests.sha256_file(weights)
    digests.sha256_file(weights)
    assert len(calls) == 2 and not cache.exists()


def test_a_read_only_cache_still_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUPREC_CACHE_DIR", "/proc/npuprec-cannot-write-here")
    monkeypatch.setattr(digests, "SETTLED_NS", -1)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w")
    assert digests.sha256_file(weights) == hashlib.sha256(b"w").hexdigest()


def test_a_damaged_entry_is_not_trusted(cache, tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w")
    monkeypatch.setattr(digests, "SETTLED_NS", -1)
    digests.sha256_file(weights)
    [entry] = cache.iterdir()
    entry.write_text("half-writ")
    assert digests.sha256_file(weights) == hashlib.sha256(b"w").hexdigest()
