"""Render ``bench/RESULTS.md`` from the stored section results (``bench/results.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._harness import HERE, Section

RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
EXPORT_MATRIX_MD = HERE / "results_export_matrix.md"

#: Report order of the sections (issue items 6, 2, 1, 3, 4, 5 + scaling).
ORDER = ("startup", "finetune", "features", "pipeline", "inference", "distribute")


def load(path: Path = RESULTS_JSON) -> dict[str, Any]:
    """Stored results: ``{"runs": {...}, "sections": {key: section-json}}``."""
    if path.is_file():
        return json.loads(path.read_text())
    return {"runs": {}, "sections": {}}


def save(data: dict[str, Any], path: Path = RESULTS_JSON) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def _met(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "n/a"}[met]


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    return out


def render(data: dict[str, Any]) -> str:
    """The Markdown text of RESULTS.md."""
    sections = {k: Section.from_json(v) for k, v in data.get("sections", {}).items()}
    keys = [k for k in ORDER if k in sections] + [k for k in sections if k not in ORDER]
    lines = [
        "# kerastl benchmarks",
        "",
        "Written by `python -m bench` (see `bench/__init__.py`). Each comparison runs both sides "
        "in the same process, alternating (A B, B A, ...) after an untimed warm-up; figures are "
        "medians and ratios are ratios of medians. `load` is the 1-minute load average while "
        "the figure was taken: on this shared 2-core machine other jobs run at the same time, "
        "so absolute times are inflated and noisy; ratios are the figures to read.",
        "",
        "## Runs",
        "",
    ]
    for key, run in sorted(data.get("runs", {}).items()):
        m, v = run.get("machine", {}), run.get("versions", {})
        lines.append(
            f"- `{run.get('command')}` ({key}; {run.get('started')}, {run.get('seconds', 0):.0f} s; "
            f"sections {', '.join(run.get('sections', []))})"
        )
        lines.append(
            f"  - machine: {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM "
            f"({m.get('ram_available_gib')} GiB available at start), CPU {m.get('cpu')} "
            f"(family {m.get('cpu_family')}; {', '.join(m.get('cpu_flags', []))}), "
            f"{m.get('platform')}, Python {m.get('python')}; load average at start "
            f"{m.get('load_avg')}"
        )
        lines.append("  - versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if any("--quick" in str(r.get("command")) for r in data.get("runs", {}).values()):
        lines += [
            "",
            "Quick mode (`--quick`): small inputs, small datasets and few repetitions; "
            "the figures check that every benchmark runs and are indicative only. The "
            "full run (`python -m bench`, bench/RESULTS.md) is the one to quote.",
        ]
    lines += ["", "## Summary: the bars", ""]
    rows = []
    for k in keys:
        s = sections[k]
        if s.status != "ok" and not s.bars:
            rows.append(
                [s.title, "-", s.status, "pending" if s.status == "pending" else "error", s.reason]
            )
        for b in s.bars:
            rows.append([b.item, b.bar, b.value, _met(b.met), b.note])
    lines += _md_table(["comparison", "bar", "measured", "status", "why / note"], rows)
    for k in keys:
        s = sections[k]
        lines += ["", f"## {s.title}", ""]
        where = s.data.get("run", "")
        lines.append(
            f"Status: {s.status}"
            + (f" ({s.reason})" if s.reason else "")
            + f"; {s.seconds:.0f} s"
            + (f"; run {where}" if where else "")
            + "; parameters: "
            + ", ".join(f"{pk}={pv}" for pk, pv in s.params.items())
        )
        for t in s.tables:
            lines += ["", f"**{t.title}**", ""]
            lines += _md_table(t.columns, t.rows)
        if s.bars:
            lines += [""]
            for b in s.bars:
                lines.append(
                    f"- {b.item}: bar {b.bar}; measured {b.value} -> {_met(b.met)}"
                    + (f". {b.note}" if b.note else "")
                )
        if s.notes:
            lines += [""]
            lines += [f"- {n}" for n in s.notes]
    lines += ["", "## Export matrix (owned by bench/export_matrix.py)", ""]
    if EXPORT_MATRIX_MD.is_file():
        text = EXPORT_MATRIX_MD.read_text()
        bold = [ln.replace("**", "").rstrip(".") for ln in text.splitlines() if ln.startswith("**")]
        lines.append(
            "The per-entry export matrix (every registry entry x SavedModel / TFLite / ONNX, "
            "validated in each runtime) is kept in "
            "[results_export_matrix.md](results_export_matrix.md)"
            + (": " + ". ".join(bold) + "." if bold else ".")
        )
    else:
        lines.append(
            "Not run yet: `python bench/export_matrix.py` writes results_export_matrix.md."
        )
    for extra in sorted(HERE_DIR.glob("results_*.md")):
        if extra.name == EXPORT_MATRIX_MD.name:
            continue
        lines += ["", extra.read_text().strip()]
    return "\n".join(lines) + "\n"


#: Stand-alone benchmarks keep their section in ``bench/results_<name>.md`` (a file
#: their script writes); RESULTS.md includes each verbatim after the sections above.
HERE_DIR = Path(__file__).resolve().parent


def write(data: dict[str, Any], path: Path = RESULTS_MD) -> Path:
    path.write_text(render(data))
    return path
