"""Read the validation / calibration inputs a user names by path (no TensorFlow).

:func:`kerastl.export` and ``kerastl export`` accept an image folder (class
subfolders give labels) or a ``.npy`` / ``.npz`` file wherever they take data;
``kerastl predict`` reads the texts of a text model from files with :func:`read_texts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kerastl.data._sources import IMAGE_EXTENSIONS as IMAGE_SUFFIXES
from kerastl.data._sources import check_strings, class_folder_of

#: Files :func:`read_texts` reads: one text per line, or a table with a column of texts.
TEXT_LINE_SUFFIXES = (".txt",)
TEXT_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
TEXT_SUFFIXES = TEXT_LINE_SUFFIXES + TEXT_TABLE_SUFFIXES


def image_files(folder: Path, argument: str) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted); ``DataError`` naming ``argument`` if none.

    Hidden files and folders (``.ipynb_checkpoints``, macOS' ``._*`` files) are left out, as
    the training loader leaves out hidden class folders.
    """
    from kerastl.errors import DataError

    folder = Path(folder)
    files = sorted(
        f
        for f in folder.rglob("*")
        if f.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )
    if not files:
        raise DataError(
            f"{argument}: no images ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}."
        )
    return files


def load_data_path(path: Any, argument: str, class_names: list[str] | None) -> Any:
    """An image folder -> list of paths (+ labels from class subfolders); .npy/.npz -> arrays.

    A file's class is its first folder under the image folder, however deep the file
    (:func:`~kerastl.data._sources.class_folder_of`), as training and evaluation read it.
    """
    if path is None:
        return None
    import numpy as np

    from kerastl.errors import DataError

    p = Path(path)
    if p.is_dir():
        files = image_files(p, argument)
        paths = [str(f) for f in files]
        classes = [class_folder_of(p, f) for f in files]  # as training labels the folder
        if class_names and all(c in class_names for c in classes):
            return paths, np.array([class_names.index(c) for c in classes])
        _warn_unlabelled(files, p, class_names, argument)
        return paths
    if p.suffix == ".npy" and p.is_file():
        return read_arrays(p, argument)
    if p.suffix == ".npz" and p.is_file():
        data = read_arrays(p, argument)
        x = data["x"] if "x" in data else next(iter(data.values()))
        y = data.get("y")
        return x if y is None else (x, y)
    if p.suffix.lower() in TEXT_SUFFIXES and p.is_file():
        return _text_data(p, argument, class_names)
    raise DataError(
        f"{argument}: expected an image folder, .npy or .npz file, or for a text model a "
        f"{'/'.join(TEXT_SUFFIXES)} file of texts, got {str(path)!r}."
    )


def _text_data(path: Path, argument: str, class_names: list[str] | None) -> Any:
    """The texts of a text file (:func:`read_texts`); with the ``label`` column of a table and
    the model's class names, ``(texts, class ids)`` (rows with an empty label left out)."""
    import numpy as np

    from kerastl.data._sources import empty_columns, encode_labels

    rows, _, header = _text_rows(path, argument, "text")  # read once: texts and labels agree
    texts = np.asarray([str(r["text"]) for r in rows], dtype=object)
    if not class_names or "label" not in header:
        return texts
    if any(empty_columns(r, {"label": "label"}) for r in rows):
        return texts  # unlabelled rows: the texts only, as an unlabelled image folder
    where = f"{argument}: {str(path)!r}"
    y, _ = encode_labels([r["label"] for r in rows], "classification", class_names, where)
    return texts, y


def _warn_unlabelled(files: list[Path], root: Path, class_names: list[str] | None, argument: str):
    """Say why the class sub-folders of ``root`` give no labels (validation runs without them)."""
    import logging

    classes = [class_folder_of(root, f) for f in files]
    folders = sorted({c for c in classes if c is not None})
    if not folders:
        return
    other = [f for f in folders if f not in (class_names or [])]
    if not class_names:
        why = "the model has no class names (a model not built by kerastl)"
    elif other:
        why = f"sub-folders {other[:5]} are not among the model's class names {class_names[:10]}"
    else:
        why = f"{classes.count(None)} file(s) lie directly in it, in no class sub-folder"
    logging.getLogger("kerastl").warning(
        f"{argument}: the class sub-folders of {str(root)!r} give no labels: {why}; the "
        "files are used without labels (no accuracy check)."
    )


def read_arrays(path: Any, argument: str) -> Any:
    """``numpy.load`` without pickle: an array (``.npy``) or a dict of arrays (``.npz``).

    The one reader of user ``.npy``/``.npz`` files: ``kerastl export``'s data and
    ``kerastl predict``'s inputs.

    Raises:
        DataError: naming ``argument``: no file at ``path``, or numpy cannot read it as
            numbers without pickle (object arrays, a torn file).

    Example:
        >>> read_arrays("missing.npy", "inputs")
        Traceback (most recent call last):
        ...
        kerastl.errors.DataError: inputs: no file at 'missing.npy'.
    """
    import numpy as np

    from kerastl.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{argument}: no file at {str(path)!r}.")
    try:
        data = np.load(path)
        if isinstance(data, np.lib.npyio.NpzFile):  # read lazily: read every array now
            with data:
                return {k: data[k] for k in data.files}
        return data
    except (ValueError, OSError, EOFError) as exc:
        what = (
            "a .npz archive of numeric arrays"
            if path.suffix.lower() == ".npz"
            else "a .npy array of raw inputs"
        )
        raise DataError(
            f"{argument}: cannot read {str(path)!r} without pickle: it is not {what} that "
            f"numpy can read ({exc}). Save numbers with numpy.save / numpy.savez."
        ) from None


def fit_image_array(x: Any, shape: Any, argument: str, source: str) -> Any:
    """An array of images for a model input ``shape`` ``(H, W, C)``, read as image files are.

    ``(N, H, W, C)`` is kept; one image ``(H, W, C)`` gets a batch axis; grayscale
    ``(N, H, W)`` or ``(N, H, W, 1)`` is repeated to 3 channels for an RGB model, as a grey
    file is decoded, and RGB becomes grey by luma for a 1-channel model. ``None`` in
    ``shape`` matches any size.

    Raises:
        DataError: naming ``argument`` and ``source``: the shape received, the shapes accepted.

    Example:
        >>> import numpy as np
        >>> fit_image_array(np.zeros((2, 8, 8), "uint8"), (8, 8, 3), "inputs", "x.npy").shape
        (2, 8, 8, 3)
        >>> fit_image_array(np.zeros((2, 8, 8, 3)), (8, 8, 4), "inputs", "x.npy")
        Traceback (most recent call last):
        kerastl.errors.DataError: inputs: x.npy holds an array of shape (2, 8, 8, 3) (float64); the model takes 4-channel images of size (8, 8). Accepted shapes: (N, 8, 8, 4), or one image (8, 8, 4); raw 0-255 pixels.
    """
    import numpy as np

    from kerastl.errors import DataError

    h, w, c = shape

    def fits(got: tuple, want: tuple) -> bool:
        return len(got) == len(want) and all(e is None or g == e for g, e in zip(got, want))

    x = np.asarray(x)
    if x.ndim == 3 and fits(x.shape, (h, w, c)):
        return x[None]
    if x.ndim == 3 and fits(x.shape[1:], (h, w)):
        x = x[..., None]
    grey_rgb = c in (1, 3) and x.ndim == 4 and x.shape[3] in (1, 3)  # read as files are
    if x.ndim == 4 and fits(x.shape[1:3], (h, w)) and (c in (None, x.shape[3]) or grey_rgb):
        if x.shape[3] == 1 and c == 3:
            return np.repeat(x, 3, axis=-1)
        if x.shape[3] == 3 and c == 1:  # the weights of tf.image.rgb_to_grayscale
            luma = np.tensordot(x.astype(np.float32), [0.2989, 0.587, 0.114], axes=([3], [0]))
            return np.round(luma)[..., None].astype(x.dtype)
        return x
    hw = ", ".join("any" if s is None else str(s) for s in (h, w))
    grey = (
        f", (N, {hw}, {1 if c == 3 else 3}) or (N, {hw}) (grayscale, as grey image files)"
        if c in (1, 3)
        else ""
    )
    raise DataError(
        f"{argument}: {source} holds an array of shape {tuple(x.shape)} ({x.dtype}); the model "
        f"takes {c}-channel images of size ({hw}). Accepted shapes: (N, {hw}, {c}){grey}, or "
        f"one image ({hw}, {c}); raw 0-255 pixels."
    )


def read_texts(path: Any, argument: str, text_column: str = "text") -> list[tuple[str, str]]:
    """``(where, text)`` of each text in a file: ``where`` is ``"file:line"`` (first line 1).

    A ``.txt`` file holds one text per line; a ``.csv`` / ``.tsv`` / ``.jsonl`` file holds
    them in ``text_column``. Rows with an empty text (a blank line or cell, a JSON ``null``
    or no ``text_column`` key) are left out, as training leaves them out, and named in a
    warning (``file:line: empty text``).

    Raises:
        DataError: naming ``argument``: no such file, another suffix, not UTF-8, no
            ``text_column``, a value that is not a string (a JSON number, list...), or
            no text at all.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "s.txt"
        >>> _ = path.write_text("a good film\\n\\nawful\\n")
        >>> [(w.split(":")[-1], t) for w, t in read_texts(path, "inputs")]
        [('1', 'a good film'), ('3', 'awful')]
    """
    rows, lines, _ = _text_rows(path, argument, text_column)
    return [(f"{Path(path)}:{line}", r[text_column]) for r, line in zip(rows, lines)]


def _text_rows(
    path: Any, argument: str, text_column: str
) -> tuple[list[dict], list[int], list[str]]:
    """The rows of a text file with a non-empty ``text_column``, the line of each and the
    columns (a ``.txt`` line is a row whose one column is ``text_column``).

    Rows with an empty text are left out and named in a warning (:func:`_drop_empty_texts`).

    Raises:
        DataError: as :func:`read_texts`.
    """
    from kerastl.data._sources import _not_utf8, _read_csv, _read_jsonl
    from kerastl.errors import DataError

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{argument}: no file at {str(path)!r}.")
    if suffix not in TEXT_SUFFIXES:
        raise DataError(
            f"{argument}: {str(path)!r} is not a text file; expected one of "
            f"{', '.join(TEXT_SUFFIXES)}."
        )
    try:
        if suffix in TEXT_LINE_SUFFIXES:
            with open(path, encoding="utf-8-sig") as f:
                rows = [{text_column: line.rstrip("\r\n")} for line in f]
            header, lines = [text_column], list(range(1, len(rows) + 1))
        else:
            reader = _read_jsonl if suffix in (".jsonl", ".ndjson") else _read_csv
            rows, header, lines = reader(path)
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(path, exc).replace("data.path", argument, 1)) from None
    except DataError as exc:  # the training readers name data.path
        raise DataError(str(exc).replace("data.path", argument, 1)) from None
    if text_column not in header:
        raise DataError(
            f"{argument}: {str(path)!r} has no column {text_column!r} of texts (its "
            f"columns: {header}); name the column of texts {text_column!r}."
        )
    rows, lines = _drop_empty_texts(rows, lines, path, argument, text_column)
    if not rows:
        raise DataError(f"{argument}: no text in {str(path)!r}.")
    check_strings(rows, lines, path, argument, text_column)
    return rows, lines, header


def _drop_empty_texts(
    rows: list[dict], lines: list[int], path: Path, argument: str, text_column: str
) -> tuple[list[dict], list[int]]:
    """The rows with a text and their lines; the others (training's empty-cell test,
    ``_drop_empty_rows``) named in a warning, ``file:line: empty text`` as training says."""
    import logging

    from kerastl.data._sources import _drop_empty_rows

    kept, skipped = _drop_empty_rows(rows, lines, path, {text_column: "text"})
    if skipped:
        shown = ", ".join(f"{where}: {why}" for where, why in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        logging.getLogger("kerastl").warning(
            f"{argument}: skipped {len(skipped)} row(s) with no text (blank, null or no "
            f"{text_column!r}), as training skips them: {shown}{more}"
        )
    line_of = {id(r): n for r, n in zip(rows, lines)}
    return kept, [line_of[id(r)] for r in kept]
