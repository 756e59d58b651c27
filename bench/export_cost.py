"""(5) Export cost: wall time and peak memory of exporting every format.

``kerastl.export(model, out, formats=[saved_model, tflite, onnx], quantize=[float16,
dynamic, int8], calibration_data=100 samples)`` runs in its own process; its wall time
and peak resident memory (polled every 0.5 s over the process tree, and the process's
own ``getrusage`` maximum) are the cost. The process builds the model first (its build
time and memory are listed apart).

* resnet50 (224 px) and the other backbones of section 4: taken from that section's
  export processes of the same results file (not exported twice).
* The largest entry that fits (full run): resnet50 at its minimum input (32 px) first,
  then larger entries in ascending size (:data:`LADDER`) at their minimum input (the
  cost is in the weights and the graph, not the activations), each killed above the
  memory cap (free memory minus a margin) or the time limit; the search stops at the
  first entry that does not fit, and the last one that passed is the answer. These runs
  validate every file as usual but gate nothing (random weights at tiny inputs put
  float16 and float32 errors above kerastl's gates, and a failed gate would publish
  nothing): the cost is the same.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench._harness import HERE, Bar, Section, fmt, log

TIME_LIMIT = 480.0
#: Entries above resnet50, ascending in parameters: the same family first, then wider ones.
LADDER = ("resnet101", "resnet152_v2", "convnext_base", "convnext_large", "convnext_xlarge")


def _inference_exports(quick: bool) -> tuple[dict[str, Any], str]:
    path = HERE / ("results_quick.json" if quick else "results.json")
    if not path.is_file():
        return {}, ""
    data = json.loads(path.read_text())
    sec = data.get("sections", {}).get("inference", {})
    return sec.get("data", {}).get("exports", {}), sec.get("data", {}).get("run", "")


def _row(child: dict[str, Any]) -> list[Any]:
    arts = child.get("artifacts") or []
    size = sum(a.get("size_bytes") or 0 for a in arts)
    passed = sum(1 for a in arts if a.get("passed"))
    status = f"{child.get('status')} ({passed}/{len(arts)} files)"
    if child.get("status") != "passed" and child.get("error"):
        status = child["error"].split(";")[0].replace("process ", "killed: ", 1)[:80]
    return [
        child.get("entry"),
        child.get("input"),
        fmt((child.get("params") or 0) / 1e6) if child.get("params") else "-",
        status,
        fmt(child.get("export_s")),
        fmt(child.get("build_s")),
        fmt((child.get("rss_after_build_mb") or 0) / 1000) if child.get("params") else "-",
        fmt((child.get("peak_rss_mb") or 0) / 1000) if child.get("params") else "-",
        fmt((child.get("process_peak_rss_mb") or 0) / 1000),
        fmt(child.get("process_s")),
        fmt(size / 1e6),
    ]


def run(quick: bool = False) -> Section:
    """Export cost of section 4's backbones and of the largest entry that fits."""
    import psutil

    from bench.inference import run_export
    from kerastl.zoo import get_spec

    sec = Section(
        "export_cost",
        "(5) Export cost: wall time and peak memory, all formats",
        params={
            "formats": "saved_model, tflite (float32, float16, dynamic, int8), onnx",
            "calibration_samples": 100,
            "time_limit_s": TIME_LIMIT,
        },
    )
    t = sec.table(
        "One kerastl.export call with every format and precision, in its own process",
        [
            "entry",
            "input px",
            "params M",
            "status",
            "export s",
            "build s (before)",
            "RSS after build GB",
            "peak RSS GB (getrusage)",
            "peak RSS GB (polled tree)",
            "process s",
            "files MB",
        ],
    )
    exports, run_id = _inference_exports(quick)
    for child in exports.values():
        t.rows.append(_row(child))
    if exports:
        sec.notes.append(f"Rows at 224 px come from section 4's export processes (run {run_id}).")
    ref = exports.get("resnet50") or max(
        exports.values(), key=lambda c: c.get("params") or 0, default=None
    )
    if ref is not None and ref.get("status") == "passed":
        sec.bars.append(
            Bar(
                item=f"export cost, {ref['entry']} {ref['input']} px, all formats",
                bar="report (no bar)",
                value=f"{ref['export_s']:.0f} s, peak {ref['peak_rss_mb'] / 1000:.1f} GB RSS",
                met=None,
            )
        )
    if quick:
        sec.notes.append("The largest entry that fits is searched in the full run only.")
        return sec

    avail_gb = psutil.virtual_memory().available / 1e9
    cap_gb = max(2.0, min(16.0, avail_gb - 1.5))
    sec.params.update(
        {
            "memory_cap_gb": round(cap_gb, 1),
            "available_gb": round(avail_gb, 1),
            "ladder": ["resnet50", *LADDER],
        }
    )
    largest, stopped = None, None
    tried = []
    with tempfile.TemporaryDirectory(prefix="kerastl_bench_cost_") as tmp:
        for name in ("resnet50", *LADDER):
            size = get_spec(name).min_input_size
            log(f"largest search: {name} at {size} px (cap {cap_gb:.1f} GB)")
            child = run_export(
                name,
                size,
                Path(tmp) / name,
                timeout=TIME_LIMIT,
                raw_onnx=False,
                max_rss_gb=cap_gb,
                report_only=True,
            )
            child.setdefault("params", None)
            tried.append(child)
            t.rows.append(_row(child))
            if child.get("status") != "passed":
                stopped = child
                break
            largest = child
    sec.data["largest_tried"] = tried
    stop_note = ""
    if stopped is not None:
        spec = get_spec(stopped["entry"])
        stop_note = (
            f"the next entry, {stopped['entry']} ({(spec.params or 0) / 1e6:.0f} M "
            f"params), did not fit: {str(stopped.get('error'))[:160]}"
        )
    if largest is not None:
        sec.bars.append(
            Bar(
                item=f"export cost, largest entry that fits: {largest['entry']} "
                f"({largest['params'] / 1e6:.0f} M params, {largest['input']} px)",
                bar="report (no bar)",
                value=f"{largest['export_s']:.0f} s, peak {largest['peak_rss_mb'] / 1000:.1f} GB RSS",
                met=None,
                note=f"memory cap {cap_gb:.1f} GB (free {avail_gb:.1f} GB at the start); "
                + stop_note,
            )
        )
    else:
        sec.bars.append(
            Bar(
                item="export cost, largest entry that fits",
                bar="report (no bar)",
                value="none fitted: " + stop_note,
                met=None,
            )
        )
    sec.notes.append(
        "The memory cap is what this shared machine leaves free (other jobs run beside the "
        "benchmark), minus a margin; on a quiet 24 GiB machine larger entries fit. A child is "
        "also killed when the machine's available memory falls below 1 GB, so that the "
        "kernel's OOM killer does not pick another job. (A probe outside the suite: resnet101 "
        "at 32 px exported with float16 and dynamic but without int8 also reached 9.1 GB "
        "before the kernel stopped it, so int8 calibration is not the only large step.)"
    )
    return sec
