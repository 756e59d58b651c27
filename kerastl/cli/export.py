"""``kerastl export`` and ``kerastl predict`` (no TensorFlow import until ``run_*``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from kerastl.data.files import (
    TEXT_SUFFIXES,
    fit_image_array,
    image_files,
    load_data_path,
    read_arrays,
    read_texts,
)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kerastl export``."""
    p.add_argument("model", help="a .keras file (e.g. runs/exp1/model.keras)")
    p.add_argument(
        "--output-dir",
        "--out",
        dest="out",
        metavar="DIR",
        help="output folder (default: <model folder>/export); --out is the old spelling",
    )
    p.add_argument(
        "--formats",
        default="saved_model,tflite,onnx",
        help="comma-separated, from: saved_model, tflite, onnx (default: all three)",
    )
    p.add_argument(
        "--quantize",
        default="",
        help="comma-separated extra TFLite precisions, from: float16, dynamic, int8 (the "
        "float32 file is always written)",
    )
    p.add_argument(
        "--calibration-data",
        help="int8 calibration inputs: an image folder, or a .npy/.npz file of raw inputs; "
        "for a text model a .txt (one text per line) or .csv/.tsv/.jsonl file ('text' column)",
    )
    p.add_argument(
        "--validation-data",
        help="inputs to validate on: an image folder (class subfolders give labels) or "
        ".npy/.npz; for a text model a .txt or .csv/.tsv/.jsonl file (a 'label' column gives "
        "labels)",
    )
    p.add_argument("--name", help="model name in file names and TF Serving")
    p.add_argument("--version", type=int, help="TF Serving version (default: next free)")
    p.add_argument(
        "--int8-io",
        default="float32",
        choices=["float32", "int8", "uint8"],
        help="input/output type of the int8 file (default float32)",
    )
    p.add_argument("--allow-flex", action="store_true", help="allow Flex (select TF) ops in TFLite")
    p.add_argument("--opset", type=int, help="ONNX opset (13-18, default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace existing .tflite/.onnx files")
    p.add_argument("--unsafe", action="store_true", help="load .keras files with Lambda layers")


def _items(value: str | list | None) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``.

    Example:
        >>> _items("saved_model, tflite,")
        ['saved_model', 'tflite']
    """
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value or [])


#: ``--quantize`` choices: TFLite precisions besides the float32 file, which is always written.
QUANTIZE_CHOICES = ("float16", "dynamic", "int8")


def check_export_args(args: argparse.Namespace) -> None:
    """Every ``kerastl export`` argument that can be checked without TensorFlow.

    Raises:
        ConfigError / DataError: naming the flag, its value and the valid choices.
    """
    from kerastl.errors import DataError, choice_error
    from kerastl.export import FORMATS
    from kerastl.export.formats.tflite import INT8_IO

    _check_model_path(args.model)
    fmts = _items(args.formats)
    for fmt in fmts or [""]:
        if fmt not in FORMATS:
            raise choice_error("--formats", fmt, FORMATS)
    for q in _items(args.quantize):
        if q not in QUANTIZE_CHOICES and q != "float32":  # float32: always written anyway
            raise choice_error("--quantize", q, QUANTIZE_CHOICES)
    if args.int8_io not in INT8_IO:
        raise choice_error("--int8-io", args.int8_io, INT8_IO)
    _check_format_flags(args, fmts)
    for flag, value in (
        ("--calibration-data", args.calibration_data),
        ("--validation-data", args.validation_data),
    ):
        if value is not None and not os.path.exists(value):
            raise DataError(f"{flag}: no file or folder at {value!r}.")
    _check_output_dir(args.out)


def _check_model_path(model: str) -> None:
    """The model argument: an existing ``.keras`` file (an ``.h5`` one: how to convert it)."""
    from kerastl.errors import ConfigError, DataError

    path = Path(model)
    if path.suffix in (".h5", ".hdf5"):
        raise ConfigError(
            f"model: expected a .keras file, got {model!r}, a legacy Keras HDF5 file. Convert "
            "it once in Python: keras.models.load_model('model.h5').save('model.keras') (a "
            "'.weights.h5' file holds weights only: build the model, model.load_weights(...), "
            "then model.save('model.keras')); then run kerastl export model.keras."
        )
    if path.suffix != ".keras":
        raise ConfigError(
            f"model: expected a .keras file, got {model!r}. A SavedModel folder, .tflite or "
            ".onnx file is already exported; run it with `kerastl predict`."
        )
    if not path.is_file():
        raise DataError(f"model: no file at {model!r}.")


def _check_format_flags(args: argparse.Namespace, fmts: list[str]) -> None:
    """Flags that apply to one format only, and their values (as the API checks them)."""
    from kerastl.errors import ConfigError, check_positive_int, flag_for
    from kerastl.export.formats.onnx import check_opset
    from kerastl.export.pipeline import NAME_RE

    quantize = [q for q in _items(args.quantize) if q != "float32"]
    only = {
        "--quantize": ("tflite", quantize, ",".join(quantize)),
        "--allow-flex": ("tflite", args.allow_flex, ""),
        "--opset": ("onnx", args.opset is not None, args.opset),
        "--version": ("saved_model", args.version is not None, args.version),
    }
    for flag, (fmt, given, value) in only.items():
        if given and fmt not in fmts:
            raise ConfigError(
                f"{flag} {value}".rstrip() + f" applies to {fmt} files only, and --formats "
                f"{args.formats!r} has no {fmt!r}. Add {fmt} to --formats or drop {flag}."
            )
    if "int8" in quantize and args.calibration_data is None and run_dir_of(args.model) is None:
        raise ConfigError(
            "--quantize int8 needs --calibration-data: an image folder or a .npy/.npz of a few "
            "hundred representative raw inputs, to set the integer ranges."
        )
    if args.int8_io != "float32" and "int8" not in quantize:
        raise ConfigError(
            f"--int8-io {args.int8_io} sets the input/output type of the int8 TFLite file; add "
            "int8 to --quantize or drop --int8-io."
        )
    if args.opset is not None:
        with flag_for("opset", "--opset"):
            check_opset(args.opset)
    if args.version is not None:
        check_positive_int("--version", args.version)
    if args.name is not None and not NAME_RE.match(args.name):
        raise ConfigError(
            f"--name: {args.name!r} is not usable in file names and TF Serving; use letters, "
            "digits, '_', '-' and '.' (starting with a letter or digit)."
        )


def run_export_name(model_path: Path) -> str | None:
    """The name a run's own export gave its files, for a ``model.keras`` in a run folder
    (``export.name``, else the run's ``name``, from the ``config.yaml`` beside it), so a
    re-export replaces the run's files instead of writing others beside them. ``None`` for
    another file, or a run name that files cannot take (the model's own name is used).

    Example:
        >>> run_export_name(Path("no/such/run/model.keras")) is None
        True
    """
    import yaml

    from kerastl.train.runfolder import RUN_FILES

    config = model_path.parent / RUN_FILES["config"]
    if model_path.name != RUN_FILES["model"] or not config.is_file():
        return None
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    from kerastl.export.pipeline import NAME_RE

    name = (cfg.get("export") or {}).get("name") or cfg.get("name")
    if isinstance(name, str) and NAME_RE.match(name):
        return name
    return None  # a run that never exported may have a name files cannot take


def run_dir_of(model: str | os.PathLike) -> Path | None:
    """The run folder of a run's ``model.keras`` (``config.yaml`` beside it), else ``None``.

    Example:
        >>> run_dir_of("no/such/run/model.keras") is None
        True
    """
    from kerastl.train.runfolder import RUN_FILES

    path = Path(model)
    if path.name == RUN_FILES["model"] and (path.parent / RUN_FILES["config"]).is_file():
        return path.parent
    return None


def _run_inputs(args: argparse.Namespace, model: Any, data: dict) -> Any:
    """The run's own validation (and int8 calibration) inputs for a run's ``model.keras``
    exported without ``--validation-data`` (``--calibration-data``), as its export used;
    ``None`` when not a run's model or nothing is missing. A run whose data cannot be
    loaded as it was falls back to synthetic inputs, with a warning (int8: an error)."""
    from kerastl.errors import ConfigError, KerastlError

    run_dir = run_dir_of(args.model)
    needs_cal = "int8" in _items(args.quantize) and data["--calibration-data"] is None
    if run_dir is None or (data["--validation-data"] is not None and not needs_cal):
        return None
    from kerastl.train.export_step import rerun_inputs

    try:
        inputs = rerun_inputs(run_dir, model, needs_cal)
    except (KerastlError, OSError) as exc:
        if needs_cal:
            raise ConfigError(
                f"--quantize int8 needs --calibration-data: the run's training data, which "
                f"calibrates by default, could not be loaded ({exc})."
            ) from None
        logging.getLogger("kerastl").warning(
            f"the run's data could not be loaded as it was ({exc}); checking the files on "
            "synthetic inputs"
        )
        return None
    if data["--validation-data"] is None:
        data["--validation-data"] = inputs.validation
    if needs_cal:
        data["--calibration-data"] = inputs.calibration
    return inputs


def run_naming(model_path: Path, out: Path) -> tuple[str | None, bool]:
    """``(name, replaces)`` of an export of ``model_path`` into ``out``, and say which.

    ``name`` is :func:`run_export_name` (``None``: the model's own name); ``replaces``
    whether the files go to the run's own export folder, where they replace the run's
    files of these formats (as ``--overwrite``). Elsewhere (``--output-dir``) they only
    take the run's name: the run's folder is not touched, and files already in ``out``
    are replaced only with ``--overwrite``.

    Example:
        >>> run_naming(Path("no/such/run/model.keras"), Path("out"))
        (None, False)
    """
    from kerastl.train.runfolder import RUN_FILES

    name = run_export_name(model_path)
    if name is None:
        return None, False
    config = model_path.parent / RUN_FILES["config"]
    run_out = model_path.parent / RUN_FILES["export"]
    replaces = out.resolve() == run_out.resolve()
    where = (
        f"replacing the run's files of these formats in {str(run_out)!r}; --name writes "
        "others beside them"
        if replaces
        else f"in {str(out)!r}, where files of that name are replaced only with --overwrite "
        f"(the run's own export folder {str(run_out)!r} is not touched); --name names them "
        "otherwise"
    )
    logging.getLogger("kerastl").info(
        f"naming the files {name!r} as the run's export did ({config}), {where}"
    )
    return name, replaces


def _check_output_dir(out: str | None) -> None:
    """``--output-dir`` must be (or be creatable as) a folder: no file on its path."""
    from kerastl.errors import ConfigError

    if not out:
        return
    path = Path(out)
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"is inside {str(part)!r}, a file"
                raise ConfigError(
                    f"--output-dir: {out!r} {where}; pass a folder (created if missing)."
                )
            return


def _load_data(path: str | None, flag: str, class_names: Any) -> Any:
    """:func:`load_data_path`, with numpy's read errors as a DataError naming ``flag``."""
    from kerastl.errors import DataError, KerastlError

    try:
        return load_data_path(path, flag, class_names)
    except KerastlError:
        raise
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(
            f"{flag}: {path!r} could not be read as raw inputs: {exc}. Give an image folder or "
            "a numeric .npy/.npz (saved with numpy.save, no pickled objects)."
        ) from None


def run_export(args: argparse.Namespace) -> int:
    """Load a .keras model, export it, print the summary."""
    check_export_args(args)  # before TensorFlow is imported
    flags = {"--calibration-data": args.calibration_data, "--validation-data": args.validation_data}
    # .npy/.npz arrays need no class names: read (and refused) before TensorFlow is imported
    # (text files are read once the model's class names are known, for their labels)
    data = {
        f: _load_data(v, f, None)
        for f, v in flags.items()
        if v and not Path(v).is_dir() and Path(v).suffix.lower() not in TEXT_SUFFIXES
    }
    from kerastl.errors import ConfigError
    from kerastl.export import export
    from kerastl.export._trace import find_metadata, load_keras
    from kerastl.export.pipeline import NAME_RE
    from kerastl.export.report import MD_NAME, human_size

    model_path = Path(args.model)
    items = _items
    fmts = items(args.formats)
    model = load_keras(model_path, safe_mode=not args.unsafe, unsafe_hint="rerun with --unsafe")
    out = Path(args.out) if args.out else model_path.parent / "export"
    # a run's model exported into the run's folder: its own files replaced, as --overwrite
    run_name, from_run = run_naming(model_path, out) if args.name is None else (None, False)
    if run_name is not None:
        args.name = run_name
    if args.name is None and not NAME_RE.match(model.name):
        raise ConfigError(
            f"--name: the model's own name {model.name!r} is not usable in file names and TF "
            "Serving; pass --name with letters, digits, '_', '-' and '.' (e.g. --name "
            f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model.name).strip('_.-') or 'model'})."
        )
    class_names = find_metadata(model).get("class_names")
    for flag, value in flags.items():  # image folders: class subfolders -> labels
        if flag not in data:
            data[flag] = _load_data(value, flag, class_names)
    from_run_data = _run_inputs(args, model, data)
    run_validates = from_run_data is not None and args.validation_data is None
    report = export(
        model,
        out,
        formats=fmts,
        quantize=items(args.quantize) or None,
        calibration_data=data["--calibration-data"],
        validation_data=data["--validation-data"],
        name=args.name,
        version=args.version,
        int8_io=args.int8_io,
        allow_flex=args.allow_flex,
        opset=args.opset,
        overwrite=args.overwrite or from_run,
    )
    if from_run_data is not None:
        _record_run_inputs(report, out, from_run_data, run_validates, args)
    for a in report["artifacts"]:
        parity = a.get("parity") or {}
        agree = parity.get("agreement")
        print(
            f"{'ok' if a['passed'] else 'FAILED':6} {a['path']:60} {human_size(a.get('size_bytes')):>9}"
            f"  rel_err {parity.get('max_rel_err', float('nan')):.2g}"
            + (f"  agreement {agree:.3f}" if agree is not None else "")
            + f"  {a.get('latency_ms', float('nan')):.2f} ms"
        )
    v = report.get("validation") or {}
    if run_validates:
        print(f"checked on {v['samples']} of the run's {from_run_data.examples}")
    elif v.get("source", "validation_data") != "validation_data":  # made-up inputs above
        print(f"checked on {v['samples']} synthetic inputs: pass --validation-data DATA to "
              "check the files on real ones (with labels: the accuracy each file keeps)")  # fmt: skip
    print(f"report: {out / MD_NAME}")
    return 0


def _record_run_inputs(report: dict, out: Path, inputs: Any, validates: bool, args) -> None:
    """Name the run's examples the files were validated / calibrated on, in the report."""
    from kerastl.train.export_step import SAMPLE, record_validation_source

    if args.calibration_data is None and "int8" in _items(args.quantize):
        report["calibration"] = inputs.calibration_info
    source = f"the run's {inputs.examples}, {SAMPLE}" if validates else None
    record_validation_source(report, out, source)


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kerastl predict``."""
    p.add_argument(
        "artifact",
        help="SavedModel folder, .tflite, .onnx or .keras; or a registry name with pretrained "
        "weights (efficientnet_lite0): its ImageNet classifier names the class of a photo",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="image models: image files, folders of images (searched recursively), or one "
        ".npy of raw inputs. Text models: each argument is a text, except an existing .txt "
        "file (one text per line) or .csv/.tsv/.jsonl file (its 'text' column); a missing "
        "file with one of these suffixes is an error, '' is an empty text. A file's rows "
        "with no text (blank, null, no 'text') are skipped, as training skips them, and "
        "named on stderr; a value that is not a string (a JSON number or list) is an error. "
        "Each row says where its input came from (file:line or argument N)",
    )
    p.add_argument("--top-k", type=int, default=3, help="classes to show per input (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per runtime call")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the runtime, for .tflite and .onnx files (default: every core)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="multilabel models: the labels printed are those with probability >= this "
        "(default 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines")


def _artifact_or_pretrained(name: str, threads: int | None = None) -> Any:
    """An exported file or folder; else a registry name: its pretrained ImageNet classifier."""
    from kerastl.errors import ConfigError, flag_for
    from kerastl.export.artifact import KerasArtifact, load_artifact

    if os.path.exists(name) or os.sep in name or "." in os.path.basename(name):
        with flag_for("num_threads", "--threads"), _cli_format_hint():
            return load_artifact(name, num_threads=threads)
    if threads is not None:
        raise ConfigError(
            f"--threads: {name!r} runs in Keras, whose threads TensorFlow sets once per process; "
            "--threads applies to .tflite and .onnx files."
        )
    import kerastl

    try:
        model = kerastl.build(name, weights="imagenet", pretrained_head=True, compile=False)
    except ConfigError as exc:  # name the argument the user gave, not build()'s
        text = str(exc).replace(
            "(argument 'name')", "(argument 'artifact': no such file, so read as a model name)"
        )
        raise type(exc)(text) from None
    return KerasArtifact.from_model(model, f"{name} (pretrained ImageNet classifier)")


@contextlib.contextmanager
def _cli_format_hint() -> Any:
    """load_artifact's "cannot tell the format" error, told as the command line has it:
    ``kerastl predict`` has no ``format=``, so the file needs its suffix."""
    from kerastl.errors import ConfigError

    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        if "cannot tell the format" not in text:
            raise
        text = text.replace(
            " (or pass format=...).",
            "; rename the file to its format's suffix, "
            "or load it in Python with kerastl.load_artifact(path, format=...).",
        )
        raise ConfigError(text.replace("path: ", "ARTIFACT: ", 1)) from None


def expand_inputs(inputs: list[str]) -> tuple[list[str], set[str]]:
    """Input paths with every folder replaced by the images under it (sorted).

    Returns the paths and those of them found in folders (an unreadable one is skipped
    with a warning; a file named on the command line must be readable).

    Raises:
        DataError: a folder holds no image, or a path does not exist.

    Example:
        >>> expand_inputs(["a.jpg"])  # files are kept as given (checked when read)
        (['a.jpg'], set())
    """
    from kerastl.errors import DataError

    out: list[str] = []
    found: set[str] = set()
    for n, item in enumerate(inputs, 1):
        if item == "":  # Path("") is the current folder: not what an empty argument means
            raise DataError(
                f"inputs: argument {n} is empty (''); give image files or folders of images."
            )
        if _path_kind(item) == "folder":
            files = [str(f) for f in image_files(Path(item), "inputs")]
            out += files
            found.update(files)
        else:
            out.append(item)
    return out, found


def _path_kind(item: str) -> str | None:
    """``"file"`` or ``"folder"`` if the argument ``item`` names one, else None.

    Only an argument that could be a path is probed: not ``""`` (the current folder
    to ``Path``) nor one with a line break or NUL. A probe the system refuses (a name
    over 255 bytes: ``File name too long``, a folder it may not read) counts as no path,
    so a long text given as an argument stays a text.

    Example:
        >>> _path_kind("a" * 400) is None
        True
    """
    if not item or any(c in item for c in "\n\r\0"):
        return None
    path = Path(item)
    try:
        if path.is_file():
            return "file"
        return "folder" if path.is_dir() else None
    except (OSError, ValueError):
        return None


def text_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """The texts of a text model's arguments, and where each came from.

    An existing ``.txt`` file gives one text per line and a ``.csv``/``.tsv``/``.jsonl``
    file the texts of its ``text`` column (``"file:line"``); any other argument is a
    text itself (``"argument N"``), ``""`` an empty one.

    Raises:
        DataError: a missing file with a text file's suffix, a folder, or another file.

    Example:
        >>> text_inputs(["a good film", ""])
        (['a good film', ''], ['argument 1', 'argument 2'])
    """
    from kerastl.errors import DataError

    texts: list[str] = []
    where: list[str] = []
    takes = (
        "a text model takes texts, .txt files (one text per line) or .csv/.tsv/.jsonl files "
        "with a 'text' column"
    )
    for n, item in enumerate(inputs, 1):
        path, kind = Path(item), _path_kind(item)
        if kind == "file" and path.suffix.lower() in TEXT_SUFFIXES:
            for place, text in read_texts(path, "inputs"):
                where.append(place)
                texts.append(text)
            continue
        if item != "" and path.suffix.lower() in TEXT_SUFFIXES:
            raise DataError(f"inputs: no file at {item!r} (argument {n}); {takes}.")
        if kind is not None:
            what = "a folder" if kind == "folder" else "a file but not a text file"
            raise DataError(f"inputs: {item!r} (argument {n}) is {what}; {takes}.")
        texts.append(item)
        where.append(f"argument {n}")
    return texts, where


def _is_text(artifact: Any) -> bool:
    """Whether ``artifact`` takes raw strings (a text model)."""
    meta = artifact.metadata
    return meta.get("modality") == "text" or (meta.get("input") or {}).get("name") == "text"


def _read_npy(path: str) -> Any:
    """Raw inputs saved with ``numpy.save`` (:func:`kerastl.data.files.read_arrays`)."""
    from kerastl.errors import DataError

    data = read_arrays(path, "inputs")
    if isinstance(data, dict):
        raise DataError(
            f"inputs: {path!r} holds a .npz archive ({sorted(data)}), not a .npy array of raw "
            "inputs; save the inputs with numpy.save."
        )
    return data


def _fit_images(artifact: Any, x: Any, path: str) -> Any:
    """A .npy array for an image model as its files are read (grey -> RGB, one image)."""
    spec = artifact.metadata.get("input") or {}
    shape = list(spec.get("shape") or [])
    modality = spec.get("name") or artifact.metadata.get("modality") or "image"
    if modality != "image" or len(shape) != 3 or shape[-1] not in (1, 3):
        return x
    return fit_image_array(x, shape, "inputs", repr(path))


def _predict_readable(artifact: Any, inputs: list[str], found: set[str], batch_size: int):
    """Predict the readable files one by one; skip unreadable ones found in folders."""
    from kerastl.errors import DataError

    parts, kept, skipped, first = [], [], [], None
    for path in inputs:
        try:
            parts.append(artifact.predict([path], batch_size=batch_size))
            kept.append(path)
        except DataError as exc:
            if path not in found:
                raise
            skipped.append(path)
            first = first or exc
    if not kept:  # nothing readable: the first file's own reason
        raise first
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        logging.getLogger("kerastl").warning(
            f"skipped {len(skipped)} unreadable image file(s): {', '.join(skipped[:5])}{more}"
        )
    return {k: _concat([p[k] for p in parts]) for k in parts[0]}, kept


def _concat(values: list) -> Any:
    import numpy as np

    return (
        sum((list(v) for v in values), [])
        if isinstance(values[0], list)
        else np.concatenate(values)
    )


def run_predict(args: argparse.Namespace) -> int:
    """Run an artifact on inputs and print the predictions."""
    from kerastl.errors import ConfigError

    for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{flag}: expected >= 1, got {value}.")
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold: expected a probability in [0, 1], got {args.threshold}.")
    npy = len(args.inputs) == 1 and args.inputs[0].endswith(".npy")
    raw = _read_npy(args.inputs[0]) if npy else None  # before the (slow) artifact load
    artifact = _artifact_or_pretrained(args.artifact, args.threads)
    out, ids, texts = _predict_inputs(artifact, args, raw)
    for row in _rows(artifact.metadata, out, ids, texts, args):
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(_row_line(row))
    sys.stdout.flush()
    return 0


def _predict_inputs(artifact: Any, args: argparse.Namespace, raw: Any) -> tuple:
    """``(outputs, input ids, texts or None)``: the inputs read as the artifact's modality
    takes them (a text model: :func:`text_inputs`; else images or the ``.npy`` array)."""
    from kerastl.errors import DataError

    found: set[str] = set()
    texts = None
    if raw is not None:
        inputs = _fit_images(artifact, raw, args.inputs[0])
        ids = [f"{args.inputs[0]}[{i}]" for i in range(len(inputs))]
    elif _is_text(artifact):
        inputs, ids = text_inputs(args.inputs)
        texts = inputs
    else:
        inputs, found = expand_inputs(args.inputs)
        ids = list(inputs)
    try:
        out = artifact.predict(inputs, batch_size=args.batch_size)
    except DataError:
        if not found:
            raise
        out, ids = _predict_readable(artifact, inputs, found, args.batch_size)
    return out, ids, texts


def _rows(meta: dict, out: dict, ids: list[str], texts: Any, args: argparse.Namespace) -> list:
    """One dict per input: ``input`` (where it came from), ``text`` (text models), the
    prediction (``top`` classes, a binary ``class``, or the main output's values)."""
    import numpy as np

    task, names = meta.get("task"), meta.get("class_names")
    main = meta.get("output") or next(k for k in out if k not in ("class_id", "labels"))
    values = np.asarray(out[main])
    rows = []
    for i, ident in enumerate(ids):
        row: dict[str, Any] = {"input": ident}
        if texts is not None:
            row["text"] = texts[i]
        if task == "classification":
            order = np.argsort(-values[i])[: args.top_k]
            row["top"] = [
                {"class": names[j] if names else int(j), "probability": float(values[i, j])}
                for j in order
            ]
        elif task == "binary":
            row.update(_binary(float(values[i, 0]), names, out, i))
        elif task == "multilabel" and "probabilities" in out:
            scores = np.ravel(out["probabilities"][i])
            labels = names or [str(j) for j in range(len(scores))]  # no names: class ids
            probs = {n: float(p) for n, p in zip(labels, scores)}
            row["labels"] = [n for n, p in probs.items() if p >= args.threshold]
            row["probabilities"] = probs
        else:
            row[main] = [round(float(v), 6) for v in np.ravel(values[i])]
        rows.append(row)
    return rows


def _binary(positive: float, names: Any, out: dict, i: int) -> dict:
    """A binary prediction: the class, the probability of that class (the output is the
    positive class's, ``names[1]``), and both classes' probabilities."""
    if "labels" in out:
        label = out["labels"][i]
        index = list(names).index(label) if names and label in names else int(positive > 0.5)
    else:
        index = int(out["class_id"][i]) if "class_id" in out else int(positive > 0.5)
        label = names[index] if names else index
    keys = list(names) if names and len(names) == 2 else [0, 1]
    probs = {str(keys[0]): 1.0 - positive, str(keys[1]): positive}
    return {
        "class": label,
        "probability": positive if index == 1 else 1.0 - positive,
        "probabilities": probs,
    }


def _row_line(row: dict) -> str:
    """A row as one line of text: where the input came from (and its text), the prediction."""
    head = row["input"]
    if "text" in row:
        text = row["text"] if len(row["text"]) <= 60 else row["text"][:57] + "..."
        head += "  " + json.dumps(text, ensure_ascii=False)
    if "top" in row:
        return head + "  " + "  ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
    if "class" in row:
        return f"{head}  {row['class']} (p={row['probability']:.3f})"
    if "labels" in row:  # multilabel: the labels over the threshold, then every class
        probs = "  ".join(f"{n}={p:.3f}" for n, p in row["probabilities"].items())
        return f"{head}  labels: {', '.join(row['labels']) or '(none)'}  |  {probs}"
    main = next(k for k in row if k not in ("input", "text"))
    more = " ..." if len(row[main]) > 8 else ""
    return f"{head}  {main} {row[main][:8]}{more}"
