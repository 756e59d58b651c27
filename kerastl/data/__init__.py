"""Data for kerastl: sources read into an index, then tf.data pipelines.

Sources: an image folder (one sub-folder per class), a CSV of ``path,label``,
NumPy arrays (or a ``.npz``), a prepared TFDS dataset, and text as CSV/JSONL or a
folder of ``.txt`` files (one sub-folder per class).
Each returns :class:`Examples`; :func:`make_dataset` builds the pipeline.

Example:
    >>> from kerastl import data
    >>> ex = data.from_image_folder("flowers/")  # doctest: +SKIP
    >>> train, val = ex.split(0.2, seed=0)  # doctest: +SKIP
    >>> ds = data.make_dataset(train, image_size=224, batch_size=32, shuffle=True,
    ...                        augment="standard")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kerastl.data._sources import (
    IMAGE_EXTENSIONS,
    Examples,
    check_classes,
    check_head,
    count_shared,
    csv_delimiter,
    encode_labels,
    example_keys,
    folder_modality,
    from_csv,
    from_image_folder,
    from_npz,
    from_numpy,
    from_text,
    from_text_folder,
    from_tfds,
    held_out,
    split_identity,
    verify_images,
)
from kerastl.errors import ConfigError, choice_error

SOURCES = ("folder", "csv", "numpy", "tfds", "text")

__all__ = [
    "AUGMENT_PRESETS",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "Examples",
    "check_classes",
    "check_head",
    "encode_labels",
    "count_shared",
    "example_keys",
    "from_csv",
    "from_image_folder",
    "from_npz",
    "from_numpy",
    "from_text",
    "from_text_folder",
    "from_tfds",
    "held_out",
    "folder_modality",
    "infer_source",
    "load",
    "make_dataset",
    "split_identity",
    "verify_images",
]


def __getattr__(name: str) -> Any:  # the pipeline imports TensorFlow: load it on first use
    if name in (
        "make_dataset",
        "AUGMENT_PRESETS",
        "AUGMENTATIONS",
        "augment_names",
        "build_augmenter",
        "examples_to_dataset",
        "shuffle_and_batch",
    ):
        from kerastl.data import _pipeline

        return getattr(_pipeline, name)
    raise AttributeError(f"module 'kerastl.data' has no attribute {name!r}")


def infer_source(
    path: str | os.PathLike, text_column: str = "text", path_column: str = "path"
) -> str:
    """Guess the source kind from a path: folder, ``.csv`` (images or text), ``.npz``, ``.jsonl``.

    A folder whose class sub-folders hold ``.txt`` files and no image is text (one file,
    one example: :func:`from_text_folder`).

    A CSV whose header has ``text_column`` is text; one with ``path_column``, or with image
    file names (``.jpg``, ``.png``...) in its first rows, lists images; any other CSV is
    text (its error then names ``data.text_column``, not a column of image paths).

    Example:
        >>> infer_source("reviews.jsonl")
        'text'
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "text"
    if suffix == ".npz":
        return "numpy"
    if suffix in (".csv", ".tsv"):
        return _csv_kind(p, text_column, path_column) if p.is_file() else "csv"
    if p.is_dir() and folder_modality(p) == "text":
        return "text"
    return "folder"


def _csv_kind(path: Path, text_column: str, path_column: str) -> str:
    """``"text"`` or ``"csv"`` (image paths) for a CSV file, from its header and first rows."""
    import csv
    import itertools

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=csv_delimiter(path))
            header = [h.strip() for h in next(reader, [])]
            rows = list(itertools.islice(reader, 20))
    except UnicodeDecodeError:
        return "csv"  # the CSV reader names the byte
    if text_column.lower() in (h.lower() for h in header):
        return "text"
    if path_column in header:
        return "csv"
    images = any(v.strip().lower().endswith(IMAGE_EXTENSIONS) for r in rows for v in r)
    return "csv" if images else "text"


def load(
    source: str | None = None,
    path: str | os.PathLike | None = None,
    task: str = "classification",
    class_names: list[str] | None = None,
    channels: int = 3,
    verify: bool = True,
    **options: Any,
) -> Examples:
    """Read any source into :class:`Examples` (what ``kerastl train`` calls).

    Args:
        source: ``folder``, ``csv``, ``numpy``, ``tfds`` or ``text``; guessed
            from ``path`` when ``None``.
        path: Folder or file (for ``tfds``: unused, give ``name``).
        task: Task the labels are encoded for.
        class_names: Fixed class order.
        channels: Channels images decode to.
        verify: Decode image files once to skip corrupt ones.
        **options: Source options (``path_column``, ``label_column``,
            ``text_column``, ``name``, ``data_dir``, ``split``...).

    Example:
        >>> ex = load(path="flowers/")  # doctest: +SKIP
    """
    if source is None:
        if path is None:
            raise ConfigError("data: give data.path (or data.source: tfds with data.name).")
        source = infer_source(
            path, options.get("text_column", "text"), options.get("path_column", "path")
        )
    if source not in SOURCES:
        raise choice_error("data.source", source, SOURCES)
    if source != "tfds" and path is None:
        raise ConfigError(f"data.path: source={source!r} needs a path.")
    if source == "folder":
        return from_image_folder(path, task, class_names, verify, channels)
    if source == "csv":
        keep = {k: options[k] for k in ("path_column", "label_column", "root") if k in options}
        return from_csv(
            path, task, class_names=class_names, verify=verify, channels=channels, **keep
        )
    if source == "numpy":
        return from_npz(path, task, class_names)
    if source == "text":
        keep = {k: options[k] for k in ("text_column", "label_column") if k in options}
        return from_text(path, task, class_names=class_names, **keep)
    name = options.get("name")
    if not name:
        raise ConfigError("data.name: source='tfds' needs the TFDS dataset name.")
    return from_tfds(
        name,
        options.get("data_dir"),
        options.get("split", "train"),
        task,
        options.get("image_key", "image"),
        options.get("label_key", "label"),
    )
