"""The QAT converter step: a function or a command, published atomically, failures named."""
import pytest

from pytest_npuprec.config.schema import QatEquivalenceCheck
from pytest_npuprec.runners.converter import ConversionError, convert_checkpoint

MODULE = '''
from pathlib import Path

def good(src, out, group_size):
    out = Path(out)
    out.mkdir()
    (out / "config.json").write_text('{"from": "%s", "group_size": %d}' % (Path(src).name, group_size))

def no_config(src, out, group_size):
    Path(out).mkdir()

def crash(src, out, group_size):
    Path(out).mkdir()
    (Path(out) / "config.json").write_text("{}")
    raise RuntimeError("boom")
'''


@pytest.fixture
def converters(tmp_path, monkeypatch):
    (tmp_path / "fake_converters.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "qat"
    src.mkdir()
    return src


def check(converter, group_size=-1):
    return QatEquivalenceCheck(converter=converter, thresholds=(), group_size=group_size)


def test_function_converter_publishes_the_folder(converters, tmp_path):
    target = tmp_path / "out" / "converted"
    assert convert_checkpoint(check("fake_converters:good", 64), converters, target) == target
    assert (target / "config.json").read_text() == '{"from": "qat", "group_size": 64}'
    assert [p.name for p in target.parent.iterdir()] == ["converted"]  # no temp folder left


@pytest.mark.parametrize("name, message", [
    ("fake_converters:no_config", "wrote no config.json"),
    ("fake_converters:crash", "boom"),
    ("fake_converters:missing", "cannot be imported"),
])
def test_a_failing_converter_leaves_nothing(converters, tmp_path, name, message):
    target = tmp_path / "out" / "converted"
    with pytest.raises((ConversionError, RuntimeError), match=message):
        convert_checkpoint(check(name), converters, target)
    assert list(target.parent.iterdir()) == []


def test_command_converter_fills_placeholders(converters, tmp_path):
    script = tmp_path / "convert.py"
    script.write_text("import sys, pathlib\nout = pathlib.Path(sys.argv[2]); out.mkdir()\n"
                      "(out / 'config.json').write_text(sys.argv[1] + ' ' + sys.argv[3])\n")
    target = tmp_path / "converted"
    convert_checkpoint(check(("python", str(script), "{input}", "{output}", "{group_size}"), 32), converters, target)
    assert (target / "config.json").read_text() == f"{converters} 32"


def test_failing_command_reports_its_output(converters, tmp_path):
    with pytest.raises(ConversionError, match=r"exit 1.*no such weights"):
        convert_checkpoint(check(("python", "-c", "import sys; sys.exit('no such weights')",
                                  "{input}", "{output}")), converters, tmp_path / "c")
