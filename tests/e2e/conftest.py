from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "tests" / "e2e" / "models" / "configs"


@pytest.fixture(scope="session")
def tiny_llama():
    from pytest_npuprec.standins import ensure_standin

    return ensure_standin("tiny-llama")


@pytest.fixture(scope="session")
def repo_config_dir():
    return CONFIG_DIR
