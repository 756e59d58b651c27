"""(5) Export cost: wall time and peak memory of exporting every format.

``kerastl.export(model, out, formats=[saved_model, tflite, onnx], quantize=[float16,
dynamic, int8], calibration_data=100 samples)`` runs in its own process; its wall time
and peak resident memory (polled every 0.5 s over the process tree, and the process's
own ``getrusage`` maximum) are the cost. These runs validate every file as usual but
gate nothing (random weights at tiny inputs put float16 and float32 errors above
kerastl's gates, and a failed gate would publish nothing): the cost is the same. The process also builds the model first (its
build time and memory are listed apart).

* resnet50 (224 px) and the other backbones of section 4: taken from that section's
  export processes of the same results file (not exported twice).
* The largest entry that fits (full run): resnet50 is exported at its minimum input size
  as the reference; image entries of the registry larger than it, largest first, whose
  peak memory and time predicted from that reference (a fixed part plus a part per
  parameter) fit the free memory and the time limit, are exported at their minimum input
  size (the cost is in the weights) until one passes; a child over the memory cap or the
  time limit is killed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench._harness import HERE, Bar, Section, fmt, log

TIME_LIMIT = 480.0
#: Resident memory (MB) and seconds of a process that imported TensorFlow and Keras and
#: built a small model: the part of the cost that does not grow with the parameters.
BASE_MB = 800.0
BASE_S = 20.0


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
    return [
        child.get("entry"),
        child.get("input"),
        fmt((child.get("params") or 0) / 1e6),
        f"{child.get('status')} ({passed}/{len(arts)} files)",
        fmt(child.get("export_s")),
        fmt(child.get("build_s")),
        fmt((child.get("rss_after_build_mb") or 0) / 1000),
        fmt((child.get("peak_rss_mb") or 0) / 1000),
        fmt((child.get("process_peak_rss_mb") or 0) / 1000),
        fmt(size / 1e6),
    ]


def _candidates(per_param_mb: float, per_param_s: float, cap_gb: float) -> list[dict]:
    """Image entries, largest first, with predicted peak memory and export time."""
    import kerastl
    from kerastl.zoo import get_spec

    out = []
    for name in kerastl.list_models(modality="image"):
        spec = get_spec(name)
        params = spec.params or 0
        if not params:
            continue
        out.append(
            {
                "entry": name,
                "params": params,
                "input": spec.min_input_size,
                "pred_peak_gb": (BASE_MB + params * per_param_mb) / 1000,
                "pred_s": BASE_S + params * per_param_s,
            }
        )
    out.sort(key=lambda c: -c["params"])
    return [c for c in out if c["pred_peak_gb"] <= cap_gb and c["pred_s"] <= 0.5 * TIME_LIMIT]


def run(quick: bool = False) -> Section:
    """Export cost of resnet50 (from section 4) and of the largest entry that fits."""
    import psutil

    from bench.inference import run_export

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
            "files MB",
        ],
    )
    exports, run_id = _inference_exports(quick)
    for child in exports.values():
        t.rows.append(_row(child))
    if exports:
        sec.notes.append(f"Rows from section 4's export processes (run {run_id}).")
    ref = exports.get("resnet50") or (
        max(exports.values(), key=lambda c: c.get("params", 0)) if exports else None
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

    # The big candidates are exported at their minimum input (the cost is in the weights),
    # so the reference for the prediction is resnet50 at its minimum input too.
    with tempfile.TemporaryDirectory(prefix="kerastl_bench_cost_") as tmp:
        from kerastl.zoo import get_spec

        small = get_spec("resnet50").min_input_size
        log(f"reference: resnet50 at {small} px")
        ref_small = run_export(
            "resnet50",
            small,
            Path(tmp) / "ref",
            timeout=TIME_LIMIT,
            raw_onnx=False,
            report_only=True,
        )
    t.rows.append(_row(ref_small))
    if ref_small.get("status") != "passed":
        sec.notes.append(
            f"resnet50 at {small} px did not export: {ref_small.get('error')}; "
            "the largest entry was not searched."
        )
        return sec
    ref = ref_small
    avail_gb = psutil.virtual_memory().available / 1e9
    cap_gb = max(2.0, min(16.0, avail_gb - 1.5))
    per_param_mb = max(ref["peak_rss_mb"] - BASE_MB, 1.0) / ref["params"]
    per_param_s = max(ref["export_s"] + ref.get("build_s", 0) - BASE_S, 1.0) / ref["params"]
    cands = [
        c for c in _candidates(per_param_mb, per_param_s, cap_gb) if c["params"] > ref["params"]
    ]
    sec.params.update(
        {
            "memory_cap_gb": round(cap_gb, 1),
            "available_gb": round(avail_gb, 1),
            "peak_mb_per_param": per_param_mb,
            "s_per_param": per_param_s,
            "candidates": [c["entry"] for c in cands[:3]],
        }
    )
    tried = []
    with tempfile.TemporaryDirectory(prefix="kerastl_bench_cost_") as tmp:
        for cand in cands[:3]:
            log(f"largest candidate {cand}")
            child = run_export(
                cand["entry"],
                cand["input"],
                Path(tmp) / cand["entry"],
                timeout=TIME_LIMIT,
                raw_onnx=False,
                max_rss_gb=cap_gb,
                report_only=True,
            )
            tried.append(child)
            t.rows.append(_row(child))
            if child.get("status") == "passed":
                sec.bars.append(
                    Bar(
                        item=f"export cost, largest entry that fits: {cand['entry']} "
                        f"({cand['params'] / 1e6:.0f} M params, {cand['input']} px)",
                        bar="report (no bar)",
                        value=f"{child['export_s']:.0f} s, peak {child['peak_rss_mb'] / 1000:.1f} "
                        "GB RSS",
                        met=None,
                        note=f"chosen by predicted memory <= {cap_gb:.1f} GB (free now "
                        f"{avail_gb:.1f} GB) and time <= {0.5 * TIME_LIMIT:.0f} s",
                    )
                )
                break
    sec.data["largest_tried"] = tried
    if not any(c.get("status") == "passed" for c in tried):
        sec.bars.append(
            Bar(
                item="export cost, largest entry that fits",
                bar="report (no bar)",
                value="no candidate larger than resnet50 passed: "
                + (
                    "; ".join(
                        f"{c['entry']}: {c.get('error', c.get('status'))}"[:200] for c in tried
                    )
                    or "none predicted to fit"
                ),
                met=None,
                note=f"memory cap {cap_gb:.1f} GB (free {avail_gb:.1f} GB), time limit "
                f"{TIME_LIMIT:.0f} s",
            )
        )
    sec.notes.append(
        f"Candidates are predicted from {ref['entry']}: {BASE_MB:.0f} MB + {per_param_mb:.2e} MB "
        f"peak memory and {BASE_S:.0f} s + {per_param_s:.2e} s per parameter; entries above {cap_gb:.1f} GB predicted peak "
        "(the free memory of this shared machine minus a margin) or the time limit are not "
        "tried. A child passing the memory cap or the time limit is killed and the next "
        "smaller candidate is tried."
    )
    return sec
