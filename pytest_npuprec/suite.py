"""The precision test itself. Import it into a test module to collect it:

    from pytest_npuprec.suite import test_precision  # noqa: F401
"""
from __future__ import annotations

import pytest


@pytest.mark.npu
def test_precision(npuprec_check, npuprec_results):
    """One check of one model: device (vLLM) vs FP32 CPU reference, judged against the model's YAML."""
    model_config, check_id = npuprec_check
    result = npuprec_results(model_config)
    if result.error is not None:
        pytest.fail(f"{model_config.name}: could not run: {result.describe_error()}", pytrace=False)
    verdict = result.verdicts[check_id]
    if not verdict.passed:
        pytest.fail(verdict.message, pytrace=False)
