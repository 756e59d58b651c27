"""TFLite conversion alone: TensorFlow's converter as users call it vs kerastl's ``convert``.

    python -m bench.convert_memory [--models convnext_base] [--precisions float32,float16]

One SavedModel per model (random init, written by ``kerastl.export``), then, for each
precision, two fresh child processes that each import TensorFlow and convert it once:

- ``raw``: ``tf.lite.TFLiteConverter.from_saved_model(dir, signature_keys=["serving_default"])``
  with the settings kerastl uses for that precision, then ``convert()``;
- ``kerastl``: ``kerastl.export.formats.tflite.convert(dir, precision, ...)``, the same
  converter with the SavedModel's protos read instead of its weights restored in Python
  (twice, by ``from_saved_model`` and ``convert()``) and the flatbuffer repacked without
  passing copies.

Peak is the child's ``ru_maxrss`` (TensorFlow's own 0.7 GB included); seconds are the
conversion call's. Both files are hashed: the same bytes means the same file. Writes
``bench/results_convert_memory.md`` (RESULTS.md includes it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results_convert_memory.md"
RUNNERS = ("raw", "kerastl")


def _save(entry: str, out: Path) -> dict[str, Any]:
    import kerastl

    model = kerastl.build(entry, num_classes=10, compile=False, weights=None)
    kerastl.export(model, out, formats=["saved_model"], overwrite=True)
    (folder,) = (out / "saved_model").glob("*/1")
    return {"dir": str(folder), "params": model.count_params(), "input": model.input.name}


def _raw(folder: str, q: str) -> Any:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if q in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if q == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _convert(runner: str, folder: str, q: str, input_name: str) -> dict[str, Any]:
    import resource

    import tensorflow as tf  # noqa: F401 - imported before the clock starts

    start = time.perf_counter()
    if runner == "raw":
        content = _raw(folder, q)
    else:
        from kerastl.export.formats import tflite

        content = tflite.convert(Path(folder), q, input_name)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "sha256": hashlib.sha256(content).hexdigest()[:16],
        "bytes": len(content),
    }


def _child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.convert_memory", "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"child {args} failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def rows(models: list[str], precisions: list[str]) -> list[dict[str, Any]]:
    """One row per (model, precision): both runners' peak, seconds and file hash."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in models:
            saved = _child("save", entry, str(Path(tmp) / entry))
            for i, q in enumerate(precisions):
                order = RUNNERS if i % 2 == 0 else RUNNERS[::-1]
                runs = {r: _child("convert", r, saved["dir"], q, saved["input"]) for r in order}
                row = {"entry": entry, "params": saved["params"], "precision": q, **runs}
                print(json.dumps(row), flush=True)
                out.append(row)
    return out


def markdown(table: list[dict[str, Any]], cmd: str, git: str) -> str:
    lines = [
        "## TFLite conversion alone: the converter as called directly vs kerastl's convert "
        "(bench/convert_memory.py)",
        "",
        f"`{cmd}` ({git}). {__doc__.split(chr(10) + chr(10), 1)[1].split('Writes')[0].strip()}",
        "",
        "| entry | params M | precision | raw peak GB | kerastl peak GB | kerastl / raw | "
        "raw s | kerastl s | same file |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        raw, kx = r["raw"], r["kerastl"]
        lines.append(
            f"| {r['entry']} | {r['params'] / 1e6:.0f} | {r['precision']} "
            f"| {raw['peak_mb'] / 1e3:.2f} | {kx['peak_mb'] / 1e3:.2f} "
            f"| {kx['peak_mb'] / raw['peak_mb']:.2f} | {raw['seconds']:.1f} "
            f"| {kx['seconds']:.1f} | {'yes' if raw['sha256'] == kx['sha256'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.convert_memory", description=__doc__)
    p.add_argument("--models", default="convnext_base")
    p.add_argument("--precisions", default="float32,float16,dynamic")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = json.loads(args.child)
        result = _save(rest[0], Path(rest[1])) if kind == "save" else _convert(*rest)
        print(json.dumps(result), flush=True)
        return 0
    models, precisions = args.models.split(","), args.precisions.split(",")
    cmd = f"python -m bench.convert_memory --models {args.models} --precisions {args.precisions}"
    table = rows(models, precisions)
    from bench.export_memory import _git

    RESULTS_MD.write_text(markdown(table, cmd, _git()))
    from bench import report

    report.write(report.load())
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
