"""The export report: ``export_report.json`` (machine) and ``export_report.md`` (people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kerastl.core.safety import atomic_write_text

JSON_NAME = "export_report.json"
MD_NAME = "export_report.md"
FAILED_JSON_NAME = "export_report.failed.json"
FAILED_MD_NAME = "export_report.failed.md"


def human_size(n: int | None) -> str:
    """``1234567`` -> ``'1.2 MB'``.

    Example:
        >>> human_size(2_500_000)
        '2.5 MB'
    """
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _fmt(value: Any, spec: str = ".2g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    """Render the report as Markdown."""
    model = report["model"]
    lines = [
        f"# Export report: {model['name']}",
        "",
        f"- status: **{report['status']}**",
        f"- backbone: {model.get('backbone')}, task: {model.get('task')}, "
        f"outputs: {', '.join(model.get('outputs', []))}",
        f"- input: `{model['input'].get('name')}` {model['input'].get('shape')} "
        f"{model['input'].get('dtype')}, raw range {model['input'].get('range', '-')}, "
        f"batch axis dynamic",
        f"- classes: {model.get('class_names') or '-'}",
        f"- validation: {report['validation']['samples']} samples "
        f"({report['validation']['source']}), batch sizes {report['validation']['batch_sizes']}",
        f"- Keras latency (batch 1, median): {_fmt(report.get('keras_latency_ms'), '.2f')} ms",
        f"- kerastl {report['kerastl_version']}, {report['created']}",
        "",
        "| artifact | format | precision | size | max rel err | tolerance | agreement "
        "| metric delta | latency ms | non-builtin ops | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["artifacts"]:
        p = a.get("parity") or {}
        metric = p.get("metric")
        delta = f"{metric['name']} {metric['delta']:+.3f}" if metric else "-"
        tol = (p.get("tolerance") or {}).get("max_rel_err")
        tol_text = _fmt(tol, "g") if tol is not None else "report"
        lines.append(
            f"| {a['path']} | {a['format']} | {a['precision']} | {human_size(a.get('size_bytes'))} "
            f"| {_fmt(p.get('max_rel_err'))} | {tol_text} "
            f"| {_fmt(p.get('agreement'), '.3f')} | {delta} "
            f"| {_fmt(a.get('latency_ms'), '.2f')} | {', '.join(a.get('non_builtin_ops') or []) or 'none'} "
            f"| {'ok' if a.get('passed') else 'FAILED'} |"
        )
    lines.append("")
    for a in report["artifacts"]:
        lines.append(f"## {a['path']}")
        lines.append("")
        lines.append(f"- runtime: {a.get('runtime')}")
        lines.append(f"- export time: {_fmt(a.get('export_seconds'), '.1f')} s")
        for key, value in (a.get("details") or {}).items():
            lines.append(f"- {key}: {value}")
        p = a.get("parity") or {}
        if p:
            lines.append(
                f"- parity: rel_err {p.get('rel_err')}, cosine {p.get('cosine')}, "
                f"deterministic {p.get('deterministic')}"
            )
        for name, v in (p.get("float64_referee") or {}).items():
            if "artifact_vs_float64" in v:
                lines.append(
                    f"- float64 referee, {name}: artifact {v['artifact_vs_float64']:.3g} from "
                    f"the float64 result, Keras float32 {v['keras_vs_float64']:.3g}"
                    + (
                        f" ({v['keras_perturbed_vs_float64']:.3g} on inputs one rounding step away)"
                        if "keras_perturbed_vs_float64" in v
                        else ""
                    )
                    + ", allowed "
                    f"{v['allowed']:.3g} -> {'passed' if v['passed'] else 'failed'}"
                )
            else:
                lines.append(f"- float64 referee, {name}: not available ({v.get('error')})")
        for failure in a.get("failures") or []:
            lines.append(f"- FAILURE: {failure}")
        lines.append("")
    if report.get("notes"):
        lines.append("## Notes")
        lines.append("")
        lines.extend(f"- {n}" for n in report["notes"])
        lines.append("")
    return "\n".join(lines)


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write both files into ``out_dir`` atomically; returns their paths.

    A passed export writes ``export_report.{json,md}``. A failed one writes
    ``export_report.failed.{json,md}`` instead, so the report of the artifacts already
    published in ``out_dir`` is never replaced by the report of an export that published nothing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = report.get("status") != "passed"
    json_path = out_dir / (FAILED_JSON_NAME if failed else JSON_NAME)
    md_path = out_dir / (FAILED_MD_NAME if failed else MD_NAME)
    atomic_write_text(json_path, json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(md_path, to_markdown(report))
    if not failed:  # a stale failure report would contradict the new published one
        for stale in (FAILED_JSON_NAME, FAILED_MD_NAME):
            (out_dir / stale).unlink(missing_ok=True)
    return json_path, md_path
