"""Untrusted archives cannot write outside their target folder; pickles are never loaded."""

from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest

import kerastl
from kerastl.core.safety import safe_extract


def _tar(path, entries):
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tf.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
                tf.addfile(info)


def test_good_archives_extract(tmp_path):
    _tar(tmp_path / "ok.tar.gz", [("preset/config.json", "file", b"{}")])
    out = safe_extract(tmp_path / "ok.tar.gz", tmp_path / "out")
    assert (out / "preset" / "config.json").read_bytes() == b"{}"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("a/b.txt", "hi")
    assert (safe_extract(tmp_path / "ok.zip", tmp_path / "z") / "a" / "b.txt").read_text() == "hi"


@pytest.mark.parametrize(
    "entries",
    [
        [("../evil.txt", "file", b"x")],
        [("ok.txt", "file", b"x"), ("link", "symlink", "/etc/passwd")],
        [("link", "symlink", "../../outside")],
        [("hard", "hardlink", "/etc/passwd")],
    ],
)
def test_tar_escapes_are_refused_and_nothing_written(tmp_path, entries):
    _tar(tmp_path / "bad.tar.gz", entries)
    with pytest.raises(kerastl.DataError, match="refused"):
        safe_extract(tmp_path / "bad.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_zip_traversal_and_symlinks_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(kerastl.DataError, match="outside"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out")
    link = zipfile.ZipInfo("link")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(kerastl.DataError, match="symlink"):
        safe_extract(tmp_path / "link.zip", tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_text("nope")
    with pytest.raises(kerastl.DataError, match="not a zip or tar archive"):
        safe_extract(tmp_path / "x.zip", tmp_path / "o")


def test_numpy_inputs_refuse_pickles(tmp_path):
    """kerastl reads user .npy/.npz with numpy's default allow_pickle=False."""
    from kerastl.data._sources import from_npz

    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        from_npz(path)
