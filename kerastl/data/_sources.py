"""Data sources as an index of labelled examples, before any tf.data.

Every source (image folder, CSV of paths, NumPy arrays, TFDS, text CSV/JSONL)
is read into :class:`Examples`: the example references (file paths, arrays or
strings), encoded labels and class names. Splitting, k-fold, label checks and
fingerprints work on this index; :func:`kerastl.data.make_dataset` turns it
into a ``tf.data.Dataset``.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import difflib
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.errors import ConfigError, DataError, choice_error

#: Files TensorFlow's decoder reads (in the graph, also in the ``serving_bytes`` signature).
TF_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
#: Files read by PIL, in training (:func:`kerastl.data.images.decode_file`) as in ``predict``.
PIL_IMAGE_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = TF_IMAGE_EXTENSIONS + PIL_IMAGE_EXTENSIONS
LABEL_TASKS = ("classification", "binary", "multilabel", "regression", "embedding")
MULTILABEL_SEPARATORS = ("|", ";")


@dataclass
class Examples:
    """An indexed, labelled set of examples.

    Attributes:
        kind: ``"files"`` (image paths), ``"arrays"`` (image array), ``"text"``
            (strings) or ``"tfds"`` (a TFDS split, read lazily).
        x: Paths, images ``(N, H, W, C)`` or strings (``None`` for TFDS).
        y: Encoded labels: int class ids (classification, embedding), 0/1
            floats (binary), multi-hot floats (multilabel), floats (regression).
        task: The task the labels were encoded for.
        class_names: Names of the classes (``None`` for regression).
        source: Human-readable description of where the data came from.
        skipped: ``(path, reason)`` of files that were unreadable and skipped.
        tfds: For ``kind="tfds"``: ``{"name", "data_dir", "split", "image_key",
            "label_key"}``.

    Example:
        >>> ex = from_numpy(np.zeros((4, 8, 8, 3), "uint8"), [0, 1, 0, 1])
        >>> len(ex), ex.class_names
        (4, ['0', '1'])
    """

    kind: str
    x: Any
    y: np.ndarray
    task: str = "classification"
    class_names: list[str] | None = None
    source: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    tfds: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def modality(self) -> str:
        """``"text"`` for strings, else ``"image"``."""
        return "text" if self.kind == "text" else "image"

    def subset(self, indices: Any) -> Examples:
        """The examples at ``indices`` (same class names)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.kind == "tfds":
            return replace(self, y=self.y[idx], tfds={**self.tfds, "indices": idx.tolist()})
        return replace(self, x=self.x[idx], y=self.y[idx], skipped=[])

    def class_counts(self) -> dict[str, int]:
        """Examples per class (all classes listed, zero included)."""
        if self.class_names is None:
            return {}
        if self.task == "multilabel":
            counts = self.y.sum(axis=0).astype(int)
            return {c: int(n) for c, n in zip(self.class_names, counts)}
        labels = self.y.reshape(len(self), -1)[:, 0].astype(int) if len(self) else np.zeros(0, int)
        counter = Counter(labels.tolist())
        return {c: int(counter.get(i, 0)) for i, c in enumerate(self.class_names)}

    def fingerprint(self) -> str:
        """A short hash of the content: paths with size and mtime, array bytes or texts.

        Image arrays are hashed once per ``Examples`` (20,000 images of 128 px are
        about 1 GB); a later call checks the same arrays by a sample of 65,536 values,
        which catches most in-place edits. Other kinds are hashed on every call.
        """
        if self.kind != "arrays":
            return self._fingerprint()
        flat = np.ravel(self.x)
        sample = flat[:: max(1, flat.size // 65536)]
        key = (id(self.x), id(self.y), self.task, str(self.class_names), sample.tobytes())
        memo = self.__dict__.get("_fingerprint_memo")
        if memo is not None and memo[0] == key:
            return memo[1]
        value = self._fingerprint()
        self.__dict__["_fingerprint_memo"] = (key, value)
        return value

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.kind}|{self.task}|{self.class_names}".encode())
        if self.kind == "files":
            for p in self.x:
                try:
                    st = os.stat(p)
                    h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{p}|missing\n".encode())
        elif self.kind == "arrays":
            h.update(str(self.x.shape).encode() + str(self.x.dtype).encode())
            h.update(memoryview(np.ascontiguousarray(self.x)).cast("B"))  # no copy
        elif self.kind == "text":
            for t in self.x:
                h.update(str(t).encode() + b"\0")
        else:
            h.update(json.dumps(self.tfds, sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()[:16]

    def split(self, val_fraction: float, seed: int = 0) -> tuple[Examples, Examples]:
        """Seeded train/validation split, stratified by class when there are classes.

        Args:
            val_fraction: Fraction in (0, 1) that goes to validation.
            seed: Random seed; the same seed gives the same split.

        Returns:
            ``(train, validation)``.
        """
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_split: expected a fraction in (0, 1), got {val_fraction!r}.")
        rng = np.random.default_rng(seed)
        n = len(self)
        val: list[int] = []
        if self.task in ("classification", "binary", "embedding") and self.class_names:
            labels = self.y.reshape(n, -1)[:, 0].astype(int)
            for c in range(len(self.class_names)):
                members = np.flatnonzero(labels == c)
                rng.shuffle(members)
                k = int(round(len(members) * val_fraction))
                if len(members) >= 2:
                    k = min(max(k, 1), len(members) - 1)
                val.extend(members[:k].tolist())
        else:
            order = rng.permutation(n)
            val = order[: max(1, int(round(n * val_fraction)))].tolist()
        val_idx = np.sort(np.asarray(val, dtype=np.int64))
        train_idx = np.setdiff1d(np.arange(n), val_idx)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise DataError(
                f"val_split={val_fraction}: {n} example(s) in {self.source} leave an empty "
                "training or validation set; add data or change val_split."
            )
        return self.subset(train_idx), self.subset(val_idx)

    def folds(self, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """``k`` seeded, class-stratified ``(train_indices, val_indices)`` pairs."""
        if not isinstance(k, int) or k < 2:
            raise ConfigError(f"folds: expected an integer >= 2, got folds={k!r}.")
        if k > len(self):
            raise DataError(f"folds={k}: only {len(self)} examples in {self.source}.")
        rng = np.random.default_rng(seed)
        n = len(self)
        assignment = np.empty(n, dtype=np.int64)
        if self.task in ("classification", "binary", "embedding") and self.class_names:
            labels = self.y.reshape(n, -1)[:, 0].astype(int)
            offset = 0
            for c in range(len(self.class_names)):
                members = np.flatnonzero(labels == c)
                rng.shuffle(members)
                assignment[members] = (np.arange(len(members)) + offset) % k
                offset += len(members)
        else:
            assignment[rng.permutation(n)] = np.arange(n) % k
        return [
            (np.flatnonzero(assignment != f), np.flatnonzero(assignment == f)) for f in range(k)
        ]


# ---------------------------------------------------------------------------
# Label encoding
# ---------------------------------------------------------------------------


def example_keys(ex: Examples) -> list[str] | None:
    """One key per example, in order, that two reads of the same example share: a file's
    resolved path, an array row's or a text's content hash (``None`` for TFDS, not
    compared). Duplicates keep their own entries.

    Example:
        >>> a = from_numpy(np.arange(32).reshape(8, 2, 2, 1).astype("uint8"), [0, 1] * 4)
        >>> len(example_keys(a)), set(example_keys(a.subset([1, 2]))) <= set(example_keys(a))
        (8, True)
    """
    if ex.kind == "files":
        return [os.path.realpath(os.fspath(p)) for p in ex.x]
    if ex.kind == "arrays":
        return [hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest() for row in ex.x]
    if ex.kind == "text":
        return [hashlib.sha256(str(t).encode()).hexdigest() for t in ex.x]
    return None


def count_shared(seen: Examples, ex: Examples) -> tuple[int, int] | None:
    """``(examples of ex that are also in seen, examples of ex)`` by :func:`example_keys`,
    each duplicate counted; ``None`` when ``seen``'s examples cannot be compared (TFDS).

    Example:
        >>> a = from_numpy(np.arange(32).reshape(8, 2, 2, 1).astype("uint8"), [0, 1] * 4)
        >>> count_shared(a.subset([0, 1, 2]), a.subset([2, 2, 3]))
        (2, 3)
    """
    seen_keys = example_keys(seen)
    if seen_keys is None:
        return None
    keys, known = example_keys(ex) or [], set(seen_keys)
    return sum(k in known for k in keys), len(keys)


def split_identity(train: Examples, val: Examples | None) -> str:
    """A short hash of which examples (and labels) a train/validation split put in validation.

    Files count by their path under the folder all examples share, so a dataset copied
    or moved elsewhere keeps its identity, and timestamps do not count; arrays and texts
    by their content. Two reads of the same data and seed give the same identity; files
    added or removed change the seeded split and its identity.

    Example:
        >>> ex = from_numpy(np.arange(40).reshape(10, 2, 2, 1).astype("uint8"), [0, 1] * 5)
        >>> split_identity(*ex.split(0.2, seed=0)) == split_identity(*ex.split(0.2, seed=0))
        True
        >>> split_identity(*ex.split(0.2, seed=0)) == split_identity(*ex.split(0.2, seed=1))
        False
    """
    if val is None:
        return "-"
    if val.kind != "files":
        return val.fingerprint()
    paths = [os.fspath(p) for p in (*train.x, *val.x)]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    h = hashlib.sha256()
    for p, label in zip(val.x, np.asarray(val.y).tolist()):
        h.update(f"{os.path.relpath(os.fspath(p), root)}|{label}\n".encode())
    return h.hexdigest()[:16]


def _sort_names(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(names)


_TRUE, _FALSE = {"1", "1.0", "true", "yes", "y"}, {"0", "0.0", "false", "no", "n", ""}


def _flag_columns(
    rows: list[dict], columns: list[str], task: str, class_names: Any, where: str
) -> tuple[np.ndarray, list[str]]:
    """Multilabel targets from one 0/1 column per class (the columns are the classes).

    Example:
        >>> rows = [{"cat": "1", "dog": "0"}, {"cat": "yes", "dog": "true"}]
        >>> y, names = _flag_columns(rows, ["cat", "dog"], "multilabel", None, "CSV")
        >>> y.tolist(), names
        ([[1.0, 0.0], [1.0, 1.0]], ['cat', 'dog'])
    """
    if task != "multilabel":
        raise DataError(
            f"data.label_column: {columns} names several columns, which task={task!r} cannot "
            "take: several columns are for task 'multilabel' (one 0/1 column per class) or "
            "'regression' (one number column per output); give one column of labels."
        )
    if class_names and sorted(map(str, class_names)) != sorted(columns):
        raise DataError(
            f"data.class_names: {list(class_names)} must name the label columns {columns} "
            "(each column is a class), in any order."
        )
    names = [str(c) for c in class_names] if class_names else list(columns)
    y = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, col in enumerate(names):
            value = str(row.get(col) or "").strip().lower()
            if value not in _TRUE | _FALSE:
                raise DataError(
                    f"{where}: column {col!r} of example {i} holds {row.get(col)!r}; with "
                    "several label columns each is a class and holds 0/1 (or true/false, yes/no)."
                )
            y[i, j] = float(value in _TRUE)
    return y, names


def encode_labels(
    raw: list[Any], task: str, class_names: list[str] | None = None, where: str = "data"
) -> tuple[np.ndarray, list[str] | None]:
    """Encode raw labels (strings or numbers) for ``task``.

    Args:
        raw: One label per example. Multilabel labels are lists or strings
            separated by ``|`` or ``;``. Regression labels are numbers or lists.
        task: One of ``classification``, ``binary``, ``multilabel``,
            ``regression``, ``embedding``.
        class_names: Fixed class order; derived (sorted) when ``None``.
        where: Names the source in error messages.

    Returns:
        ``(labels, class_names)``.

    Example:
        >>> encode_labels(["cat", "dog", "cat"], "classification")
        (array([0, 1, 0], dtype=int32), ['cat', 'dog'])
    """
    task = _task_name(task)
    if task == "regression":
        try:
            y = np.asarray(
                [[float(v) for v in (r if isinstance(r, (list, tuple)) else [r])] for r in raw],
                dtype=np.float32,
            )
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: task='regression' needs numeric labels ({exc}).") from None
        return y, None
    if task == "multilabel":
        sets = [_split_multi(r) for r in raw]
        names = (
            [str(c) for c in class_names]
            if class_names
            else _sort_names({s for labels in sets for s in labels})
        )
        index = {c: i for i, c in enumerate(names)}
        y = np.zeros((len(raw), len(names)), dtype=np.float32)
        for i, labels in enumerate(sets):
            for s in labels:
                if s not in index:
                    raise DataError(
                        f"{where}: label {s!r} of example {i} is not one of the class_names "
                        f"{names}."
                    )
                y[i, index[s]] = 1.0
        return y, names
    values = [str(r.decode() if isinstance(r, bytes) else r).strip() for r in raw]
    names = [str(c) for c in class_names] if class_names else _sort_names(set(values))
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise DataError(
            f"{where}: labels {unknown[:10]} are not among class_names {names}"
            + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
            + "."
        )
    ids = np.asarray([index[v] for v in values], dtype=np.int32)
    if task == "binary":
        return ids.astype(np.float32).reshape(-1, 1), names
    return ids, names


def _split_multi(r: Any) -> list[str]:
    if isinstance(r, (list, tuple)):
        return [str(s).strip() for s in r if str(s).strip()]
    s = str(r)
    for sep in MULTILABEL_SEPARATORS:
        if sep in s:
            return [p.strip() for p in s.split(sep) if p.strip()]
    return [s.strip()] if s.strip() else []


def _task_name(task: str) -> str:
    from kerastl.errors import UnknownNameError

    aliases = {
        "multiclass": "classification",
        "multi_label": "multilabel",
        "multi-label": "multilabel",
        "text_classification": "classification",
    }
    key = aliases.get(str(task).lower(), str(task).lower())
    if key not in LABEL_TASKS:
        raise choice_error("task", task, LABEL_TASKS, cls=UnknownNameError)
    return key


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def _labelled_instead(path: Path) -> str:
    """What to give instead of a file that holds no labels (a ``.npy`` of images).

    Example:
        >>> _labelled_instead(Path("x.npy"))[:40]
        ' A .npy file holds one array and no labe'
    """
    if path.suffix.lower() != ".npy":
        return ""
    return (
        " A .npy file holds one array and no labels: save images and labels together with "
        "numpy.savez('data.npz', x=images, y=labels) and pass the .npz, or give an image "
        "folder (one sub-folder per class) or a CSV of paths and labels."
    )


def from_image_folder(
    root: str | os.PathLike,
    task: str = "classification",
    class_names: list[str] | None = None,
    verify: bool = True,
    channels: int = 3,
) -> Examples:
    """Index a folder with one sub-folder per class (``root/cat/1.jpg``...).

    Unreadable or corrupt images are skipped and listed in ``skipped``; a class
    folder with no usable image is a :class:`DataError`.

    Args:
        root: The folder.
        task: ``classification`` (or ``binary`` with exactly two folders).
        class_names: Use only these sub-folders, in this order.
        verify: Decode every file once to find corrupt ones (recommended).
        channels: Channels to decode to when verifying.

    Example:
        >>> ex = from_image_folder("data/flowers")  # doctest: +SKIP
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.path: {str(root)!r} is not a folder.{_labelled_instead(root)}")
    task = _task_name(task)
    folders = _class_folders(root, task, class_names, "image")
    paths: list[str] = []
    labels: list[str] = []
    for c in folders:
        for dirpath, _, files in os.walk(root / c):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(c)
    ex = _files_examples(paths, labels, task, folders, f"image folder {str(root)!r}")
    if verify:
        ex = verify_images(ex, channels=channels)
    check_classes(ex)
    return ex


def _files_examples(paths, labels, task, class_names, source) -> Examples:
    y, names = encode_labels(labels, task, class_names, where=source)
    return Examples("files", np.asarray(paths, dtype=object), y, _task_name(task), names, source)


def from_csv(
    path: str | os.PathLike,
    task: str = "classification",
    path_column: str = "path",
    label_column: str | list[str] = "label",
    root: str | os.PathLike | None = None,
    class_names: list[str] | None = None,
    verify: bool = True,
    channels: int = 3,
) -> Examples:
    """Index a CSV file of image paths and labels.

    Relative paths are resolved against ``root`` (default: the CSV's folder).
    Multilabel labels are separated by ``|`` or ``;``; regression labels are
    numbers (several columns for several outputs).

    Example:
        >>> ex = from_csv("labels.csv", path_column="file")  # doctest: +SKIP
    """
    path = Path(path)
    rows, header, lines = _read_csv(path)
    label_cols = [label_column] if isinstance(label_column, str) else list(label_column)
    for col, key in [(path_column, "path_column")] + [(c, "label_column") for c in label_cols]:
        if col not in header:
            raise choice_error(f"data.{key}", col, header, cls=DataError)
    task = _task_name(task)
    needed = {path_column: "path"}
    if task != "multilabel":  # an empty multilabel cell is an example of no class
        needed.update({c: "label" for c in label_cols})
    rows, skipped = _drop_empty_rows(rows, lines, path, needed)
    base = Path(root) if root else path.parent
    paths = [str(p if os.path.isabs(p := r[path_column]) else base / p) for r in rows]
    where = f"CSV {str(path)!r}"
    if task == "regression":
        raw: list[Any] = [[r[c] for c in label_cols] for r in rows]
        y, names = encode_labels(raw, task, class_names, where=where)
    elif len(label_cols) > 1:
        y, names = _flag_columns(rows, label_cols, task, class_names, where)
    else:
        y, names = encode_labels([r[label_cols[0]] for r in rows], task, class_names, where)
    ex = Examples("files", np.asarray(paths, dtype=object), y, task, names, where, skipped)
    if verify:
        ex = verify_images(ex, channels=channels)
    if len(ex) == 0 and rows:
        origin = "as given" if root else "by default the CSV's folder"
        raise DataError(
            f"{where}: none of its {len(rows)} image paths could be read, e.g. "
            f"{ex.skipped[0][0]}: {ex.skipped[0][1]}. Relative paths are read from "
            f"data.root ({origin}: {str(base)!r}); pass data.root (kerastl train: --set "
            "data.root=DIR) if they are relative to another folder."
        )
    check_classes(ex)
    return ex


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    return (
        f"data.path: {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
        f"offset {exc.start}). Re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8."
    )


def csv_delimiter(path: str | os.PathLike) -> str:
    """The field separator of a CSV source: a tab for ``.tsv`` files, else a comma."""
    return "\t" if Path(path).suffix.lower() == ".tsv" else ","


def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str], list[int]]:
    """The non-blank rows of a CSV (``.tsv``: tab-separated), its header, and the line of the
    file each row starts on (the header is line 1; a quoted text may span lines).

    A UTF-8 byte order mark (Excel's "CSV UTF-8") is dropped, so the first column keeps its name.
    """
    if not path.is_file():
        raise DataError(f"data.path: no file at {str(path)!r}.")
    rows: list[dict[str, str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=csv_delimiter(path))
            header = next(reader, [])
            start = reader.line_num + 1
            values: list[str] = []
            for values in reader:
                if any(v.strip() for v in values):  # a short row: None for its missing cells
                    rows.append(
                        {h: values[i] if i < len(values) else None for i, h in enumerate(header)}
                    )
                    lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(path, exc)) from None
    if rows and len(values) < len(header) and reader.line_num - lines[-1] >= 20:
        raise DataError(
            f"data.path: {path}:{lines[-1]}: a quoted value there runs over the "
            f"{reader.line_num - lines[-1] + 1} lines to the end of the file, so the rows after "
            'it were read as its text: an unterminated quote ("). Close it, or double a '
            'quote inside a quoted value ("").'
        )
    if not rows:
        raise DataError(f"data.path: {str(path)!r} has a header {header} but no rows.")
    return rows, header, lines


def from_numpy(
    x: Any,
    y: Any,
    task: str = "classification",
    class_names: list[str] | None = None,
    source: str = "NumPy arrays",
) -> Examples:
    """Wrap NumPy image arrays ``(N, H, W[, C])`` (0-255), or a 1-D array of texts, and labels.

    Integer labels for classification are class ids; ``class_names`` default
    to ``"0".."K-1"``.

    Example:
        >>> from_numpy(np.zeros((2, 8, 8), "uint8"), [0, 1]).x.shape
        (2, 8, 8, 1)
        >>> from_numpy(np.array(["a good film", "a dull film"]), ["pos", "neg"]).kind
        'text'
    """
    x = np.asarray(x)
    y = np.asarray(y)
    kind = "arrays"
    if x.ndim == 1 and x.dtype.kind in "USO":
        kind, x = "text", np.asarray([str(t) for t in x], dtype=object)
    elif x.ndim == 3:
        x = x[..., None]
    if kind == "arrays" and (x.ndim != 4 or x.shape[-1] not in (1, 3)):
        raise DataError(
            "x: expected images of shape (N, H, W), (N, H, W, 1) or (N, H, W, 3), or a 1-D "
            f"array of N texts, got shape {x.shape} ({x.dtype})."
        )
    if len(x) != len(y):
        raise DataError(f"x and y: {len(x)} examples but {len(y)} labels.")
    task = _task_name(task)
    if task in ("classification", "embedding", "binary") and np.issubdtype(y.dtype, np.integer):
        n = int(y.max()) + 1 if len(y) else 0
        names = [str(c) for c in class_names] if class_names else [str(i) for i in range(n)]
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise DataError(
                f"y: labels range {int(y.min())}..{int(y.max())} but there are {len(names)} "
                f"class_names {names}."
            )
        enc = y.astype(np.int32).reshape(-1)
        if task == "binary":
            enc = enc.astype(np.float32).reshape(-1, 1)
        ex = Examples(kind, x, enc, task, names, source)
    elif task == "multilabel" and y.ndim == 2 and np.issubdtype(y.dtype, np.number):
        names = (
            [str(c) for c in class_names] if class_names else [str(i) for i in range(y.shape[1])]
        )
        ex = Examples(kind, x, y.astype(np.float32), task, names, source)
    elif task == "regression":
        ex = Examples(kind, x, y.astype(np.float32).reshape(len(y), -1), task, None, source)
    else:
        enc, names = encode_labels(list(y), task, class_names, where=source)
        ex = Examples(kind, x, enc, task, names, source)
    check_classes(ex)
    return ex


def from_npz(
    path: str | os.PathLike, task: str = "classification", class_names: list[str] | None = None
) -> Examples:
    """Load ``x`` and ``y`` (and optional ``class_names``) from a ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path: no file at {str(path)!r}.")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("x", "y") if k not in z.files]
        if missing:
            raise DataError(f"data.path: {str(path)!r} lacks arrays {missing} (has {z.files}).")
        names = class_names or (
            list(map(str, z["class_names"])) if "class_names" in z.files else None
        )
        return from_numpy(z["x"], z["y"], task, names, source=f"NumPy file {str(path)!r}")


def from_text(
    path: str | os.PathLike,
    task: str = "classification",
    text_column: str = "text",
    label_column: str = "label",
    class_names: list[str] | None = None,
) -> Examples:
    """Read texts and labels from a CSV (header row) or a JSONL file, or a folder of .txt files.

    The format follows the extension: ``.jsonl``/``.ndjson`` is one JSON object
    per line, ``.tsv`` is tab-separated, anything else is CSV; a folder is read by
    :func:`from_text_folder`. Rows with an empty text or label are skipped and reported.

    Example:
        >>> import json, pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "reviews.jsonl"
        >>> rows = [{"text": "great film", "label": "pos"}, {"text": "dull", "label": "neg"}]
        >>> _ = path.write_text("\\n".join(json.dumps(r) for r in rows))
        >>> ex = from_text(path)
        >>> ex.kind, len(ex), sorted(ex.class_names)
        ('text', 2, ['neg', 'pos'])
    """
    path = Path(path)
    if path.is_dir():
        return from_text_folder(path, task, class_names)
    if not path.is_file():
        raise DataError(f"data.path: no file at {str(path)!r}.")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows, header, lines = _read_jsonl(path)
    else:
        rows, header, lines = _read_csv(path)
    if text_column not in header:
        raise DataError(_no_text_column(path, header, text_column, label_column))
    if label_column not in header:
        raise choice_error("data.label_column", label_column, header, cls=DataError)
    needed = {text_column: "text"}
    if _task_name(task) != "multilabel":  # an empty multilabel cell is an example of no class
        needed[label_column] = "label"
    line_of = {id(r): n for r, n in zip(rows, lines)}
    rows, skipped = _drop_empty_rows(rows, lines, path, needed)
    if not rows:
        raise DataError(
            f"data.path: no row of {str(path)!r} has a non-empty {' and '.join(needed.values())}."
        )
    # a JSON number or list is no text (str() would train on "5" or "['x', 'y']"), as
    # kerastl predict refuses it
    check_strings(rows, [line_of[id(r)] for r in rows], path, "data.path", text_column)
    texts = np.asarray([r[text_column] for r in rows], dtype=object)
    y, names = encode_labels(
        [r[label_column] for r in rows], task, class_names, where=f"text file {str(path)!r}"
    )
    ex = Examples("text", texts, y, _task_name(task), names, f"text file {str(path)!r}", skipped)
    check_classes(ex)
    return ex


#: Files a text folder (:func:`from_text_folder`) reads, as keras.utils.text_dataset_from_directory.
TEXT_FILE_EXTENSIONS = (".txt",)


def from_text_folder(
    root: str | os.PathLike,
    task: str = "classification",
    class_names: list[str] | None = None,
) -> Examples:
    """Index a folder with one sub-folder of ``.txt`` files per class: one file, one text.

    As ``keras.utils.text_dataset_from_directory`` reads ``root/sport/a.txt``. Empty
    files and files that are not UTF-8 are skipped and reported.

    Example:
        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c, t in (("neg", "dull"), ("pos", "great film")):
        ...     (root / c).mkdir()
        ...     _ = (root / c / "1.txt").write_text(t)
        >>> ex = from_text_folder(root)
        >>> ex.kind, ex.x.tolist(), ex.class_names
        ('text', ['dull', 'great film'], ['neg', 'pos'])
    """
    root = Path(root)
    task = _task_name(task)
    folders = _class_folders(root, task, class_names, "text")
    texts, labels, skipped = [], [], []
    for c in folders:
        for dirpath, dirs, files in os.walk(root / c):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith(".") or not f.lower().endswith(TEXT_FILE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    with open(path, encoding="utf-8-sig") as fh:
                        text = fh.read()
                except UnicodeDecodeError:
                    skipped.append((path, "not UTF-8 text"))
                    continue
                if not text.strip():
                    skipped.append((path, "empty text"))
                    continue
                texts.append(text)
                labels.append(c)
    where = f"text folder {str(root)!r}"
    y, names = encode_labels(labels, task, folders, where=where)
    ex = Examples("text", np.asarray(texts, dtype=object), y, task, names, where, skipped)
    check_classes(ex)
    return ex


def folder_modality(root: str | os.PathLike) -> str:
    """``"text"`` for a folder with ``.txt`` files and no image under it, else ``"image"``.

    The walk stops at the first image, so a large image folder costs little.
    """
    text = False
    for _, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            low = f.lower()
            if low.endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                return "image"
            text = text or (low.endswith(TEXT_FILE_EXTENSIONS) and not f.startswith("."))
    return "text" if text else "image"


def empty_columns(row: dict, needed: dict[str, str]) -> list[str]:
    """What each column of ``needed`` (column -> what it holds) that ``row`` leaves empty
    holds: a missing or None value, or one whose ``str()`` is blank (``0``, ``False`` are
    values). The one test of an empty cell, for training, export and predict data alike."""
    return [
        what for col, what in needed.items() if row.get(col) is None or not str(row[col]).strip()
    ]


def _drop_empty_rows(
    rows: list[dict], lines: list[int], path: Path, needed: dict[str, str]
) -> tuple[list[dict], list[tuple[str, str]]]:
    """The rows with a value in every column of ``needed`` (column -> what it holds), and
    ``("file:line", "empty <what>")`` for each other row (an empty label is no class)."""
    kept, skipped = [], []
    for row, line in zip(rows, lines):
        empty = empty_columns(row, needed)
        if empty:
            skipped.append((f"{path}:{line}", "empty " + " and ".join(empty)))
        else:
            kept.append(row)
    return kept, skipped


#: The JSON type of a value of a JSONL row, for :func:`check_strings`' message.
_JSON_TYPES = (
    (bool, "a boolean"),
    ((int, float), "a number"),
    (list, "a list"),
    (dict, "an object"),
)


def check_strings(
    rows: list[dict], lines: list[int], path: Path, argument: str, text_column: str
) -> None:
    """Refuse a ``text_column`` value that is not a string (a JSONL number, list...).

    Raises:
        DataError: naming ``argument``, the first such row (``file:line``), its value and
            the lines of the others.
    """
    bad = [(r[text_column], n) for r, n in zip(rows, lines) if not isinstance(r[text_column], str)]
    if not bad:
        return
    value, line = bad[0]
    kind = next((name for t, name in _JSON_TYPES if isinstance(value, t)), type(value).__name__)
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    more = [f"{path}:{n}" for _, n in bad[1:6]] + (["..."] if len(bad) > 6 else [])
    others = f" (also {', '.join(more)})" if more else ""
    raise DataError(
        f"{argument}: {path}:{line}: the {text_column!r} value is {kind}, {shown}, not a "
        f"string{others}; a text model takes texts: write each text as a JSON string "
        f'("...").'
    )


def _read_jsonl(path: Path) -> tuple[list[dict], list[str], list[int]]:
    """The objects of a JSONL file, the keys they use (sorted) and the line of each."""
    rows, lines = [], []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{str(path)!r} line {lineno}: invalid JSON ({exc}).") from None
                lines.append(lineno)
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(path, exc)) from None
    return rows, sorted({k for r in rows for k in r}), lines


def _no_text_column(path: Path, header: list[str], text_column: str, label_column: str) -> str:
    """Why a text file has no column of texts, its columns, and how to choose one."""
    others = [h for h in header if h != label_column] or header or ["sentence"]
    guess = (difflib.get_close_matches(text_column, others, n=1, cutoff=0.6) or others)[0]
    return (
        f"data.text_column: text file {str(path)!r} has no column {text_column!r} of texts "
        f"(its columns: {header}). Name the column of texts {text_column!r} in the file, or "
        f"choose it with data.text_column, e.g. {guess!r}: in the YAML (data: {{text_column: "
        f"{guess}}}), kerastl train --set data.text_column={guess}, or "
        f"kerastl.data.load(path, text_column={guess!r}). For a CSV of image paths instead, "
        "set data.source: csv and data.path_column."
    )


def from_tfds(
    name: str,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    task: str = "classification",
    image_key: str = "image",
    label_key: str = "label",
) -> Examples:
    """Index a prepared TFDS dataset (no download: it must be in ``data_dir``).

    Example:
        >>> ex = from_tfds("my_dataset", data_dir="~/tensorflow_datasets")  # doctest: +SKIP
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
        info = builder.info
        if not builder.data_path.exists() or not list(builder.data_path.glob("*")):
            raise FileNotFoundError(str(builder.data_path))
    except Exception as exc:  # noqa: BLE001 - tfds raises many kinds here
        where = f"data.data_dir {str(data_dir)!r}" if data_dir else "TFDS's default data_dir"
        raise DataError(
            f"data.name: cannot open TFDS dataset {name!r} in {where} "
            f"({type(exc).__name__}: {exc}). kerastl does not download: prepare it where a "
            "network is available (tfds.builder(name).download_and_prepare()), copy its "
            "data_dir here and set data.data_dir to it."
        ) from None
    features = info.features
    for key, what in ((image_key, "image_key"), (label_key, "label_key")):
        if key not in features:
            raise choice_error(f"data.{what}", key, list(features.keys()), cls=DataError)
    label_feature = features[label_key]
    names = list(getattr(label_feature, "names", None) or []) or None
    ds = builder.as_dataset(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    labels = np.asarray([int(v) for v in ds.map(lambda e: e[label_key]).as_numpy_iterator()])
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    task = _task_name(task)
    y = labels.astype(np.int32)
    if task == "binary":
        y = y.astype(np.float32).reshape(-1, 1)
    ex = Examples(
        "tfds",
        None,
        y,
        task,
        names,
        f"TFDS {name!r} split {split!r}",
        tfds={
            "name": name,
            "data_dir": None if data_dir is None else str(data_dir),
            "split": split,
            "image_key": image_key,
            "label_key": label_key,
            "version": str(info.version),
        },
    )
    check_classes(ex)
    return ex


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


#: True while held-out data is read (:func:`held_out`): classes may be absent from it.
_HELD_OUT: contextvars.ContextVar[bool] = contextvars.ContextVar("held_out", default=False)


@contextlib.contextmanager
def held_out() -> Iterator[None]:
    """Read held-out data (validation or evaluation) inside: the model's classes are given,
    and a class with no example (no sub-folder, no row) is not an error; it is not scored.

    Example:
        >>> x, names = np.zeros((4, 2, 2, 1), "uint8"), ["a", "b", "c"]
        >>> with held_out():
        ...     from_numpy(x, ["a", "b", "a", "b"], class_names=names).class_counts()
        {'a': 2, 'b': 2, 'c': 0}
    """
    token = _HELD_OUT.set(True)
    try:
        yield
    finally:
        _HELD_OUT.reset(token)


def check_classes(ex: Examples) -> None:
    """Raise :class:`DataError` on no examples, an empty or single class, non-finite targets
    (an empty class is allowed in held-out data, :func:`held_out`)."""
    if len(ex) == 0:
        shown = "; ".join(f"{p}: {why}" for p, why in ex.skipped[:3])
        more = f"; ... {len(ex.skipped) - 3} more" if len(ex.skipped) > 3 else ""
        extra = f" ({len(ex.skipped)} skipped: {shown}{more})" if ex.skipped else ""
        raise DataError(f"{ex.source}: no usable examples{extra}.")
    if ex.task == "regression":
        y = np.asarray(ex.y, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(y).reshape(len(y), -1).all(axis=1))
        if bad.size:
            raise DataError(
                f"{ex.source}: {bad.size} regression target(s) are NaN or infinite "
                f"(rows {bad[:5].tolist()}{'...' if bad.size > 5 else ''}); fix or drop them."
            )
    if ex.task in ("classification", "binary", "multilabel", "embedding") and ex.class_names:
        counts = ex.class_counts()
        empty = [c for c, n in counts.items() if n == 0]
        if empty and _HELD_OUT.get():
            return  # not scored; the caller says so (context.warn_missing_classes, metrics)
        if empty:
            raise DataError(
                f"{ex.source}: class(es) {empty} have no usable example"
                + (" (unreadable files were skipped)" if ex.skipped else "")
                + f". Counts: {counts}. Remove the class or add examples."
            )
        if len(counts) < 2 and ex.task in ("classification", "embedding"):
            raise DataError(
                f"{ex.source}: a single class {list(counts)}; task={ex.task!r} needs at least "
                "two classes. For a yes/no model add a second class folder and use task='binary'."
            )
        if ex.task == "binary" and len(counts) != 2:
            raise DataError(
                f"{ex.source}: task='binary' needs exactly two classes, found {len(counts)}: "
                f"{list(counts)}."
            )


def check_head(
    ex: Examples, num_outputs: int, task: str, model_class_names: list[str] | None = None
) -> None:
    """Raise :class:`DataError` when labels do not fit a model's head.

    Args:
        ex: The examples.
        num_outputs: Width of the model's output (``kerastl_config["num_outputs"]``).
        task: The model's task.
        model_class_names: Class names stored in the model, if any.
    """
    task = _task_name(task)
    if task != ex.task:
        raise DataError(
            f"The labels were encoded for task={ex.task!r} but the model's task is {task!r}."
        )
    if task in ("classification", "multilabel"):
        n = len(ex.class_names or [])
        if n != num_outputs:
            raise DataError(
                f"The data has {n} classes {ex.class_names} but the model's head has "
                f"{num_outputs} outputs; build the model with num_classes={n}."
            )
    if task == "regression" and ex.y.shape[1] != num_outputs:
        raise DataError(
            f"The regression targets have {ex.y.shape[1]} column(s) but the model has "
            f"{num_outputs} output(s)."
        )
    if model_class_names and ex.class_names and list(model_class_names) != list(ex.class_names):
        raise DataError(
            f"The model's class_names {model_class_names} differ from the data's "
            f"{ex.class_names} (same names in the same order are required)."
        )


def verify_images(ex: Examples, channels: int = 3, workers: int = 8) -> Examples:
    """Decode every file once; drop unreadable ones and record them in ``skipped``.

    Uses the input pipeline's decoder (:func:`kerastl.data.images.decode_file`) in a
    thread pool, with a progress bar (``tqdm``, on standard error when it is a terminal) over
    500 files or more unless the ``kerastl`` logger is quiet (``--quiet``).
    """
    if ex.kind != "files" or len(ex) == 0:
        return ex
    import logging
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    from kerastl.core.progress import progress_bar
    from kerastl.data.images import decode_file

    def check(p: str) -> str | None:
        try:
            img = decode_file(tf.io.read_file(p), None, channels)
            if img.shape[0] == 0 or img.shape[1] == 0:
                return "empty image"
            return None
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
            text = re.sub(r"\{\{.*?\}\}\s*", "", str(exc)).strip()
            msg = text.splitlines()[0] if text else type(exc).__name__
            return f"{type(exc).__name__}: {msg[:160]}"

    quiet = not logging.getLogger("kerastl").isEnabledFor(logging.INFO)
    bar = {"desc": "checking images", "unit": "img", "leave": False, "total": len(ex)}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, list(ex.x))
        problems = list(progress_bar(results, show=not quiet and len(ex) >= 500, **bar))
    bad = [i for i, p in enumerate(problems) if p]
    if not bad:
        return ex
    keep = np.asarray([i for i, p in enumerate(problems) if not p], dtype=np.int64)
    skipped = list(ex.skipped) + [(str(ex.x[i]), problems[i]) for i in bad]
    return replace(ex, x=ex.x[keep], y=ex.y[keep], skipped=skipped)


#: What an image or text folder holds, for :func:`_class_folders`' messages.
_FOLDER_KINDS = {
    "image": (
        "an image folder gives one label per image (its sub-folder); use a CSV of "
        "path,label for multilabel or regression.",
        "expected one sub-folder per class (root/cat/*.jpg, root/dog/*.jpg).",
    ),
    "text": (
        "a text folder gives one label per file (its sub-folder); use a CSV or JSONL file "
        "of text,label for multilabel or regression.",
        "expected one sub-folder of .txt files per class (root/sport/a.txt, "
        "root/finance/b.txt), or a CSV/JSONL file.",
    ),
}


def class_folder_of(root: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """The class of a file under a class-folder ``root``: its first folder under ``root``.

    The rule of :func:`from_image_folder` and :func:`from_text_folder`, which label every
    file under ``root/<class>/``, however deep, by ``<class>``; a file directly in
    ``root`` has no class (``None``).

    Example:
        >>> class_folder_of("imgs", "imgs/rocket/nested/deeper/1.png")
        'rocket'
        >>> class_folder_of("imgs", "imgs/1.png") is None
        True
    """
    parts = Path(path).relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def _class_folders(root: Path, task: str, class_names: Any, kind: str) -> list[str]:
    """The class sub-folders of an image or text folder (``class_names`` order if given)."""
    one_label, layout = _FOLDER_KINDS[kind]
    if task not in ("classification", "binary", "embedding"):
        raise ConfigError(f"task={task!r}: {one_label}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names:
        missing = [c for c in class_names if c not in folders]
        if missing and not _HELD_OUT.get():
            raise DataError(
                f"class_names: no sub-folder {missing} in {str(root)!r} (has {folders})."
            )
        folders = [str(c) for c in class_names]
    if not folders:
        raise DataError(f"data.path: {str(root)!r} has no sub-folders; {layout}")
    if not class_names:
        check_not_split_folders(root, folders)
    return folders


#: Folder names of dataset splits (timm, Ultralytics and TFDS-style ``root/train/<class>``).
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")


def check_not_split_folders(root: Path, folders: list[str]) -> None:
    """Refuse a dataset root whose "classes" are its splits, each holding class folders.

    ``root/train/<class>/``, ``root/val/<class>/`` read as one folder per class would
    train a classifier of "train" against "val".

    Raises:
        DataError: every sub-folder is a split name, ``train`` among them, and each holds
            sub-folders and no file of its own.
    """
    if "train" not in folders or not set(folders) <= set(SPLIT_FOLDERS):
        return
    for f in folders:
        entries = [e for e in (root / f).iterdir() if not e.name.startswith(".")]
        if not entries or any(e.is_file() for e in entries):
            return  # a class that happens to be called 'train' (its examples inside)
    val = next((f for f in SPLIT_FOLDERS[1:4] if f in folders), None)
    fix = f"data.path={str(root / 'train')!r}" + (
        f" and data.val_path={str(root / val)!r}" if val else ""
    )
    raise DataError(
        f"data.path: {str(root)!r} holds the splits {folders}, each with class sub-folders "
        f"(the timm / Ultralytics layout), not one sub-folder per class: read as classes "
        f"they would train a classifier of {' vs '.join(repr(f) for f in folders)}. Pass "
        f"{fix} (kerastl train: --data {root / 'train'}"
        + (f" --val-data {root / val}" if val else "")
        + ")."
    )
