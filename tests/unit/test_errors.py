"""One base class for the errors a user must fix: their message alone; anything else (a bug) its traceback."""
import pytest

from pytest_npuprec.capture.prompts import PromptError
from pytest_npuprec.checkpoints.locate import WeightsNotFoundError
from pytest_npuprec.checkpoints.tensors import CheckpointError
from pytest_npuprec.config.loader import ConfigError
from pytest_npuprec.config.schema import ModelConfig, PrecisionConfig, ServeConfig
from pytest_npuprec.errors import NpuprecError, describe
from pytest_npuprec.orchestrate import ModelResult, RunOptions, run_model
from pytest_npuprec.runners.converter import ConversionError
from pytest_npuprec.runners.device import DeviceRunError, EngineFailure
from pytest_npuprec.runners.environment import DeviceUnavailableError
from pytest_npuprec.selection import SelectionError
from pytest_npuprec.standins import UnknownStandinError

# each user-facing error, and the built-in base callers still catch it by
USER_ERRORS = {
    ConfigError: Exception, PromptError: ValueError, CheckpointError: ValueError, ConversionError: RuntimeError,
    DeviceRunError: RuntimeError, EngineFailure: RuntimeError, DeviceUnavailableError: RuntimeError,
    UnknownStandinError: KeyError, WeightsNotFoundError: FileNotFoundError, SelectionError: Exception,
}


@pytest.mark.parametrize("error, builtin", list(USER_ERRORS.items()), ids=lambda c: getattr(c, "__name__", c))
def test_every_user_error_is_an_npuprec_error_and_keeps_its_builtin_base(error, builtin):
    assert issubclass(error, NpuprecError) and issubclass(error, builtin)


def test_a_user_error_shows_its_message_alone_and_a_bug_its_traceback():
    def fail(exc):
        try:
            raise exc
        except Exception as caught:
            return caught

    assert describe(fail(WeightsNotFoundError("no checkpoint of org/X under /models"))) == \
        "no checkpoint of org/X under /models"
    assert describe(fail(UnknownStandinError("tiny-nothing"))).startswith("unknown stand-in model 'tiny-nothing'")
    bug = describe(fail(ZeroDivisionError("division by zero")))
    assert bug.startswith("Traceback (most recent call last):") and bug.endswith("ZeroDivisionError: division by zero")


def test_run_model_keeps_the_error_and_returns_a_result(tmp_path):
    """A model whose weights are nowhere: a user error, kept on the result, shown without traceback."""
    config = ModelConfig(name="X", path=tmp_path / "X.yaml", model_name="org/X-Absent", serve=ServeConfig(),
                         precision=PrecisionConfig(prompts=(), max_tokens=1, thresholds=()))
    result = run_model(config, RunOptions(device="cpu", model_roots=[tmp_path], report_dir=tmp_path / "r"))
    assert isinstance(result, ModelResult) and isinstance(result.error, WeightsNotFoundError)
    assert result.verdicts == {} and result.report is None
    assert "Traceback" not in result.describe_error() and "org/X-Absent" in result.describe_error()
