"""Production paths: the device runs with vLLM's default prefix caching (on), its scoring still sees every position
(each request carries a cache salt of its own), and `prefix_cache` exercises the warm path: prompts after a shared
prefix scored cold, then with the prefix read from the cache. A device wrong only in a prefill that continues
cached tokens (`prefix_only`) passes every other check and fails prefix_cache."""
import json
import re

import pytest


def test_prefix_only_fault_fails_prefix_cache_alone(run_suite, failed_checks):
    result, report_dir = run_suite("tiny-llama", "--npuprec-fault", "prefix_only")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    failed = failed_checks(result, "tiny-llama")
    assert failed == {"prefix_cache"}, f"expected only prefix_cache to fail, failed: {sorted(failed)}"
    report = json.loads((report_dir / "tiny-llama.json").read_text())
    device = report["run"]["device"]
    assert device["prefix_caching"] is True and "enable_prefix_caching" not in device["engine_kwargs"], device
    assert "prefills continuing computed tokens" in device["fault"]
    cached = report["run"]["prefix_cache"]["cached_tokens"]
    assert set(cached) == {"prefix-p1", "prefix-chat-france"} and min(cached.values()) >= 128, cached
    assert re.search(r"tiny-llama: prefix_cache: 2 prompts after a shared prefix, scored warm \(prefix from the cache\) "
                     r"vs cold and vs reference: FAILED: warm vs cold: logits max \|diff\| [\d.]+ misses max \|diff\| "
                     r"<= [\d.]+ at prompt prefix-\S+ position \d+", out)
    assert "warm vs reference: kl_divergence mean = " in out
