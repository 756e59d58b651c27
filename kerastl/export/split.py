"""Multi-part exports (text, audio) staged, validated and published as one unit.

A modality with :attr:`~kerastl.export.modalities.ModalityExporter.sub_model_formats`
is exported in two parts (e.g. the SavedModel on raw strings, and TFLite/ONNX files on
token ids with the tokenizer folder beside them). Each part is a full run of the export
pipeline, but into one private staging folder inside ``out_dir``; only when every part
passed are the artifacts (and extra folders such as the tokenizer) moved to their places
by atomic renames, and the merged report written. A part that fails leaves nothing of
the new version visible: the staging folder is removed and only
``export_report.failed.{json,md}`` is written. Text and audio share this one code path;
what differs (the sub-model, its inputs, the folders beside it, the note) are hooks of
their modality.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerastl.errors import ConfigError, ExportError
from kerastl.export.formats import FORMATS, Options
from kerastl.export.formats.base import remove_stale, stale_files

if TYPE_CHECKING:
    from kerastl.export._trace import Prepared

#: ``part(staging, version) -> report``: one :func:`kerastl.export` call into ``staging``.
Part = Callable[[Path, "int | None"], dict]


def planned_files(
    name: str, formats: list[str], quantize: list[str], meta: dict[str, Any] | None = None
) -> list[str]:
    """File names (not SavedModel folders) a part writes into ``out_dir`` (``meta``: its model's).

    Example:
        >>> planned_files("m", ["tflite", "onnx"], ["int8"])
        ['m.tflite', 'm_int8.tflite', 'm.onnx']
    """
    options = Options(quantize=list(quantize))
    return [
        path.name
        for fmt in FORMATS.values()
        if fmt.name in formats and not fmt.versioned
        for path in fmt.targets(Path(), name, options, meta or {}).values()
    ]


def resolve_targets(
    out: Path, name: str, version: int | None, saved_model: bool, files: list[str], overwrite: bool
) -> int | None:
    """Check the targets before anything is written; returns the SavedModel version."""
    from kerastl.export.formats.saved_model import version_dir

    resolved = None
    if saved_model:
        _, resolved = version_dir(out, name, version)
    clash = [str(out / f) for f in files if (out / f).exists()]
    if clash and not overwrite:
        raise ConfigError(
            f"out_dir: {clash} already exist; pass overwrite=True (CLI --overwrite) to replace "
            "them once the new files pass validation, or choose another out_dir or name."
        )
    return resolved


def staged_export(
    out: Path,
    version: int | None,
    parts: list[Part],
    finish: Callable[[Path, list[dict]], tuple[dict, list[str]]],
    cleanup: Callable[[set[Path]], list[str]] | None = None,
) -> dict[str, Any]:
    """Run ``parts`` into one staging folder, then publish everything or nothing.

    Args:
        out: The export folder.
        version: The SavedModel version every part uses (resolved against ``out``).
        parts: The export calls, in order.
        finish: ``(staging, reports) -> (merged report, extra folder names)``: writes
            extra folders (the tokenizer) into ``staging`` and merges the reports.
        cleanup: ``(published paths) -> report notes``, run after publishing: removes
            what an earlier export left that this one did not write.

    Returns:
        The merged report, also written to ``out/export_report.{json,md}``.
    """
    from kerastl.export import report as report_mod

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".kerastl-staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        try:
            reports = [part(staging, version) for part in parts]
        except ExportError as exc:
            _keep_failed_report(staging, out)
            raise type(exc)(str(exc).replace(str(staging), str(out))) from exc
        merged, folders = finish(staging, reports)
        merged["out_dir"] = str(out)
        for folder in folders:
            _replace_folder(staging / folder, out / folder)
        for record in merged["artifacts"]:
            _publish_one(staging / record["path"], out / record["path"], record["format"])
        if cleanup is not None:
            merged["notes"] += cleanup({out / r["path"] for r in merged["artifacts"]})
    except OSError as exc:
        raise ExportError(
            f"export to {str(out)!r} failed while publishing: {exc}. Earlier versions are "
            "untouched."
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report_mod.write(merged, out)
    return merged


def _keep_failed_report(staging: Path, out: Path) -> None:
    from kerastl.core.safety import atomic_write_text
    from kerastl.export import report as report_mod

    for fname in (report_mod.FAILED_JSON_NAME, report_mod.FAILED_MD_NAME):
        src = staging / fname
        if src.is_file():
            text = src.read_text(encoding="utf-8").replace(str(staging), str(out))
            atomic_write_text(out / fname, text)


def _replace_folder(source: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.rename(target, old)
    os.rename(source, target)
    shutil.rmtree(old, ignore_errors=True)


def _publish_one(source: Path, target: Path, fmt: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    FORMATS[fmt].publish(source, target)  # a SavedModel version that appeared meanwhile: OSError


def export_split(
    prepared: Prepared,
    out_dir: str | os.PathLike,
    formats: list[str],
    options: Options,
    run: Callable[[Any, Any, list[str], Options], dict],
) -> dict[str, Any]:
    """Export a model in two parts: the model itself, and its modality's sub-model.

    ``run`` is the pipeline's single-model export
    (:func:`kerastl.export.pipeline.run`), called once per part. Same report as
    :func:`kerastl.export`; the parts are validated
    separately (the sub-model's files against the Keras sub-model on its inputs), staged
    together with the folders the sub-model needs beside it and published as one unit:
    if either part fails, nothing is published.
    """
    from kerastl.export.modalities import get_modality

    modality, model, out = prepared.modality, prepared.original, Path(out_dir)
    own = [f for f in formats if f not in modality.sub_model_formats]
    subs = [f for f in formats if f in modality.sub_model_formats]
    name = options.name or model.name
    sub = modality.sub_model(model)
    files = planned_files(name, subs, options.quantize, sub.kerastl_config)
    sub_formats = [FORMATS[f] for f in subs]
    stale = stale_files(out, name, sub_formats, {out / f for f in files})
    versioned = any(FORMATS[f].versioned for f in own)
    version = resolve_targets(
        out, name, options.version, versioned, files + [p.name for p in stale], options.overwrite
    )
    sub_modality = get_modality(sub.kerastl_config)

    def sub_data(data: Any) -> Any:
        if data is None:
            return None
        x, y = modality.sub_inputs(sub_modality, data)
        return x if y is None else (x, y)

    def own_part(staging: Path, version: int | None) -> dict:
        part = dataclasses.replace(
            options, quantize=[], calibration_data=None, name=name, version=version
        )
        return run(model, staging, own, part)

    def sub_part(staging: Path, version: int | None) -> dict:
        source = None
        if options.validation_data is not None:
            limit = options.max_validation_samples
            source, _ = modality.coerce(options.validation_data, "validation_data", limit)
        part = dataclasses.replace(
            options,
            name=name,
            version=None,
            validation_data=sub_data(options.validation_data),
            calibration_data=sub_data(options.calibration_data),
            source_inputs=source,
        )
        return run(sub, staging, subs, part)

    def finish(staging: Path, reports: list[dict]) -> tuple[dict, list[str]]:
        folders = []
        for key, (folder, written) in modality.write_beside(model, staging, name).items():
            reports[-1][key] = {"folder": str(out / folder), "files": written}
            folders.append(folder)
        return _merge(reports, formats, modality.split_note(name, _paths(reports))), folders

    parts = ([own_part] if own else []) + [sub_part]

    def cleanup(written: set[Path]) -> list[str]:
        return remove_stale(stale_files(out, name, sub_formats, written))

    return staged_export(out, version, parts, finish, cleanup)


def _paths(reports: list[dict]) -> list[str]:
    return [a["path"] for r in reports for a in r["artifacts"]]


def _merge(reports: list[dict], formats: list[str], note: str) -> dict[str, Any]:
    """One report of a multi-part export: every part's artifacts and notes."""
    merged = dict(reports[-1])
    merged["formats"] = list(formats)
    merged["artifacts"] = [a for r in reports for a in r["artifacts"]]
    merged["notes"] = [n for r in reports for n in r.get("notes", [])] + [note]
    merged["model"] = dict(reports[0]["model"])
    merged["saved_model_version"] = next(
        (r["saved_model_version"] for r in reports if r.get("saved_model_version")), None
    )
    return merged
