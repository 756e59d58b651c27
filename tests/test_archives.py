"""safe_extract does what kerastl.core.safety promises: absolute member paths, links of any kind
and device files are refused in tar and zip archives alike, and nothing is written."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

import kerastl
from kerastl.core.safety import safe_extract


def _tar(path, info: tarfile.TarInfo, payload: bytes | None = None) -> None:
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("preset/config.json")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"{}"))  # a good member first: it must not be written
        if payload is not None:
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        else:
            tf.addfile(info)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("info", "payload", "reason"),
    [
        (_member("/tmp/kerastl_abs_member.txt"), b"x", "absolute"),
        (_member("/preset/config2.json"), b"x", "absolute"),
        (_member("preset/link", tarfile.SYMTYPE, "config.json"), None, "symlink"),
        (_member("preset/link", tarfile.SYMTYPE, "/etc/passwd"), None, "symlink"),
        (_member("preset/hard", tarfile.LNKTYPE, "preset/config.json"), None, "hard link"),
        (_member("preset/tty", tarfile.CHRTYPE), None, "device"),
        (_member("preset/fifo", tarfile.FIFOTYPE), None, "FIFO"),
        (_member("preset/../../up.txt"), b"x", "outside"),
    ],
    ids=[
        "abs-outside",
        "abs-inside",
        "symlink-in",
        "symlink-out",
        "hardlink-in",
        "chr",
        "fifo",
        "dotdot",
    ],
)
def test_tar_member_is_refused_and_nothing_written(tmp_path, info, payload, reason):
    _tar(tmp_path / "a.tar", info, payload)
    dest = tmp_path / "out"
    with pytest.raises(kerastl.DataError, match=reason) as err:
        safe_extract(tmp_path / "a.tar", dest)
    assert repr(info.name) in str(err.value)  # names the member
    assert not dest.exists()
    assert not (tmp_path / "up.txt").exists()


def _zip(path, name: str, mode: int | None = None, data: str = "config.json") -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("preset/config.json", "{}")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)


@pytest.mark.parametrize(
    ("name", "mode", "reason"),
    [
        ("/tmp/kerastl_abs_member.txt", None, "absolute"),
        ("C:/evil.txt", None, "absolute"),
        ("preset/link", stat.S_IFLNK | 0o777, "symlink"),
        ("preset/fifo", stat.S_IFIFO | 0o644, "FIFO"),
        ("../../evil.txt", None, "outside"),
    ],
    ids=["abs", "drive", "symlink-in", "fifo", "dotdot"],
)
def test_zip_member_is_refused_and_nothing_written(tmp_path, name, mode, reason):
    _zip(tmp_path / "a.zip", name, mode)
    dest = tmp_path / "out"
    with pytest.raises(kerastl.DataError, match=reason):
        safe_extract(tmp_path / "a.zip", dest)
    assert not dest.exists()


def test_plain_files_and_folders_still_extract(tmp_path):
    folder = _member("preset/sub", tarfile.DIRTYPE)
    _tar(tmp_path / "ok.tar", folder)
    out = safe_extract(tmp_path / "ok.tar", tmp_path / "out")
    assert (out / "preset" / "config.json").read_bytes() == b"{}"
    assert (out / "preset" / "sub").is_dir()
    _zip(tmp_path / "ok.zip", "preset/weights.txt", stat.S_IFREG | 0o644)
    out = safe_extract(tmp_path / "ok.zip", tmp_path / "z")
    assert (out / "preset" / "weights.txt").read_text() == "config.json"
