"""Safe file handling: atomic text writes, archive extraction that cannot escape.

Used for anything kerastl unpacks (preset archives, dataset archives). Every
member of a zip or tar archive is checked before anything is written: absolute
paths, ``..`` components that leave the target, links of any kind (symbolic or
hard, even ones pointing inside the target) and device / FIFO files are refused.
Tar files are then extracted through the standard library's ``data`` filter
(PEP 706) as a second line of defence.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path

from kerastl.errors import DataError


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a ``.zip`` / ``.tar[.gz|.bz2|.xz]`` into ``dest``, refusing escapes.

    Nothing is written when a member is refused: the archive is checked first.

    Args:
        archive: The archive file.
        dest: Target folder (created if needed).

    Returns:
        ``dest`` as a resolved path.

    Raises:
        DataError: not an archive, or a member is refused: an absolute path, a
            path that leaves ``dest``, a symbolic or hard link (wherever it points),
            or a device / FIFO file.

    Example:
        >>> safe_extract("preset.tar.gz", "/tmp/preset")  # doctest: +SKIP
    """
    archive, dest = Path(archive), Path(dest).resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_zip_member(info, archive, dest)
            dest.mkdir(parents=True, exist_ok=True)
            zf.extractall(dest)
        return dest
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:  # check all first: nothing written if one is bad
                _check_tar_member(m, archive, dest)
            dest.mkdir(parents=True, exist_ok=True)
            tf.extractall(dest, filter="data")
        return dest
    raise DataError(f"archive: {str(archive)!r} is not a zip or tar archive.")


def _is_absolute(name: str) -> bool:
    """True for ``/x``, ``\\x`` and ``C:/x`` / ``C:\\x`` member names."""
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")


def _refuse(archive: Path, name: str, why: str) -> DataError:
    return DataError(f"archive: member {name!r} of {str(archive)!r} refused: {why}.")


def _check_inside(name: str, archive: Path, dest: Path) -> None:
    if _is_absolute(name):
        raise _refuse(archive, name, "absolute paths are not extracted")
    target = (dest / name).resolve()
    if not target.is_relative_to(dest):
        raise _refuse(archive, name, f"it would be written outside {str(dest)!r}")


def _check_zip_member(info: zipfile.ZipInfo, archive: Path, dest: Path) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _refuse(archive, info.filename, "it is a symlink; links are not extracted")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(archive, info.filename, "it is a device or FIFO file")
    _check_inside(info.filename, archive, dest)


def _check_tar_member(m: tarfile.TarInfo, archive: Path, dest: Path) -> None:
    if m.issym() or m.islnk():
        kind = "symlink" if m.issym() else "hard link"
        raise _refuse(
            archive, m.name, f"it is a {kind} (to {m.linkname!r}); links are not extracted"
        )
    if not (m.isfile() or m.isdir()):
        raise _refuse(archive, m.name, "it is a device or FIFO file")
    _check_inside(m.name, archive, dest)
    try:
        tarfile.data_filter(m, str(dest))
    except tarfile.FilterError as exc:
        raise _refuse(archive, m.name, str(exc)) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    A reader (or a process killed mid-write) sees the old file or the new one,
    never half of it.

    Example:
        >>> atomic_write_text("/tmp/kerastl_example.txt", "hello")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
