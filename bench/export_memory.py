"""Peak memory of ``kerastl.export`` per format and per step, against 3 x weights + 2 GB.

    python -m bench.export_memory                       # the five models below, resumable
    python -m bench.export_memory --models resnet50 --runs onnx,all

Each (model, run) is a fresh child process: it builds the model (random init, nothing
downloaded), then calls ``kerastl.export`` once with the run's formats: ``saved_model``,
``tflite`` (float32 + float16 + dynamic + int8, 100 calibration inputs), ``onnx``, or
``all`` of them. Peak resident memory is the child's ``ru_maxrss`` (the kernel's exact
maximum, model and TensorFlow included: what the user's process needs) and the parent's
0.5 s poll of the process tree. Inside the child a 20 ms sampler attributes the peak to
the export step running at that moment (wrappers around kerastl's step functions:
prepare, Keras reference (with Keras' batch-1 latency since 6edcac1), SavedModel write,
TFLite convert per precision, ONNX freeze / grappler / tf2onnx / save, loading each file
back (a large model's float16 file: run once in builtin kernels, then upcast to float32 and
loaded, ``kerastl/export/formats/tflite_upcast.py``), validation), with the resident
memory left after the step. The ``all`` run's report gives the batch-1 latency of every
file (median of up to 10 runs in its runtime, stopping after 2 s once 3 were made).

Bar (issue 19): peak <= 3 x float32 weight bytes + 2 GB (GB = 1e9 bytes), per run.
Writes ``bench/results_export_memory.md`` (and re-renders RESULTS.md, which includes it) and
``bench/results_export_memory.json`` (one entry per finished child, with the command and
the commit that measured it; reruns skip passed entries unless ``--fresh``, or
``--rerun`` for the entries named, which keeps each replaced entry's peak as "before").
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import re
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results_export_memory.json"
RESULTS_MD = HERE / "results_export_memory.md"
#: (entry, input size) in the order they run: smallest first.
MODELS = (
    ("resnet50", 224),
    ("convnext_base", 224),
    ("bert_large_en_uncased", 128),
    ("convnext_large", 224),
    ("vit_large_patch16_224_imagenet", 224),
)
RUNS = {
    "saved_model": (["saved_model"], []),
    "tflite": (["tflite"], ["float16", "dynamic", "int8"]),
    "onnx": (["onnx"], []),
    "all": (["saved_model", "tflite", "onnx"], ["float16", "dynamic", "int8"]),
}
GB = 1e9
CALIBRATION = 100
#: kerastl's export functions timed as steps: (module, attribute, label).
STEPS = (
    ("kerastl.export._trace", "prepare", "prepare"),
    ("kerastl.export.pipeline", "_reference", "keras reference"),
    ("kerastl.export.formats.saved_model", "write", "saved_model write"),
    ("kerastl.export.formats.saved_model", "write_graph", "SavedModel graph"),
    ("kerastl.export.formats.tflite", "convert", "tflite convert"),
    ("kerastl.export.formats.tflite", "convert_function", "tflite convert (frozen function)"),
    ("kerastl.export.formats.tflite", "embed_metadata", "tflite kerastl metadata"),
    ("kerastl.export.formats.tflite_parts", "freeze_light", "tflite parts freeze"),
    ("kerastl.export.formats.tflite_parts", "write", "tflite parts convert"),
    ("kerastl.export.formats.tflite_parts", "quantize_int8", "tflite int8 from joined file"),
    # a large model's float16 file: the file run in builtin kernels, then its upcast loaded
    ("kerastl.export.formats.tflite", "UpcastFloat16Artifact.__init__", "tflite float16 load"),
    ("kerastl.export.formats.tflite_upcast", "upcast", "tflite float16 upcast"),
    ("kerastl.export.formats.tflite", "_mediapipe_copy", "tflite MediaPipe copy"),
    ("kerastl.export.formats.tflite", "_check_in_mediapipe", "tflite MediaPipe check"),
    ("kerastl.export.formats.onnx", "_frozen_graph_def", "onnx freeze"),
    ("kerastl.export.formats.onnx", "_inline_calls", "onnx grappler"),
    ("kerastl.export.formats.onnx", "_probe", "onnx probe"),
    ("kerastl.export.formats.onnx", "_convert_once", "onnx tf2onnx"),
    ("kerastl.export.formats.onnx", "save", "onnx save"),
    ("kerastl.export.validate", "validate", "validate"),
)


def bar_bytes(params: int) -> float:
    """The issue's bar: three float32 copies of the weights plus 2 GB.

    Example:
        >>> bar_bytes(25_000_000) / 1e9
        2.3
    """
    return 3 * 4 * params + 2 * GB


def _maxrss() -> int:
    """The process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Steps:
    """Peak and after-step resident memory of each labelled step.

    A 20 ms sampler thread sees what Python code allocates, but not the inside of a C++
    call that holds the GIL (the TFLite converter does): there the kernel's ``ru_maxrss``
    decides. When it rose during a step, the step set the process's new peak, at exactly
    that value.
    """

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.active: list[str] = []
        self.rows: dict[str, dict[str, float]] = {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss = self.proc.memory_info().rss
            for label in list(self.active):
                row = self.rows[label]
                row["peak"] = max(row["peak"], rss)
            time.sleep(0.02)

    def wrap(self, fn, label_of):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            label = label_of(args)
            row = self.rows.setdefault(label, {"peak": 0, "after": 0, "seconds": 0.0, "calls": 0})
            row["peak"] = max(row["peak"], self.proc.memory_info().rss)
            self.active.append(label)
            start, record = time.perf_counter(), _maxrss()
            try:
                return fn(*args, **kwargs)
            finally:
                self.active.remove(label)
                if _maxrss() > record:  # a new process peak, reached inside this step
                    row["peak"] = max(row["peak"], _maxrss())
                row["seconds"] += time.perf_counter() - start
                row["calls"] += 1
                row["after"] = self.proc.memory_info().rss

        return inner

    def install(self) -> None:
        from kerastl.export.formats import FORMATS

        for module, attr, label in STEPS:
            mod = importlib.import_module(module)
            if label in ("tflite convert", "tflite parts convert"):  # one row per precision

                def label_of(args, _label=label):
                    return f"{_label} {args[1 if _label == 'tflite convert' else 2]}"
            elif label == "validate":  # one row per file: validate(artifact, ref, x, key, ...)

                def label_of(args, _label=label):
                    return f"{_label} {args[3]}" if len(args) > 3 else _label
            else:

                def label_of(args, _label=label):
                    return _label

            owner, _, name = attr.rpartition(".")
            target = getattr(mod, owner) if owner else mod  # "Class.method" or a function
            setattr(target, name, self.wrap(getattr(target, name), label_of))
        for name, fmt in FORMATS.items():
            cls = type(fmt)
            cls.load = self.wrap(cls.load, lambda args, _n=name: f"{_n} load")


def _build(entry: str, size: int):
    import keras
    import numpy as np

    import kerastl
    from bench.export_matrix import build_kwargs, validation_inputs
    from kerastl.export.modalities import get_modality
    from kerastl.zoo import get_spec

    spec = get_spec(entry)
    keras.utils.set_random_seed(0)
    kwargs = build_kwargs(spec)
    if spec.modality == "image":
        kwargs["input_shape"] = (size, size, 3)
    elif spec.modality == "text":
        kwargs["sequence_length"] = size
    model = kerastl.build(entry, num_classes=10, compile=False, weights=None, **kwargs)
    modality = get_modality(kerastl.metadata(model))
    x = validation_inputs(spec, modality, 16, seed=1)
    cal = validation_inputs(spec, modality, CALIBRATION, seed=2)
    return model, np.asarray(x), np.asarray(cal)


#: Batch-1 latency budget of the exports this benchmark runs (seconds; see ``_latency``).
LATENCY_BUDGET_S = 2.0


def child(entry: str, size: int, run: str) -> dict[str, Any]:
    """In the child process: build, export with the run's formats, measure each step."""

    import psutil

    proc = psutil.Process()
    steps = _Steps()
    import kerastl

    base = proc.memory_info().rss
    start = time.perf_counter()
    model, x, cal = _build(entry, size)
    build_s, after_build = time.perf_counter() - start, proc.memory_info().rss
    steps.install()
    from kerastl.export import pipeline

    # the latency table keeps its definition: up to 10 runs, stopping after 2 s once 3
    # were made (an export alone stops after pipeline.LATENCY_BUDGET_S)
    pipeline.LATENCY_BUDGET_S = LATENCY_BUDGET_S
    formats, quantize = RUNS[run]
    from kerastl.export.validate import TOLERANCES

    loose = {"max_rel_err": 1e9, "min_agreement": 0.0}
    tolerances = dict.fromkeys(TOLERANCES, loose)
    result: dict[str, Any] = {
        "entry": entry,
        "input": size,
        "run": run,
        "params": int(model.count_params()),
        "import_mb": base / 1e6,
        "after_build_mb": after_build / 1e6,
        "build_s": round(build_s, 1),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kerastl_mem_") as out:
        try:
            report = kerastl.export(
                model,
                out,
                formats=formats,
                quantize=quantize,
                validation_data=x,
                calibration_data=cal if "int8" in quantize else None,
                tolerances=tolerances,
            )
            result["status"] = "passed"
            result["artifacts"] = [
                {
                    k: a.get(k)
                    for k in ("path", "format", "precision", "size_bytes", "latency_ms", "runtime")
                }
                for a in report["artifacts"]
            ]
            result["keras_latency_ms"] = report["keras_latency_ms"]
        except Exception as exc:  # noqa: BLE001 - recorded, not raised
            result["status"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    result["export_s"] = round(time.perf_counter() - start, 1)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    result["steps"] = {
        k: {
            "peak_mb": v["peak"] / 1e6,
            "after_mb": v["after"] / 1e6,
            "seconds": v["seconds"],
            "calls": v["calls"],
        }
        for k, v in steps.rows.items()
    }
    return result


# --------------------------------------------------------------------------- parent


def _load() -> list[dict[str, Any]]:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else []


def measure(entry: str, size: int, run: str, timeout: float, cap_gb: float) -> dict[str, Any]:
    """One child: its JSON result, with the polled peak of the process tree and wall time."""
    from bench._harness import last_json_line, run_child

    res = run_child(
        ["-m", "bench.export_memory", "--child", entry, str(size), run],
        timeout=timeout,
        max_rss_gb=cap_gb,
    )
    row = last_json_line(res["stdout"]) or {"entry": entry, "input": size, "run": run}
    row["process_s"] = round(res["seconds"], 1)
    row["polled_peak_mb"] = res["peak_rss_mb"]
    if res["killed"] or res["returncode"] != 0:
        tail = [ln for ln in res["stderr"].splitlines() if ln.strip()][-1:] or ["-"]
        row["status"] = (
            f"process {res['killed'] or 'exit ' + str(res['returncode'])}: {tail[0][:200]}"
        )
    return row


def _git() -> str:
    """The commit measured, ``+changes`` when kerastl's or bench's code differs from it.

    (Result files, which this benchmark itself rewrites, do not count.)
    """
    import subprocess

    def git(*a: str) -> str:
        res = subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True)
        return res.stdout.strip()

    dirty = git("status", "--porcelain", "--", "../kerastl", "*.py")
    return git("rev-parse", "--short", "HEAD") + (" +changes" if dirty else "")


def _gb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb / 1000:.2f}"


def _peak(row: dict[str, Any]) -> float:
    return max(row.get("peak_mb") or 0.0, row.get("polled_peak_mb") or 0.0)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results section: bar table per run, steps of each ``all`` run, latency table."""
    commands = list(dict.fromkeys(r.get("command", "?") for r in rows))
    lines = [
        "## Export memory per format and step (bench/export_memory.py)",
        "",
        "Each row names the command that measured it (`[k]` below) and the commit it ran on "
        "(`+changes`: with uncommitted edits); `before`: the row it replaced (`--rerun`). "
        "Other benchmarks or CI shared the 2 cores during these runs: seconds are inflated, "
        "memory is not. " + " ".join(__doc__.split(chr(10) + chr(10))[2].split()),
        "",
        *[f"- [{i + 1}] `{c}`" for i, c in enumerate(commands)],
        "",
        "| entry | params M | run | status | peak GB | bar GB (3 x weights + 2) | met | "
        "export s | before GB | by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = r.get("params")
        bar = bar_bytes(params) / 1e6 if params else None
        peak = _peak(r)
        met = (
            "-"
            if bar is None or r.get("status") != "passed"
            else ("yes" if peak <= bar else "**no**")
        )
        before = r.get("before") or {}
        by = f"[{commands.index(r.get('command', '?')) + 1}] {r.get('git', '')}".strip()
        was = "-" if not before else _gb(before["peak_mb"])
        was += f" ({before['git']})" if before.get("git") else ""
        tail = f" {was} | {by} |"
        lines.append(
            f"| {r['entry']} | {params / 1e6:.0f} | {r['run']} | {str(r.get('status'))[:90]} | "
            f"{_gb(peak)} | {_gb(bar)} | {met} | {r.get('export_s', '-')} |{tail}"
            if params
            else f"| {r['entry']} | - | {r['run']} | {str(r.get('status'))[:90]} | "
            f"{_gb(peak)} | - | - | - |{tail}"
        )
    for r in rows:
        if r["run"] != "all" or not r.get("steps"):
            continue
        lines += [
            "",
            f"Steps of `{r['entry']}` (all formats): {_gb(r['import_mb'])} GB before TensorFlow, after "
            f"build {_gb(r['after_build_mb'])} GB",
            "",
            "| step | peak GB | GB after | s |",
            "|---|---|---|---|",
        ]
        for label, v in r["steps"].items():
            lines.append(
                f"| {label} | {_gb(v['peak_mb'])} | {_gb(v['after_mb'])} | {v['seconds']:.1f} |"
            )
    lines += _latency(rows)
    return "\n".join(lines) + "\n"


def _latency(rows: list[dict[str, Any]]) -> list[str]:
    """Batch-1 latency (ms) of every file of the ``all`` runs, and int8 over float32."""
    cols = ["tflite/float32", "tflite/float16", "tflite/dynamic", "tflite/int8", "onnx/float32"]
    out = [
        "",
        "Batch-1 latency, ms (median of up to 10 runs in the file's runtime, at least 3, "
        "stopping after 2 s; measured inside the export, under the same load; Keras = kerastl's "
        "traced inference function in TensorFlow, the graph the SavedModel holds; in rows "
        "measured after the depthwise rewrite (`kerastl.core.convs.conv_as_depthwise`), "
        "ConvNeXt's grouped convolutions run in it as depthwise convolutions, not through XLA; "
        "TFLite threads: as the report's runtime names them, 1 (LiteRT's default) in runs made "
        "before the interpreter took every core)",
        "",
        "| entry | Keras | "
        + " | ".join(cols)
        + " | int8 speed-up over tflite float32 | TFLite threads |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for r in rows:
        if r["run"] != "all" or not r.get("artifacts"):
            continue
        lat = {f"{a['format']}/{a['precision']}": a.get("latency_ms") for a in r["artifacts"]}
        f32, i8 = lat.get("tflite/float32"), lat.get("tflite/int8")
        speed = f"{f32 / i8:.2f}x" if f32 and i8 else "-"
        cells = " | ".join("-" if lat.get(c) is None else f"{lat[c]:.1f}" for c in cols)
        threads = next(
            (
                m.group(1)
                for a in r["artifacts"]
                if a["format"] == "tflite"
                and (m := re.search(r"(\d+) threads?", a.get("runtime") or ""))
            ),
            "1",
        )
        out.append(
            f"| {r['entry']} | {r['keras_latency_ms']:.1f} | {cells} | {speed} | {threads} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.export_memory", description=__doc__)
    p.add_argument("--models", default="", help="comma-separated entries (default: MODELS)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"subset of {list(RUNS)}")
    p.add_argument("--fresh", action="store_true", help="forget earlier results")
    p.add_argument("--rerun", action="store_true", help="measure the named entries and runs again")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        entry, size, run = args.child
        print(json.dumps(child(entry, int(size), run), default=str))
        return 0
    import psutil

    sizes = dict(MODELS)
    models = [m for m in args.models.split(",") if m] or list(sizes)
    runs = [r for r in args.runs.split(",") if r]
    rows = [] if args.fresh else _load()
    done = {(r["entry"], r["run"]) for r in rows if r.get("status") == "passed"}
    command = "python -m bench.export_memory" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    for entry in models:
        for run in runs:
            if (entry, run) in done and not args.rerun:
                continue
            cap = max(2.0, psutil.virtual_memory().available / GB - 1.0)
            print(f"{entry} {run} (cap {cap:.1f} GB)", file=sys.stderr, flush=True)
            row = measure(entry, sizes.get(entry, 224), run, args.timeout, cap)
            row["command"], row["git"] = command, _git()
            # read again: another run of this benchmark may have written rows meanwhile
            rows = rows if args.fresh else _load()
            old = [r for r in rows if (r["entry"], r["run"]) == (entry, run)]
            if old and old[0].get("status") == "passed":
                row["before"] = {k: old[0].get(k) for k in ("peak_mb", "command", "git")}
                row["before"]["peak_mb"] = _peak(old[0])
            rows = [r for r in rows if (r["entry"], r["run"]) != (entry, run)] + [row]
            RESULTS_JSON.write_text(json.dumps(rows, indent=1, default=str))
            print(f"  {row.get('status')} peak {_gb(_peak(row))} GB", file=sys.stderr, flush=True)
    order = {m: i for i, m in enumerate(sizes)}
    rows.sort(key=lambda r: (order.get(r["entry"], 99), list(RUNS).index(r["run"])))
    RESULTS_MD.write_text(markdown(rows))
    from bench import report

    report.write(report.load())  # RESULTS.md includes this section
    return 0


if __name__ == "__main__":
    sys.exit(main())
