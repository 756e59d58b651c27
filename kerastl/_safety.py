"""Safe file handling: atomic text writes, archive extraction that cannot escape.

Used for anything kerastl unpacks (preset archives, dataset archives). Tar files
go through the standard library's ``data`` filter (PEP 706), which refuses
absolute paths, ``..`` components, links pointing outside, and device files;
zip files are checked member by member, and symlink members are refused.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path

from kerastl._errors import DataError


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a ``.zip`` / ``.tar[.gz|.bz2|.xz]`` into ``dest``, refusing escapes.

    Nothing is written when a member is refused: the archive is checked first.

    Args:
        archive: The archive file.
        dest: Target folder (created if needed).

    Returns:
        ``dest`` as a resolved path.

    Raises:
        DataError: not an archive, or a member would land outside ``dest``
            (path traversal, absolute path, symlink or hard link, device file).

    Example:
        >>> safe_extract("preset.tar.gz", "/tmp/preset")  # doctest: +SKIP
    """
    archive, dest = Path(archive), Path(dest).resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise DataError(
                        f"archive: {str(archive)!r} holds a symlink {info.filename!r}; refused."
                    )
                target = (dest / info.filename).resolve()
                if not target.is_relative_to(dest) or os.path.isabs(info.filename):
                    raise DataError(
                        f"archive: member {info.filename!r} of {str(archive)!r} would be written "
                        f"outside {str(dest)!r}; refused."
                    )
            dest.mkdir(parents=True, exist_ok=True)
            zf.extractall(dest)
        return dest
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:  # check all first: nothing written if one is bad
                try:
                    tarfile.data_filter(m, str(dest))
                except tarfile.FilterError as exc:
                    raise DataError(
                        f"archive: member {m.name!r} of {str(archive)!r} refused: {exc}."
                    ) from None
            dest.mkdir(parents=True, exist_ok=True)
            tf.extractall(dest, filter="data")
        return dest
    raise DataError(f"archive: {str(archive)!r} is not a zip or tar archive.")


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
