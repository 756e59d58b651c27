"""The export pipeline: check -> stage -> write -> load back -> validate -> publish.

:func:`export` runs every selected :class:`~kerastl.export.formats.base.Format`
(looked up by name in :data:`kerastl.export.formats.FORMATS`) over one prepared
model: each artifact is written into a hidden staging folder inside ``out_dir``,
loaded back in its own runtime, compared with the Keras model, and only when every
artifact passed are they all renamed into place; a failure publishes nothing. A
modality that splits a model into parts (text, audio: see
:mod:`kerastl.export.modalities`) runs this pipeline once per part into one staging
folder and publishes the parts together.

Layout of ``out_dir``::

    saved_model/<name>/<version>/   TF Serving: serving_default, serving_bytes,
                                    assets/labels.txt, assets.extra/warm-up + REST samples
    <name>.tflite, <name>_<q>.tflite
    <name>.onnx
    export_report.json, export_report.md
    export_report.failed.json/.md   only after a failed export (the live report stays)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerastl.errors import (
    ConfigError,
    DataError,
    ExportError,
    ValidationError,
    check_positive_int,
    choice_error,
)
from kerastl.export import validate
from kerastl.export.formats import FORMATS as FORMAT_TABLE
from kerastl.export.formats import Format, Job, NotWritten, Options, Staged
from kerastl.export.formats.base import (
    Reference,
    median_ms,
    objects_alive_now_uncollected,
    release_memory,
    remove_stale,
    stale_files,
)
from kerastl.export.formats.tflite import QUANTIZATIONS
from kerastl.export.split import export_split

if TYPE_CHECKING:
    from kerastl.export._trace import Prepared

log = logging.getLogger("kerastl.export")

#: The closed list of export formats.
FORMATS = tuple(FORMAT_TABLE)
#: TFLite precisions accepted by ``quantize`` (float32 is always written).
QUANTIZE = QUANTIZATIONS

#: Names usable in file names and as a TF Serving model name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Batch-1 latency in the report (Keras' and each file's): timed calls stop after this
#: many seconds once 3 were made, validation's batch-1 calls counted, so a large model's
#: figure is the median of the calls validation made anyway (ConvNeXt-B: 3 of 0.17 s)
#: and a small one's of up to ``latency_runs`` (bench/ times files for longer).
LATENCY_BUDGET_S = 0.25


def export(
    model: Any,
    out_dir: str | os.PathLike,
    formats: Any = FORMATS,
    quantize: Any = None,
    calibration_data: Any = None,
    validation_data: Any = None,
    name: str | None = None,
    version: int | None = None,
    *,
    int8_io: str = "float32",
    allow_flex: bool = False,
    opset: int | None = None,
    overwrite: bool = False,
    tolerances: dict[str, dict[str, float]] | None = None,
    max_validation_samples: int = 64,
    max_calibration_samples: int = 500,
    latency_runs: int = 10,
) -> dict[str, Any]:
    """Export ``model`` to SavedModel / TFLite / ONNX, validate each file, write a report.

    Every artifact is traced in inference mode (augmentation and dropout off),
    takes raw inputs named after the modality (``image``: float32 0-255 NHWC,
    dynamic batch), returns named outputs (``probabilities`` / ``logits`` /
    ``predictions`` / ``embedding``, ``class_id`` for classifiers), carries
    kerastl's metadata, and is loaded back in its runtime and compared with the
    Keras model at two batch sizes before it is published (``out_dir`` layout:
    :mod:`kerastl.export.pipeline`).

    Args:
        model: A ``keras.Model`` (from :func:`kerastl.build` or plain Keras) or a
            ``.keras`` path.
        out_dir: Output folder (created if missing).
        formats: Subset of :data:`FORMATS` (list or comma-separated string).
        quantize: Extra TFLite precisions from :data:`QUANTIZE`: ``float16``,
            ``dynamic`` (int8 weights) and ``int8`` (full integer, calibrated).
        calibration_data: Raw inputs for ``int8`` calibration: array, ``(x, y)``,
            ``tf.data.Dataset``, image file paths, or the path of an image folder /
            ``.npy`` / ``.npz`` (a few hundred samples; fewer warns).
        validation_data: Inputs (and optionally labels) to compare artifacts with
            Keras on, in the same forms (an image folder with one subfolder per class
            gives labels); labels add the metric delta. Default: synthetic samples.
        name: Model name in file names and TF Serving (default: the model's name).
        version: TF Serving version; ``None`` = highest present + 1. An existing
            version is an error.
        int8_io: Input/output type of ``int8`` files: ``float32``, ``int8`` or ``uint8``.
        allow_flex: Allow Flex (select TF) ops in TFLite files.
        opset: ONNX opset (13..18, default 17).
        overwrite: Replace existing ``.tflite`` / ``.onnx`` files of the same name.
        tolerances: Overrides of :data:`kerastl.export.validate.TOLERANCES`, e.g.
            ``{"tflite/int8": {"min_agreement": 0.95}}``.
        max_validation_samples: Validation inputs used at most.
        max_calibration_samples: Calibration inputs used at most.
        latency_runs: Timed runs per artifact at most (median reported; they stop after
            :data:`LATENCY_BUDGET_S` once 3 were made, validation's batch-1 calls counted).

    Returns:
        The report (also written as ``export_report.json`` / ``.md``): model, validation
        setup, and per artifact its path, size, parity, agreement, latency, non-builtin ops.

    Raises:
        ConfigError: bad argument (unknown format, file as ``out_dir``, existing
            version...). Nothing is written.
        DataError: calibration/validation data do not fit the model input.
        MissingDependencyError: a format's package is missing (says what to install).
        ExportError: a conversion failed. ValidationError: an artifact does not
            match Keras. Either way nothing is published and ``export_report.failed.md``
            says why. A write error (full disk, permissions) aborts the whole export.

    Example:
        >>> import kerastl
        >>> model = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3))
        >>> report = kerastl.export(model, "out", formats=["tflite", "onnx"])  # doctest: +SKIP
        >>> [a["path"] for a in report["artifacts"]]  # doctest: +SKIP
        ['mobilenet_v3_small_classification.tflite', 'mobilenet_v3_small_classification.onnx']
    """
    # Every argument after ``formats``, by name (Options has exactly these fields).
    options = Options(**{k: v for k, v in locals().items() if k in Options.__dataclass_fields__})
    return run(model, out_dir, formats, options)


def run(model: Any, out_dir: str | os.PathLike, formats: Any, options: Options) -> dict[str, Any]:
    """:func:`export` with its options gathered: check them, prepare the model, export.

    A model whose modality splits it (text, audio) goes through
    :func:`kerastl.export.split.export_split`, which runs this once per part.
    """
    from kerastl.export._trace import prepare

    formats = _as_list(formats, "formats")
    options = dataclasses.replace(options, quantize=_as_list(options.quantize, "quantize"))
    selected = _check(formats, options, Path(out_dir))
    with objects_alive_now_uncollected():  # release_memory() then skips the user's objects
        prepared = prepare(model)
        has_data = options.validation_data is not None
        prepared.modality.check_input(prepared.original.name, formats, has_data)
        if prepared.modality.splits(formats):  # e.g. text: TFLite/ONNX from the token-id part
            return export_split(prepared, out_dir, formats, options, run)
        return _export_one(prepared, Path(out_dir), formats, selected, options)


#: Staging folders are named ``<prefix><host>-<pid>-<random>`` and hold :data:`LOCK_NAME`.
STAGING_PREFIX = ".kerastl-staging-"
#: Locked (``flock``) by the export that owns the staging folder, for as long as it runs.
LOCK_NAME = ".owner.lock"
#: A lock file younger than this is never swept: its export may be between creating and locking it.
SWEEP_AFTER_S = 5.0


def _hold(staging: Path) -> Any:
    """Lock the staging folder's lock file for this export; the open file (None: no flock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: folders of killed exports are not swept
        return None
    handle = open(staging / LOCK_NAME, "w")  # noqa: SIM115 - held until the export ends
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def sweep_staging(out: Path) -> list[str]:
    """Remove staging folders in ``out`` left by killed exports; notes saying so.

    A folder is swept when nobody holds its lock file (the kernel drops a killed process's
    ``flock``) and the lock file is older than :data:`SWEEP_AFTER_S`: folders of running
    exports, on this machine or another one sharing the disk, stay; so do folders without
    a lock file (named by an older kerastl).

    Example:
        >>> import os, tempfile, time
        >>> out = Path(tempfile.mkdtemp()); old = out / f"{STAGING_PREFIX}host-1-ab12cd34"
        >>> old.mkdir(); (old / LOCK_NAME).touch()
        >>> os.utime(old / LOCK_NAME, (time.time() - 3600,) * 2)
        >>> sweep_staging(out)
        ['removed a staging folder left by an export that was killed (1 folder(s))']
    """
    try:
        import fcntl
    except ImportError:
        return []
    gone = []
    for folder in Path(out).glob(f"{STAGING_PREFIX}*"):
        lock = folder / LOCK_NAME
        try:
            if time.time() - lock.stat().st_mtime < SWEEP_AFTER_S:
                continue
            with open(lock, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while held
                shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
        except OSError:  # no lock file, or its export is running
            continue
    if not gone:
        return []
    note = f"removed a staging folder left by an export that was killed ({len(gone)} folder(s))"
    log.info("  %s", note)
    return [note]


def _as_list(value: Any, argument: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if isinstance(value, (list, tuple, set)):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{argument}: expected names (strings), got {value!r}.")
        return list(dict.fromkeys(value))
    raise ConfigError(
        f"{argument}: expected a list of names, got {type(value).__name__} {value!r}."
    )


def _check(formats: list[str], options: Options, out: Path) -> list[Format]:
    """Every check that needs no model; returns the selected formats in writing order."""
    if not formats:
        raise ConfigError(f"formats: empty; choose from {list(FORMATS)}.")
    for f in formats:
        if f not in FORMAT_TABLE:
            raise choice_error("formats", f, FORMATS)
    for arg in ("overwrite", "allow_flex"):  # "no" would be true
        value = getattr(options, arg)
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{arg}: expected True or False, got {value!r}.")
    for fmt in FORMAT_TABLE.values():
        fmt.check_options(options, formats)
    validate.check_overrides(options.tolerances)
    for arg in ("max_validation_samples", "max_calibration_samples", "latency_runs"):
        check_positive_int(arg, getattr(options, arg))
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"out_dir: {str(out)!r} is a file; pass a folder (it is created if missing)."
        )
    inside = next((p for p in out.absolute().parents if p.exists() and not p.is_dir()), None)
    if inside is not None:
        raise ConfigError(f"out_dir: {str(out)!r} is inside {str(inside)!r}, which is a file.")
    selected = [fmt for fmt in FORMAT_TABLE.values() if fmt.name in formats]
    brackets = sorted(set("[]") & set(str(out.absolute())))
    if brackets and any(fmt.reads_saved_model for fmt in selected):
        raise ConfigError(
            f"out_dir: {str(out)!r} contains {brackets}; TensorFlow reads SavedModel "
            "variables through a glob pattern, where brackets are special, so the SavedModel "
            "(and the TFLite files converted from it) could not be loaded back. Choose a "
            "folder without '[' or ']'."
        )
    for fmt in selected:
        fmt.require()
    return selected


def _export_one(
    prepared: Prepared, out: Path, formats: list[str], selected: list[Format], options: Options
) -> dict[str, Any]:
    """Export one model (one part): plan, read data, stage, validate, publish, report."""
    for f in formats:
        if f not in prepared.modality.formats:
            raise ConfigError(
                f"formats: {f!r} is not available for {prepared.modality.name} models; "
                f"valid: {list(prepared.modality.formats)}."
            )
    name = options.name or prepared.original.name
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"name: {name!r} is not usable in file names and TF Serving; use letters, digits, "
            "'_', '-' and '.' (pass name=... to choose one)."
        )
    targets = _plan(out, name, selected, options, prepared.meta)
    x_val, y_val, source, x_cal, notes = _inputs(prepared, options)
    for fmt in selected:
        for note in fmt.notes(name, options, prepared.meta):
            log.info("  skipped %s", note)
            notes.append(note)
    # Keras' outputs on the inputs after the batch-1 ones are computed in a thread while
    # the first artifact is written, when its write leaves the CPU free (SavedModel)
    overlap = selected[0].overlaps_reference and not prepared.mixed_precision
    with ThreadPoolExecutor(1, thread_name_prefix="kerastl-reference") as pool:
        keras_ref = _reference(prepared, x_val, options.latency_runs, pool if overlap else None)
        notes = _reference_notes(prepared, x_val, y_val, keras_ref, notes)
        release_memory()
        notes += sweep_staging(out)
        staging = (
            out / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        job = Job(prepared, name, out, staging, options, targets, x_val, y_val, x_cal, keras_ref)
        records, published = _stage(job, selected)
    left_out = [r for r in records if "not_written" in r]
    notes += [f"not written: {r['path']}: {r['not_written']}" for r in left_out]
    if published:  # the earlier export's optional files this one did not write
        written = {out / r["path"] for r in records if "not_written" not in r}
        for note in remove_stale(stale_files(out, name, selected, written)):
            notes.append(note)
            log.info("  %s", note)
    records = [r for r in records if "not_written" not in r]
    report = _report(job, formats, source, notes, keras_ref.latency_ms, records, published)
    from kerastl.export import report as report_mod

    _, md_path = report_mod.write(report, out)
    if not published:
        failed = [r for r in records if not r["passed"]]
        lines = "; ".join(f"{r['path']}: {' / '.join(r['failures'])}" for r in failed)
        cls = ValidationError if any(r.get("parity") for r in failed) else ExportError
        raise cls(f"Export of {name!r} failed, nothing was published ({lines}). See {md_path}.")
    return report


def _plan(
    out: Path, name: str, selected: list[Format], options: Options, meta: dict[str, Any]
) -> dict[tuple[str, str], Path]:
    """(format, precision) -> published path; refuses clashes before anything is written."""
    targets: dict[tuple[str, str], Path] = {}
    for fmt in selected:
        paths = fmt.targets(out, name, options, meta)
        targets.update({(fmt.name, precision): path for precision, path in paths.items()})
    if options.version is not None and not any(fmt.versioned for fmt in selected):
        raise ConfigError(
            f"version={options.version!r} applies to saved_model only; add it to formats."
        )
    clash = [
        str(p) for (f, _), p in targets.items() if not FORMAT_TABLE[f].versioned and p.exists()
    ]
    clash += [str(p) for p in stale_files(out, name, selected, set(targets.values()))]
    if clash and not options.overwrite:
        raise ConfigError(
            f"out_dir: {clash} already exist; pass overwrite=True (CLI --overwrite) to replace "
            "them once the new files pass validation, or choose another out_dir or name."
        )
    return targets


def _inputs(prepared: Prepared, options: Options) -> tuple:
    """Validation (or synthetic) inputs and labels, their source, calibration inputs, notes.

    A path (image folder with optional class subfolders, .npy, .npz) is read as the CLI
    reads it.
    """
    from kerastl.data.files import load_data_path
    from kerastl.export.formats import tflite

    modality, labels = prepared.modality, prepared.meta.get("class_names")
    validation_data, calibration_data = options.validation_data, options.calibration_data
    if isinstance(validation_data, (str, os.PathLike)):
        validation_data = load_data_path(validation_data, "validation_data", labels)
    if isinstance(calibration_data, (str, os.PathLike)):
        calibration_data = load_data_path(calibration_data, "calibration_data", labels)
    notes = []
    if validation_data is not None:
        limit = options.max_validation_samples
        x_val, y_val = modality.coerce(validation_data, "validation_data", limit)
        _check_finite(x_val, "validation_data")
        source = "validation_data"
        if len(x_val) == 1:  # batch 1 alone would not show that the batch axis is dynamic
            x_val = np.concatenate([x_val, x_val])
            y_val = None if y_val is None else np.concatenate([y_val, y_val])
            notes.append("one validation example: repeated to also validate batch size 2")
    else:
        x_val, y_val = modality.sample_inputs(16), None
        source = "synthetic sample inputs (pass validation_data for real ones)"
    x_cal = None
    if "int8" in options.quantize:
        limit = options.max_calibration_samples
        x_cal, _ = modality.coerce(calibration_data, "calibration_data", limit)
        _check_finite(x_cal, "calibration_data")
        tflite.check_calibration(len(x_cal))
    return x_val, y_val, source, x_cal, notes


def _check_finite(x: np.ndarray, argument: str) -> None:
    if np.asarray(x).dtype.kind == "f":
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise DataError(
                f"{argument}: {bad} values are NaN or infinite; give finite raw inputs "
                "(0-255 pixels for image models)."
            )


def _reference(
    prepared: Prepared, x_val: np.ndarray, latency_runs: int, pool: Executor | None = None
) -> Reference:
    """The Keras outputs artifacts are compared with, and Keras' batch-1 latency in ms.

    The first examples (as many as validation runs at batch size 1) go through the traced
    function one by one; those calls after the first are the latency's first timed runs,
    taken before anything else runs. The other examples follow in batches, in ``pool``
    when one is given (the caller writes meanwhile: a ConvNeXt-B SavedModel export took
    10.3 s instead of 11.35 in one A/B run).
    """
    fn = prepared.tf_function()
    n1 = min(len(x_val), validate.BATCH1_SAMPLES)
    seconds: list[float] = []
    head = validate.run_in_batches(fn, x_val[:n1], 1, seconds)
    # timed like the calls above: until the outputs are read back as numpy
    latency = median_ms(
        lambda: validate.run_in_batches(fn, x_val[:1], 1),
        latency_runs,
        done=seconds[1:],
        budget_s=LATENCY_BUDGET_S,
    )
    tail: Any = None
    if len(x_val) > n1:
        rest = x_val[n1:]
        tail = pool.submit(prepared.predict, rest) if pool else prepared.predict(rest)
    return Reference(head, len(x_val), latency, tail)


def _reference_notes(
    prepared: Prepared, x_val: np.ndarray, y_val: Any, keras_ref: Reference, extra: list[str]
) -> list[str]:
    """Check labels against the reference; the report's notes (mixed precision: its drift)."""
    main = prepared.output_names[0]
    if y_val is not None:  # against the outputs' shape: the labels are checked before writing
        shape = np.empty(keras_ref.shape(main), dtype=np.bool_)
        validate.check_labels(shape, y_val, prepared.task, "validation_data")
    notes = list(prepared.notes) + extra
    if y_val is not None and prepared.task is None:
        line = (
            "validation labels not scored: the model's task is unknown (a model not built by "
            "kerastl), so no metric or accuracy-drop check applies; build it with kerastl for one"
        )
        logging.getLogger("kerastl").warning(line)
        notes.append(line)
    if prepared.mixed_precision:
        orig = prepared.original.predict(x_val, verbose=0)
        orig = orig[0] if isinstance(orig, (list, tuple)) else orig
        line = (
            f"float32 graph vs the original mixed-precision Keras model: rel_err "
            f"{validate.rel_err(keras_ref.outputs()[main], np.asarray(orig, np.float32)):.3g}"
        )
        if prepared.task in ("classification", "binary", "multilabel"):
            agree = np.mean(
                validate.top1(keras_ref.outputs()[main], prepared.task)
                == validate.top1(orig, prepared.task)
            )
            line += f", top-1 agreement {agree:.3f}"
        notes.append(line)
    return notes


def _stage(job: Job, selected: list[Format]) -> tuple[list[dict[str, Any]], bool]:
    """Write and validate every artifact in staging; publish them all if all passed."""
    job.out.mkdir(parents=True, exist_ok=True)
    job.staging.mkdir()
    owner = _hold(job.staging)
    records: list[dict[str, Any]] = []
    staged: list[tuple[Format, Staged]] = []
    try:
        for fmt in selected:
            for item in fmt.artifacts(job):  # code between items (TFLite's source) may raise
                records.append(_run_one(fmt, item, job))
                staged.append((fmt, item))
        if not all(r["passed"] for r in records):
            return records, False
        auto = job.options.version is None
        for (fmt, item), record in zip(staged, records):
            if "not_written" not in record:
                key = (fmt.name, item.precision)
                job.targets[key] = publish(fmt, item.path, job.targets[key], auto)
                record["path"] = str(job.targets[key].relative_to(job.out))
        return records, True
    except Exception as exc:  # full disk, permissions, ...: nothing half-written is published
        # TensorFlow reports a full disk while saving variables as ResourceExhaustedError.
        if not isinstance(exc, OSError) and "No space left on device" not in str(exc):
            raise
        raise ExportError(
            f"export to {str(job.out)!r} failed while writing: {exc}. Nothing was published "
            "and the staging folder was removed; earlier versions are untouched."
        ) from exc
    finally:
        shutil.rmtree(job.staging, ignore_errors=True)
        if owner is not None:
            owner.close()


def publish(fmt: Format, source: Path, target: Path, auto_version: bool = False) -> Path:
    """Move one validated artifact into place; returns where it went.

    A versioned target is never overwritten. When the version was chosen automatically
    and another export published it meanwhile (two exports of one model at once), the
    artifact takes the next free version instead.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    attempts = 1
    while True:
        try:
            fmt.publish(source, target)
            return target
        except OSError as exc:
            if not fmt.versioned:
                raise
            if not (auto_version and target.exists()) or attempts == _PUBLISH_ATTEMPTS:
                raise ExportError(
                    f"Could not publish {str(target)!r}: {exc}. Nothing was overwritten."
                ) from exc
            taken, target = target, next_version(target)
            attempts += 1
            log.info("  version %s appeared meanwhile; publishing as %s", taken.name, target.name)


_PUBLISH_ATTEMPTS = 10


def next_version(target: Path) -> Path:
    """The folder one past the highest numeric version beside ``target``.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for v in ("1", "3", "notes"):
        ...     (root / v).mkdir()
        >>> next_version(root / "3").name
        '4'
    """
    versions = [int(p.name) for p in target.parent.iterdir() if p.name.isdigit()]
    return target.parent / str(max(versions, default=0) + 1)


def _progress_line(record: dict[str, Any]) -> str:
    """One line per artifact: name, status, size, seconds (and why it failed).

    Example:
        >>> _progress_line({"path": "m.tflite", "passed": True, "size_bytes": 2_500_000,
        ...                 "export_seconds": 3.25, "validate_seconds": 1.0, "failures": []})
        '  ok      m.tflite                                    2.5 MB    4.2 s'
    """
    from kerastl.export.report import human_size

    seconds = record.get("export_seconds", 0.0) + record.get("validate_seconds", 0.0)
    if "not_written" in record:
        return f"  {'skip':6}  {record['path']:40} not written: {record['not_written'][:200]}"
    line = (
        f"  {'ok' if record['passed'] else 'FAILED':6}  {record['path']:40} "
        f"{human_size(record.get('size_bytes')):>9} {seconds:6.1f} s"
    )
    if record["failures"]:
        line += "  " + "; ".join(record["failures"])[:200]
    return line


def _run_one(fmt: Format, item: Staged, job: Job) -> dict[str, Any]:
    """:func:`_write_and_validate`, logging a progress line before and after (``kerastl``)."""
    log.info("  ...     %s/%s: writing and validating", fmt.name, item.precision)
    start = time.perf_counter()
    record = _write_and_validate(fmt, item, job)
    release_memory()  # the converter's graphs and the loaded artifact, before the next one
    record["validate_seconds"] = round(
        time.perf_counter() - start - record.get("export_seconds", 0.0), 2
    )
    log.log(logging.INFO if record["passed"] else logging.WARNING, _progress_line(record))
    return record


def _write_and_validate(fmt: Format, item: Staged, job: Job) -> dict[str, Any]:
    """Write one artifact into staging, load it in its runtime, validate and time it."""
    target = job.targets[(fmt.name, item.precision)]
    record: dict[str, Any] = {
        "format": fmt.name,
        "precision": item.precision,
        "path": str(target.relative_to(job.out)),
        "passed": False,
        "failures": [],
    }
    if not _write(fmt, item, record):
        return record
    release_memory()  # the converter's graphs, before the runtime loads the file
    record["size_bytes"] = _size(item.path)
    # outside the try below: an error of Keras' own run is not this file's failure
    reference = job.reference if item.reference is None else item.reference
    try:
        artifact = fmt.load(item.path) if item.load is None else item.load()
    except Exception as exc:  # noqa: BLE001 - any runtime refusing the file is a failure
        record["failures"] = [f"{fmt.name} runtime could not load it: {type(exc).__name__}: {exc}"]
        return record
    record["runtime"] = artifact.runtime
    record["non_builtin_ops"] = artifact.non_builtin_ops
    prepared, own_inputs = job.prepared, item.inputs is not None
    x = item.inputs if own_inputs else job.x_val
    try:
        parity = validate.validate(
            artifact,
            reference,
            x,
            f"{fmt.name}/{item.precision}",
            prepared.task,
            None if own_inputs else job.y_val,
            job.options.tolerances,
            exact=prepared.exact_predict if item.precision == "float32" else None,
            keras_float32=prepared.predict,
        )
    except Exception as exc:  # noqa: BLE001 - a runtime error on valid input is a failure
        record["failures"] = [f"running it failed: {type(exc).__name__}: {exc}"]
        return record
    record["parity"] = parity
    done = [t / 1000.0 for t in parity["batch1_ms"][1:]]  # validation's calls after the first
    # validation's last call was at batch 1 (determinism): no warm-up call is needed
    latency = artifact.latency_ms(
        x[:1], job.options.latency_runs, warmup=0, done=done, budget_s=LATENCY_BUDGET_S
    )
    record["latency_ms"] = round(latency, 3)
    record["failures"] = parity["failures"]
    record["passed"] = parity["passed"]
    return record


def _write(fmt: Format, item: Staged, record: dict[str, Any]) -> bool:
    """Run the artifact's writer into ``record``; False when the conversion failed."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            record["details"] = item.write() or {}
    except NotWritten as exc:  # an optional derived file left out: not a failure
        record["not_written"] = str(exc)
        record["passed"] = True
    except ExportError as exc:
        record["failures"] = [str(exc)]
    except OSError:  # full disk, permissions: abort the whole export, not just this file
        raise
    except Exception as exc:  # noqa: BLE001 - an unforeseen converter error fails this file only
        record["failures"] = [f"{fmt.name} export raised {type(exc).__name__}: {exc}"]
    record["export_seconds"] = round(time.perf_counter() - start, 2)
    return "details" in record


def _size(path: Path) -> int:
    if path.is_file():
        from kerastl.export.formats.onnx import data_file  # an ONNX graph's external weights

        data = data_file(path)
        return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _report(
    job: Job,
    formats: list[str],
    source: str,
    notes: list[str],
    keras_latency: float,
    records: list[dict[str, Any]],
    published: bool,
) -> dict[str, Any]:
    """The export report (``export_report.json``): model, validation setup, artifacts."""
    from kerastl import __version__

    prepared, x_val, tolerances = job.prepared, job.x_val, job.options.tolerances
    versions = [int(p.name) for (f, _), p in job.targets.items() if FORMAT_TABLE[f].versioned]
    return {
        "kerastl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "passed" if published else "failed",
        "out_dir": str(job.out),
        "model": {
            "name": job.name,
            "backbone": prepared.meta.get("backbone"),
            "task": prepared.task,
            "input": prepared.meta["input"],
            "outputs": prepared.output_names,
            "class_names": prepared.meta.get("class_names"),
            "params": int(prepared.original.count_params()),
        },
        "formats": formats,
        "quantize": [q for q in job.options.quantize if q != "float32"],
        "saved_model_version": versions[0] if versions else None,
        "validation": {
            "source": source,
            "samples": int(len(x_val)),
            "labels": job.y_val is not None,
            "batch_sizes": sorted({1, min(len(x_val), validate.LARGE_BATCH)}),
        },
        "keras_latency_ms": keras_latency,
        "tolerances": {k: vars(validate.tolerance_for(k, tolerances)) for k in validate.TOLERANCES},
        "notes": notes,
        "artifacts": records,
    }
