"""``kerastl.export``: SavedModel (TF Serving), TFLite and ONNX in one validated call.

One dispatch over a closed list of formats, one module per format
(:mod:`~kerastl.export.formats.saved_model`, :mod:`~kerastl.export.formats.tflite`,
:mod:`~kerastl.export.formats.onnx`), validation in each artifact's real runtime
(:mod:`~kerastl.export.validate`), a report (:mod:`~kerastl.export.report`) and
:func:`load_artifact` to read any artifact back. Modality-specific parts (input
signature, ``serving_bytes``, sample inputs, reading files) are hooks in
:mod:`~kerastl.export.modalities`, so a text or audio exporter plugs in without
touching the format modules.

Everything is built in a hidden staging folder inside ``out_dir``, validated,
and only then renamed into place; a failure publishes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
import types
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kerastl._errors import (
    ConfigError,
    DataError,
    ExportError,
    ValidationError,
    choice_error,
    missing_dependency,
)
from kerastl.export.artifact import Artifact, load_artifact
from kerastl.export.modalities import ModalityExporter, register_modality

log = logging.getLogger(__name__)

#: The closed list of export formats.
FORMATS = ("saved_model", "tflite", "onnx")
#: TFLite precisions accepted by ``quantize`` (float32 is always written).
QUANTIZE = ("float32", "float16", "dynamic", "int8")

__all__ = [
    "FORMATS",
    "QUANTIZE",
    "Artifact",
    "ModalityExporter",
    "export",
    "load_artifact",
    "register_modality",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def _check_options(formats, quantize, calibration_data, int8_io, opset, allow_flex) -> None:
    from kerastl.export.formats import tflite

    if not formats:
        raise ConfigError(f"formats: empty; choose from {list(FORMATS)}.")
    for f in formats:
        if f not in FORMATS:
            raise choice_error("formats", f, FORMATS)
    for q in quantize:
        if q not in QUANTIZE:
            raise choice_error("quantize", q, QUANTIZE)
    if quantize and set(quantize) != {"float32"} and "tflite" not in formats:
        raise ConfigError(
            f"quantize={quantize!r} applies to TFLite files only, and formats={formats!r} has "
            "no 'tflite'. Add 'tflite' to formats or drop quantize."
        )
    if "int8" in quantize and calibration_data is None:
        raise ConfigError(
            "quantize: 'int8' needs calibration_data (a few hundred representative raw "
            "inputs) to set the integer ranges."
        )
    if int8_io not in tflite.INT8_IO:
        raise choice_error("int8_io", int8_io, tflite.INT8_IO)
    if int8_io != "float32" and "int8" not in quantize:
        raise ConfigError(
            f"int8_io={int8_io!r} sets the input/output type of int8 TFLite files; add 'int8' "
            "to quantize or leave int8_io='float32'."
        )
    if opset is not None and "onnx" not in formats:
        raise ConfigError(f"opset={opset!r} applies to ONNX only; add 'onnx' to formats.")
    if allow_flex and "tflite" not in formats:
        raise ConfigError("allow_flex=True applies to TFLite only; add 'tflite' to formats.")


def _require(formats: list[str]) -> None:
    if "tflite" in formats:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as exc:
            raise missing_dependency(
                "ai_edge_litert", "ai-edge-litert", "TFLite export (validation)"
            ) from exc
    if "onnx" in formats:
        from kerastl.export.formats import onnx as kx_onnx

        kx_onnx.require()


def _check_finite(x: np.ndarray, argument: str) -> None:
    if np.asarray(x).dtype.kind == "f":
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise DataError(
                f"{argument}: {bad} values are NaN or infinite; give finite raw inputs "
                "(0-255 pixels for image models)."
            )


def _check_counts(**counts: Any) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {value!r}.")


def _size(path: Path) -> int:
    if path.is_file():
        from kerastl.export.formats.onnx import data_file  # an ONNX graph's external weights

        data = data_file(path)
        return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
    Keras model at two batch sizes before it is published.

    Layout of ``out_dir``::

        saved_model/<name>/<version>/   TF Serving: serving_default, serving_bytes,
                                        assets/labels.txt, assets.extra/warm-up + REST samples
        <name>.tflite, <name>_<q>.tflite
        <name>.onnx
        export_report.json, export_report.md
        export_report.failed.json/.md   only after a failed export (the live report stays)

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
        latency_runs: Timed runs per artifact (median reported).

    Returns:
        The report (also written as ``export_report.json`` / ``.md``): model,
        validation setup, and per artifact its path, size, parity, agreement,
        latency and non-builtin ops.

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
    from kerastl import __version__
    from kerastl.export import report as report_mod
    from kerastl.export import validate
    from kerastl.export._trace import prepare
    from kerastl.export.formats import onnx as kx_onnx
    from kerastl.export.formats import saved_model, tflite, tflite_metadata

    formats = _as_list(formats, "formats")
    quantize = _as_list(quantize, "quantize")
    _check_options(formats, quantize, calibration_data, int8_io, opset, allow_flex)
    opset_value = kx_onnx.check_opset(opset) if "onnx" in formats else None
    validate.check_overrides(tolerances)
    _check_counts(
        max_validation_samples=max_validation_samples,
        max_calibration_samples=max_calibration_samples,
        latency_runs=latency_runs,
    )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"out_dir: {str(out)!r} is a file; pass a folder (it is created if missing)."
        )
    brackets = sorted(set("[]") & set(str(out.absolute())))
    if brackets and {"saved_model", "tflite"} & set(formats):
        raise ConfigError(
            f"out_dir: {str(out)!r} contains {brackets}; TensorFlow reads SavedModel "
            "variables through a glob pattern, where brackets are special, so the SavedModel "
            "(and the TFLite files converted from it) could not be loaded back. Choose a "
            "folder without '[' or ']'."
        )
    _require(formats)

    prepared = prepare(model)
    modality = prepared.modality
    delegate = modality.delegate(formats) if hasattr(modality, "delegate") else None
    if delegate is not None:  # e.g. text: TFLite/ONNX come from the token-id sub-model
        return delegate(
            prepared.original,
            out_dir,
            formats,
            quantize=quantize,
            calibration_data=calibration_data,
            validation_data=validation_data,
            name=name,
            version=version,
            int8_io=int8_io,
            allow_flex=allow_flex,
            opset=opset,
            overwrite=overwrite,
            tolerances=tolerances,
            max_validation_samples=max_validation_samples,
            max_calibration_samples=max_calibration_samples,
            latency_runs=latency_runs,
        )
    for f in formats:
        if f not in modality.formats:
            raise ConfigError(
                f"formats: {f!r} is not available for {modality.name} models; "
                f"valid: {list(modality.formats)}."
            )
    name = name or prepared.original.name
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"name: {name!r} is not usable in file names and TF Serving; use letters, digits, "
            "'_', '-' and '.'."
        )
    precisions = (
        ["float32", *[q for q in quantize if q != "float32"]] if "tflite" in formats else []
    )
    targets: dict[tuple[str, str], Path] = {}
    version_value = None
    if "saved_model" in formats:
        targets[("saved_model", "float32")], version_value = saved_model.version_dir(
            out, name, version
        )
    elif version is not None:
        raise ConfigError(f"version={version!r} applies to saved_model only; add it to formats.")
    for q in precisions:
        targets[("tflite", q)] = out / tflite.file_name(name, q)
    if precisions and tflite_metadata.supports(prepared.meta) and tflite_metadata.available():
        mp = tflite_metadata.MEDIAPIPE_SUFFIX
        targets[("tflite", mp)] = out / tflite.file_name(name, mp)
    if "onnx" in formats:
        targets[("onnx", "float32")] = out / f"{name}.onnx"
    clash = [str(p) for (f, _), p in targets.items() if f != "saved_model" and p.exists()]
    if clash and not overwrite:
        raise ConfigError(
            f"out_dir: {clash} already exist; pass overwrite=True (CLI --overwrite) to replace "
            "them once the new files pass validation, or choose another out_dir or name."
        )

    # Data: validation (or synthetic) inputs, calibration inputs. A path (image folder with
    # optional class subfolders, .npy, .npz) is read as the CLI reads it.
    from kerastl.export.data_path import load_data_path

    labels = prepared.meta.get("class_names")
    if isinstance(validation_data, (str, os.PathLike)):
        validation_data = load_data_path(validation_data, "validation_data", labels)
    if isinstance(calibration_data, (str, os.PathLike)):
        calibration_data = load_data_path(calibration_data, "calibration_data", labels)
    extra_notes = []
    if validation_data is not None:
        x_val, y_val = modality.coerce(validation_data, "validation_data", max_validation_samples)
        _check_finite(x_val, "validation_data")
        source = "validation_data"
        if len(x_val) == 1:  # batch 1 alone would not show that the batch axis is dynamic
            x_val = np.concatenate([x_val, x_val])
            y_val = None if y_val is None else np.concatenate([y_val, y_val])
            extra_notes.append("one validation example: repeated to also validate batch size 2")
    else:
        x_val, y_val = modality.sample_inputs(16), None
        source = "synthetic sample inputs (pass validation_data for real ones)"
    x_cal = None
    if "int8" in precisions:
        x_cal, _ = modality.coerce(calibration_data, "calibration_data", max_calibration_samples)
        _check_finite(x_cal, "calibration_data")
        tflite.check_calibration(len(x_cal))

    reference = prepared.predict(x_val)
    if y_val is not None:
        main = prepared.output_names[0]
        validate.check_labels(reference[main], y_val, prepared.task, "validation_data")
    notes = list(prepared.notes) + extra_notes
    if prepared.mixed_precision:
        orig = prepared.original.predict(x_val, verbose=0)
        orig = orig[0] if isinstance(orig, (list, tuple)) else orig
        main = prepared.output_names[0]
        line = (
            f"float32 graph vs the original mixed-precision Keras model: rel_err "
            f"{validate.rel_err(reference[main], np.asarray(orig, np.float32)):.3g}"
        )
        if prepared.task in ("classification", "binary", "multilabel"):
            agree = np.mean(
                validate.top1(reference[main], prepared.task) == validate.top1(orig, prepared.task)
            )
            line += f", top-1 agreement {agree:.3f}"
        notes.append(line)
    keras_latency = _keras_latency(prepared, x_val[:1], latency_runs)

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".kerastl-staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    records: list[dict[str, Any]] = []
    published = False
    try:
        sm_dir = None
        if "saved_model" in formats:
            sm_dir = staging / "saved_model"
            records.append(
                _run_one(
                    "saved_model",
                    "float32",
                    sm_dir,
                    targets,
                    out,
                    lambda: saved_model.write(prepared, sm_dir, x_val, name),
                    prepared,
                    reference,
                    x_val,
                    y_val,
                    tolerances,
                    latency_runs,
                )
            )
        if precisions:
            if sm_dir is None or not (sm_dir / "saved_model.pb").exists():
                sm_dir = staging / "tflite_source"
                saved_model.write_graph(prepared, sm_dir, extras=False)
            for q in precisions:
                path = staging / tflite.file_name(name, q)

                def write_tflite(q=q, path=path):
                    content = tflite.convert(
                        sm_dir,
                        q,
                        modality.input_name,
                        calibration=x_cal,
                        int8_io=int8_io if q == "int8" else "float32",
                        allow_flex=allow_flex,
                    )
                    content = tflite.embed_metadata(content, prepared.meta)
                    path.write_bytes(content)
                    ops, custom = tflite.list_ops(content)
                    details = {"ops": len(ops)}
                    if q == "int8":
                        details["io_type"] = int8_io
                    return details

                records.append(
                    _run_one(
                        "tflite",
                        q,
                        path,
                        targets,
                        out,
                        write_tflite,
                        prepared,
                        reference,
                        x_val,
                        y_val,
                        tolerances,
                        latency_runs,
                    )
                )
        if ("tflite", tflite_metadata.MEDIAPIPE_SUFFIX) in targets:
            records.append(
                _mediapipe_record(
                    staging,
                    name,
                    targets,
                    out,
                    prepared,
                    reference,
                    (x_val, y_val),
                    tolerances,
                    latency_runs,
                )
            )
        if "onnx" in formats:
            path = staging / f"{name}.onnx"

            def write_onnx():
                proto, onnx_notes = kx_onnx.convert(
                    prepared, opset_value, prepared.meta, probe=x_val[:4]
                )
                files = kx_onnx.save(proto, path)
                kx_onnx.check(path)
                counts: dict[str, int] = {}
                for node in proto.graph.node:
                    counts[node.op_type] = counts.get(node.op_type, 0) + 1
                details = {
                    "opset": opset_value,
                    "nodes": len(proto.graph.node),
                    "transposes": counts.get("Transpose", 0),
                }
                if onnx_notes:
                    details["tf2onnx"] = "; ".join(onnx_notes)
                if len(files) > 1:
                    details["external_data"] = files[1].name
                return details

            records.append(
                _run_one(
                    "onnx",
                    "float32",
                    path,
                    targets,
                    out,
                    write_onnx,
                    prepared,
                    reference,
                    x_val,
                    y_val,
                    tolerances,
                    latency_runs,
                )
            )

        ok = all(r["passed"] for r in records)
        if ok:
            _publish(staging, records, targets)
            published = True
    except Exception as exc:  # full disk, permissions, ...: nothing half-written is published
        # TensorFlow reports a full disk while saving variables as ResourceExhaustedError.
        if not isinstance(exc, OSError) and "No space left on device" not in str(exc):
            raise
        raise ExportError(
            f"export to {str(out)!r} failed while writing: {exc}. Nothing was published "
            "and the staging folder was removed; earlier versions are untouched."
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    report = {
        "kerastl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "passed" if published else "failed",
        "out_dir": str(out),
        "model": {
            "name": name,
            "backbone": prepared.meta.get("backbone"),
            "task": prepared.task,
            "input": prepared.meta["input"],
            "outputs": prepared.output_names,
            "class_names": prepared.meta.get("class_names"),
            "params": int(prepared.original.count_params()),
        },
        "formats": formats,
        "quantize": precisions[1:],
        "saved_model_version": version_value,
        "validation": {
            "source": source,
            "samples": int(len(x_val)),
            "labels": y_val is not None,
            "batch_sizes": sorted({1, min(len(x_val), validate.LARGE_BATCH)}),
        },
        "keras_latency_ms": keras_latency,
        "tolerances": {k: vars(validate.tolerance_for(k, tolerances)) for k in validate.TOLERANCES},
        "notes": notes,
        "artifacts": records,
    }
    _, md_path = report_mod.write(report, out)
    if not published:
        failed = [r for r in records if not r["passed"]]
        lines = "; ".join(f"{r['path']}: {' / '.join(r['failures'])}" for r in failed)
        cls = ValidationError if any(r.get("parity") for r in failed) else ExportError
        raise cls(f"Export of {name!r} failed, nothing was published ({lines}). See {md_path}.")
    return report


def _keras_latency(prepared, x: np.ndarray, runs: int) -> float:
    fn = prepared.tf_function()
    fn(x)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def _mediapipe_record(
    staging, name, targets, out, prepared, reference, data, tolerances, latency_runs
) -> dict[str, Any]:
    """Derive, load and validate ``<name>_mediapipe.tflite`` from the staged float32 file."""
    from kerastl.export.formats import tflite, tflite_metadata

    mp = tflite_metadata.MEDIAPIPE_SUFFIX
    path = staging / tflite.file_name(name, mp)
    scores = tflite_metadata.SCORES_OUTPUT

    def write_mediapipe() -> dict[str, Any]:
        source = staging / tflite.file_name(name, "float32")
        meta = prepared.meta
        description = (
            f"kerastl {meta.get('backbone')} classifier, {len(meta['class_names'])} classes; "
            "raw 0-255 RGB in (preprocessing in the graph)."
        )
        content = tflite_metadata.mediapipe_classifier(
            source.read_bytes(), meta["class_names"], description
        )
        path.write_bytes(content)
        return {"metadata": "TFLite Metadata (MediaPipe ImageClassifier)", "outputs": [scores]}

    x, y = data
    return _run_one(
        "tflite",
        mp,
        path,
        targets,
        out,
        write_mediapipe,
        prepared,
        {scores: reference[scores]},
        x,
        y,
        tolerances,
        latency_runs,
    )


def _progress_line(record: dict[str, Any]) -> str:
    """One line per artifact: name, status, size, seconds (and why it failed).

    Example:
        >>> _progress_line({"path": "m.tflite", "passed": True, "size_bytes": 2_500_000,
        ...                 "export_seconds": 3.25, "validate_seconds": 1.0, "failures": []})
        '  ok      m.tflite                                    2.5 MB    4.2 s'
    """
    from kerastl.export.report import human_size

    seconds = record.get("export_seconds", 0.0) + record.get("validate_seconds", 0.0)
    line = (
        f"  {'ok' if record['passed'] else 'FAILED':6}  {record['path']:40} "
        f"{human_size(record.get('size_bytes')):>9} {seconds:6.1f} s"
    )
    if record["failures"]:
        line += "  " + "; ".join(record["failures"])[:200]
    return line


def _run_one(*args: Any) -> dict[str, Any]:
    """:func:`_write_and_validate`, logging a progress line before and after (``kerastl``)."""
    fmt, precision = args[0], args[1]
    log.info("  ...     %s/%s: writing and validating", fmt, precision)
    start = time.perf_counter()
    record = _write_and_validate(*args)
    record["validate_seconds"] = round(
        time.perf_counter() - start - record.get("export_seconds", 0.0), 2
    )
    log.log(logging.INFO if record["passed"] else logging.WARNING, _progress_line(record))
    return record


def _write_and_validate(
    fmt, precision, path, targets, out, writer, prepared, reference, x, y, tolerances, latency_runs
) -> dict[str, Any]:
    """Write one artifact into staging, load it in its runtime, validate and time it."""
    from kerastl.export import validate

    target = targets[(fmt, precision)]
    record: dict[str, Any] = {
        "format": fmt,
        "precision": precision,
        "path": str(target.relative_to(out)),
        "passed": False,
        "failures": [],
    }
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            record["details"] = writer() or {}
    except ExportError as exc:
        record["failures"] = [str(exc)]
        record["export_seconds"] = round(time.perf_counter() - start, 2)
        return record
    except OSError:  # full disk, permissions: abort the whole export, not just this file
        raise
    except Exception as exc:  # noqa: BLE001 - an unforeseen converter error fails this file only
        record["failures"] = [f"{fmt} export raised {type(exc).__name__}: {exc}"]
        record["export_seconds"] = round(time.perf_counter() - start, 2)
        return record
    record["export_seconds"] = round(time.perf_counter() - start, 2)
    record["size_bytes"] = _size(path)
    try:
        artifact = load_artifact(path, format=fmt)
    except Exception as exc:  # noqa: BLE001 - any runtime refusing the file is a failure
        record["failures"] = [f"{fmt} runtime could not load it: {type(exc).__name__}: {exc}"]
        return record
    record["runtime"] = artifact.runtime
    if fmt == "tflite":
        record["non_builtin_ops"] = artifact.custom_ops
    elif fmt == "onnx":
        import onnx

        from kerastl.export.formats import onnx as kx_onnx

        record["non_builtin_ops"] = kx_onnx.non_standard_ops(
            onnx.load(str(path), load_external_data=False)
        )
    else:
        record["non_builtin_ops"] = []
    try:
        parity = validate.validate(
            artifact,
            reference,
            x,
            f"{fmt}/{precision}",
            prepared.task,
            y,
            tolerances,
            exact=prepared.exact_predict if precision == "float32" else None,
        )
    except Exception as exc:  # noqa: BLE001 - a runtime error on valid input is a failure
        record["failures"] = [f"running it failed: {type(exc).__name__}: {exc}"]
        return record
    record["parity"] = parity
    record["latency_ms"] = round(artifact.latency_ms(x[:1], runs=latency_runs), 3)
    record["failures"] = parity["failures"]
    record["passed"] = parity["passed"]
    return record


def _publish(staging: Path, records: list[dict[str, Any]], targets) -> None:
    """Move validated artifacts from staging to their targets with atomic renames."""
    for (fmt, _precision), target in targets.items():
        source = staging / ("saved_model" if fmt == "saved_model" else target.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "saved_model":
            try:
                os.rename(source, target)  # fails if the version appeared meanwhile
            except OSError as exc:
                raise ExportError(
                    f"Could not publish {str(target)!r}: {exc}. Nothing was overwritten."
                ) from exc
        else:
            # An ONNX graph over 2 GiB has its weights in "<file>.data": moved first, so
            # the new graph never points at a missing file.
            from kerastl.export.formats.onnx import replace_file

            replace_file(source, target)


class _CallableModule(types.ModuleType):
    """Makes ``kerastl.export(...)`` work even after ``import kerastl.export``.

    Importing the package (or any submodule) binds the attribute ``kerastl.export``
    to this module, shadowing the lazily-resolved function of the same name.
    Calling the module calls :func:`export`.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
