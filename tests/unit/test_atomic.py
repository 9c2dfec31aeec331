"""Publishing a folder or a file in one rename (pytest_npuprec.atomic): whole or absent, plain modes."""
from __future__ import annotations

import os
import shutil
import stat

import pytest

from pytest_npuprec.atomic import atomic_file, atomic_write_text, publish_dir, staged_dir, temp_sibling, umask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert umask() == 0o027 and umask() == 0o027
    finally:
        os.umask(old)


def test_staged_dir_publishes_whole_with_the_modes_of_a_plain_mkdir(tmp_path):
    target = tmp_path / "a" / "out"
    with staged_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.tmp-") and not target.exists()
        (tmp / "f.txt").write_text("x")
        (tmp / "sub").mkdir(mode=0o700)
        for name, mode in (("private.bin", 0o600), ("sub/run.sh", 0o700)):  # as safetensors writes its files
            (tmp / name).touch()
            os.chmod(tmp / name, mode)
    assert (target / "f.txt").read_text() == "x"
    assert _mode(target) == _mode(target / "sub") == 0o777 & ~umask()
    assert _mode(target / "private.bin") == 0o666 & ~umask() and _mode(target / "sub" / "run.sh") == 0o777 & ~umask()
    assert [p.name for p in target.parent.iterdir()] == ["out"]


def test_a_failure_leaves_the_old_target_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with staged_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old.txt").read_text() == "old"


def test_existing_target_replace_keep_refuse(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_dir(target) as tmp:  # replace (default)
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]

    (tmp_path / "was-a-file").write_text("file")
    with staged_dir(tmp_path / "was-a-file") as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "was-a-file").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "was-a-file"]
    shutil.rmtree(tmp_path / "was-a-file")

    with staged_dir(target, existing="keep") as tmp:  # someone published first: theirs stays
        (tmp / "mine.txt").write_text("mine")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    src = temp_sibling(target)
    assert publish_dir(src, target, existing="keep") is False and src.is_dir()
    src.rmdir()

    entered = []
    with pytest.raises(FileExistsError, match="exists and is not an empty folder"):
        with staged_dir(target, existing="refuse"):
            entered.append(True)  # refused before any work
    assert not entered and [p.name for p in tmp_path.iterdir()] == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_dir(empty, existing="refuse") as tmp:  # an empty folder is no obstacle
        (tmp / "f").write_text("")
    assert [p.name for p in empty.iterdir()] == ["f"]


def test_create_false_hands_out_a_path_the_tool_creates(tmp_path):
    target = tmp_path / "out"
    with staged_dir(target, create=False) as out:
        assert not out.exists() and out.parent.parent == tmp_path
        out.mkdir()
        (out / "config.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_replaces_whole_with_plain_mode_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_text(target, object())  # not text: the write fails half-way
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o666 & ~umask()
    with atomic_file(tmp_path / "sub" / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "sub"]
