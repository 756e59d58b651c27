"""Multi-part exports (text, audio) staged, validated and published as one unit.

A text or audio model is exported in two parts (e.g. the SavedModel on raw strings, and
TFLite/ONNX files on token ids with the tokenizer folder beside them). Each part is a full
:func:`kerastl.export` call, but into one private staging folder inside ``out_dir``; only
when every part passed are the artifacts (and extra folders such as the tokenizer) moved
to their places by atomic renames, and the merged report written. A part that fails
leaves nothing of the new version visible: the staging folder is removed and only
``export_report.failed.{json,md}`` is written.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kerastl._errors import ConfigError, ExportError

#: ``part(staging, version) -> report``: one :func:`kerastl.export` call into ``staging``.
Part = Callable[[Path, "int | None"], dict]


def planned_files(name: str, formats: list[str], quantize: list[str]) -> list[str]:
    """File names (not SavedModel folders) a part writes into ``out_dir``.

    Example:
        >>> planned_files("m", ["tflite", "onnx"], ["int8"])
        ['m.tflite', 'm_int8.tflite', 'm.onnx']
    """
    from kerastl.export.formats import tflite

    files = []
    if "tflite" in formats:
        precisions = ["float32", *[q for q in quantize if q != "float32"]]
        files += [tflite.file_name(name, q) for q in precisions]
    if "onnx" in formats:
        files.append(f"{name}.onnx")
    return files


def resolve_targets(
    out: Path, name: str, version: int | None, saved_model: bool, files: list[str], overwrite: bool
) -> int | None:
    """Check the targets before anything is written; returns the SavedModel version."""
    from kerastl.export.formats import saved_model as sm

    resolved = None
    if saved_model:
        _, resolved = sm.version_dir(out, name, version)
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
) -> dict[str, Any]:
    """Run ``parts`` into one staging folder, then publish everything or nothing.

    Args:
        out: The export folder.
        version: The SavedModel version every part uses (resolved against ``out``).
        parts: The export calls, in order.
        finish: ``(staging, reports) -> (merged report, extra folder names)``: writes
            extra folders (the tokenizer) into ``staging`` and merges the reports.

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
    from kerastl._safety import atomic_write_text
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
    if fmt == "saved_model":
        os.rename(source, target)  # fails if the version appeared meanwhile
        return
    from kerastl.export.formats.onnx import replace_file

    replace_file(source, target)
