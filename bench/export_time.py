"""Export time of kerastl against the raw tool doing the same conversion, side by side.

    python -m bench.export_time                     # MODELS, every format, both tools
    python -m bench.export_time --models resnet50 --formats onnx

For each model and format, two fresh child processes build the same model (random
init, fixed seed) and time one call each, after import and build:

* raw: Keras' own ``model.export(path, format=...)`` (``tf_saved_model``, ``litert``,
  ``onnx``: the TFLite converter and tf2onnx behind Keras' API), writing one file and
  checking nothing;
* kerastl: ``kerastl.export(model, out, formats=[format])`` with 16 validation inputs,
  which also loads the file back in its runtime, compares it with Keras at batch
  sizes 1 and 4, times it at batch 1 (validation's one-by-one calls are the first timed
  runs), and writes the report (and, for SavedModel, the serving signatures, warm-up
  and request files).

The pair runs in alternating order (raw first, then kerastl first, and so on) in the
same benchmark run, ``--repeats`` times (default 3); the table gives each tool's median
and the ratio of the medians (one call of a few seconds varies by 10-20% here).
Bar (issue 19): kerastl within 1.3 x raw, per format.
Writes ``bench/results_export_time.md`` (and re-renders RESULTS.md, which includes it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results_export_time.md"
RESULTS_JSON = HERE / "results_export_time.json"
MODELS = (("mobilenet_v3_small", 224), ("resnet50", 224), ("convnext_base", 224))
FORMATS = {"saved_model": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}
BAR = 1.3


def child(entry: str, size: int, fmt: str, tool: str) -> dict[str, Any]:
    """In the child: build the model, then time one export call with ``tool``."""
    import keras
    import numpy as np

    import kerastl

    keras.utils.set_random_seed(0)
    model = kerastl.build(entry, num_classes=10, input_shape=(size, size, 3), weights=None)
    x = np.random.default_rng(1).uniform(0, 255, (16, size, size, 3)).astype("float32")
    model(x[:1])  # Keras' ONNX export refuses a model that was never called
    with tempfile.TemporaryDirectory(prefix="kerastl_time_") as out:
        start = time.perf_counter()
        if tool == "raw":
            suffix = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}[fmt]
            model.export(os.path.join(out, "model" + suffix), format=FORMATS[fmt], verbose=False)
        else:
            kerastl.export(model, out, formats=[fmt], validation_data=x)
        seconds = time.perf_counter() - start
    return {"entry": entry, "format": fmt, "tool": tool, "seconds": round(seconds, 2)}


def measure(entry: str, size: int, fmt: str, tool: str) -> dict[str, Any]:
    from bench._harness import last_json_line, run_child

    res = run_child(
        ["-m", "bench.export_time", "--child", entry, str(size), fmt, tool], timeout=1800
    )
    row = last_json_line(res["stdout"])
    if row is None or res["returncode"] != 0:
        tail = [ln for ln in res["stderr"].splitlines() if ln.strip()][-1:] or ["-"]
        row = {"entry": entry, "format": fmt, "tool": tool, "error": tail[0][:200]}
    return row


def timed_pair(entry: str, size: int, fmt: str, repeats: int) -> dict[str, dict[str, Any]]:
    """``repeats`` alternating (raw, kerastl) calls; per tool: median seconds and every run.

    Example (the child processes replaced by a stub):
        >>> import bench.export_time as et
        >>> calls = iter([1.0, 2.0, 4.0, 3.0, 1.5, 2.5])
        >>> real, et.measure = et.measure, lambda e, s, f, t: {"seconds": next(calls)}
        >>> out = et.timed_pair("m", 8, "onnx", 3)
        >>> et.measure = real
        >>> out["raw"]["seconds"], out["raw"]["runs"], out["kerastl"]["runs"]
        (1.5, [1.0, 3.0, 1.5], [2.0, 4.0, 2.5])
    """
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "kerastl": []}
    for k in range(repeats):
        for tool in ("raw", "kerastl") if k % 2 == 0 else ("kerastl", "raw"):
            row = measure(entry, size, fmt, tool)
            runs[tool].append(row)
            print(json.dumps({"entry": entry, "format": fmt, "tool": tool, **row}),
                  file=sys.stderr, flush=True)  # fmt: skip
    out = {}
    for tool, rs in runs.items():
        failed = [r for r in rs if "seconds" not in r]
        row = {"entry": entry, "format": fmt, "tool": tool}
        if failed:
            out[tool] = {**row, "error": failed[0].get("error", "?")}
            continue
        secs = [r["seconds"] for r in rs]
        out[tool] = {**row, "seconds": float(statistics.median(secs)), "runs": secs}
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (model, format): raw s, kerastl s, ratio, bar met."""
    commands = ", ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", "?") for r in rows))
    lines = [
        "## Export time against the raw tools (bench/export_time.py)",
        "",
        f"Rows from {commands} (a later command replaces its own rows). "
        + " ".join(" ".join(__doc__.split("\n\n")[2:5]).split()),
        "",
        f"| entry | format | raw s (Keras `model.export`), median | kerastl s (with "
        f"validation), median | ratio | bar {BAR}x | raw runs | kerastl runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["entry"], r["format"], r["tool"]): r for r in rows}
    for entry in dict.fromkeys(e for e, _ in MODELS if any(r["entry"] == e for r in rows)):
        for fmt in FORMATS:
            raw, ours = by.get((entry, fmt, "raw")), by.get((entry, fmt, "kerastl"))
            if raw is None or ours is None:
                continue
            if "seconds" not in raw or "seconds" not in ours:
                err = raw.get("error") or ours.get("error")
                lines.append(
                    f"| {entry} | {fmt} | {raw.get('seconds', '-')} | "
                    f"{ours.get('seconds', '-')} | - | failed: {err} | - | - |"
                )
                continue
            ratio = ours["seconds"] / raw["seconds"]
            met = "met" if ratio <= BAR else "**missed**"
            lines.append(
                f"| {entry} | {fmt} | {raw['seconds']:.1f} | {ours['seconds']:.1f} | "
                f"{ratio:.2f}x | {met} | {_runs(raw)} | {_runs(ours)} |"
            )
    return "\n".join(lines) + "\n"


def _runs(row: dict[str, Any]) -> str:
    return ", ".join(f"{s:.1f}" for s in row.get("runs", [row["seconds"]]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.export_time", description=__doc__)
    p.add_argument("--models", default="", help="comma-separated entries (default: MODELS)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"subset of {list(FORMATS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed pairs per model and format")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        entry, size, fmt, tool = args.child
        print(json.dumps(child(entry, int(size), fmt, tool)))
        return 0
    sizes = dict(MODELS)
    models = [m for m in args.models.split(",") if m] or list(sizes)
    command = "python -m bench.export_time" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    rows: list[dict[str, Any]] = []
    if RESULTS_JSON.is_file():  # a partial rerun replaces its own rows only
        rows = json.loads(RESULTS_JSON.read_text())
    for entry in models:
        for fmt in [f for f in args.formats.split(",") if f]:
            for tool, row in timed_pair(entry, sizes.get(entry, 224), fmt, args.repeats).items():
                row["command"] = command
                key = (entry, fmt, tool)
                rows = [r for r in rows if (r["entry"], r["format"], r["tool"]) != key] + [row]
    RESULTS_JSON.write_text(json.dumps(rows, indent=1))
    RESULTS_MD.write_text(markdown(rows))
    from bench import report

    report.write(report.load())  # RESULTS.md includes this section
    return 0


if __name__ == "__main__":
    sys.exit(main())
