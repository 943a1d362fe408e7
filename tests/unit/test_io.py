"""Atomic writes: a failed write leaves no half-written file and says which file failed."""

from __future__ import annotations

import errno
import os

import pytest

from dermcam import io as dio
from dermcam.errors import DermcamError


def test_write_is_atomic_and_readable_by_others(tmp_path):
    p = dio.write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1, 2]})
    assert p.read_text() == '{\n  "x": null,\n  "y": [\n    1,\n    2\n  ]\n}\n'
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]  # no temp file left
    assert os.stat(p).st_mode & 0o044  # not the 0600 mkstemp gives


@pytest.mark.parametrize("err,text", [(errno.ENOSPC, "No space left"),
                                      (errno.EROFS, "Read-only file system"),
                                      (errno.EACCES, "Permission denied")])
def test_disk_full_or_read_only_gives_one_line_and_no_partial_file(tmp_path, monkeypatch,
                                                                   err, text):
    target = tmp_path / "metrics.json"
    target.write_text("old, complete content")

    def failing_replace(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(dio.os, "replace", failing_replace)
    with pytest.raises(DermcamError) as exc:
        dio.write_json(target, {"a": 1})
    msg = str(exc.value)
    assert msg.startswith(str(target)) and text in msg and "\n" not in msg
    assert target.read_text() == "old, complete content"  # the old file is untouched
    assert [f.name for f in tmp_path.iterdir()] == ["metrics.json"]  # temp removed


def test_writer_failing_midway_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with dio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_training_output_is_a_clean_error(tmp_path, monkeypatch):
    """The CLI path: prepare_run_dir on a folder that cannot be written."""
    from dermcam import run as runmod

    def no_space(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(tmp_path), "write_bytes", no_space)
    with pytest.raises(DermcamError, match="not writable"):
        runmod.prepare_run_dir(tmp_path / "run", overwrite=False)


def test_link_identical_links_only_files_with_the_same_bytes(tmp_path):
    ref, folder = tmp_path / "ref", tmp_path / "copy"
    for root in (ref, folder):
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "same.bin").write_bytes(b"abc" * 100)
    (ref / "differs.bin").write_bytes(b"x" * 50)
    (folder / "differs.bin").write_bytes(b"y" * 50)  # same size, other bytes
    (folder / "alone.bin").write_bytes(b"only here")
    (ref / "shorter.bin").write_bytes(b"abc")
    (folder / "shorter.bin").write_bytes(b"abcd")
    assert dio.link_identical(ref, folder) == (1, 300)
    same, ref_same = folder / "sub" / "same.bin", ref / "sub" / "same.bin"
    assert same.stat().st_ino == ref_same.stat().st_ino and same.read_bytes() == b"abc" * 100
    assert (folder / "differs.bin").read_bytes() == b"y" * 50
    assert (folder / "differs.bin").stat().st_ino != (ref / "differs.bin").stat().st_ino
    assert (folder / "alone.bin").read_bytes() == b"only here"
    assert not list(folder.rglob("*.link-tmp"))
    assert dio.link_identical(ref, folder) == (0, 0)  # already linked: nothing to do


def test_link_identical_keeps_copies_where_links_are_refused(tmp_path, monkeypatch):
    ref, folder = tmp_path / "ref", tmp_path / "copy"
    ref.mkdir(), folder.mkdir()
    (ref / "a.bin").write_bytes(b"1234")
    (folder / "a.bin").write_bytes(b"1234")

    def refuse(*_a, **_k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(dio.os, "link", refuse)
    assert dio.link_identical(ref, folder) == (0, 0)
    assert (folder / "a.bin").read_bytes() == b"1234"
    assert (folder / "a.bin").stat().st_ino != (ref / "a.bin").stat().st_ino
