"""The precision suite: `pytest -m npu --model NAME` runs one test per (model, check)."""
from pytest_npuprec.suite import test_precision  # noqa: F401
