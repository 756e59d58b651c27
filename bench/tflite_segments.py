"""TFLite conversion in graph segments joined into one file, against kerastl's whole conversion.

    python -m bench.tflite_segments [--models vit_base_patch16_224_imagenet] [--segments 12]
        [--precisions float32,float16,dynamic]

Conversion in parts is what ``kerastl.export`` does for models of 256 MB of weights or more
(``kerastl/export/formats/tflite_parts.py``); this compares the two converters alone.
TensorFlow's MLIR converter holds four to five copies of the weights it converts; converted
a part at a time, it holds that many copies of one part. For each model, two fresh child
processes build the same model (random init, seed 0) and make a TFLite file of it (float32,
or float16 / dynamic-range with kerastl's settings) with the model in memory, as
``kerastl.export`` does:

- ``whole``: kerastl's path: the SavedModel graph kerastl writes for the converter
  (``write_graph(..., extras=False)``), then ``kerastl.export.formats.tflite.convert``;
- ``segments``: ``kerastl.export.formats.tflite_parts``: the traced inference function
  frozen (kerastl's freeze that reads each variable when its constant is made, as for
  ONNX); its nodes put in the order a depth-first walk from the outputs needs them; cut
  where few tensors cross (ViT: between transformer blocks) into about ``--segments``
  parts of equal weight bytes; each part converted alone by TensorFlow's converter (its
  GraphDef API); the parts joined into one flatbuffer, one subgraph, each part's inputs
  wired to the tensors earlier parts made.

Peak is the child's ``ru_maxrss`` (model and TensorFlow included) when the file is made,
before LiteRT loads it; then the file is written, let go, and LiteRT maps it and runs it on
2 inputs (the peak after that is the last column but one); its float outputs are compared
with Keras'. Writes ``bench/results_tflite_segments.md`` (RESULTS.md includes it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results_tflite_segments.md"
RESULTS_JSON = HERE / "results_tflite_segments.json"
MODELS = ("vit_base_patch16_224_imagenet", "convnext_base", "vit_large_patch16_224_imagenet")


def segments(
    concrete: Any, parts: int, precision: str = "float32"
) -> tuple[bytearray, list[dict[str, Any]]]:
    """The TFLite file of ``concrete``, converted part by part by kerastl, and its parts."""
    from kerastl.export.formats import tflite_parts

    graph = tflite_parts.freeze_light(concrete)
    planned = tflite_parts.plan(graph, parts)
    content = tflite_parts.convert(graph, planned, precision)
    figures = [{"nodes": p.stop - p.start, "crossing": len(p.inputs)} for p in planned]
    return content, figures


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def _whole(prepared: Any, precision: str) -> bytes | bytearray:
    from kerastl.export.formats import tflite
    from kerastl.export.formats.saved_model import write_graph

    with tempfile.TemporaryDirectory(prefix="kerastl_seg_") as tmp:
        write_graph(prepared, Path(tmp), extras=False)
        return tflite.convert(Path(tmp), precision, prepared.modality.input_name)


def child(entry: str, mode: str, parts: int, precision: str = "float32") -> dict[str, Any]:
    """In the child: build, make the file one way, run it in LiteRT against Keras."""
    import keras
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    import kerastl
    from kerastl.export._trace import prepare

    keras.utils.set_random_seed(0)
    model = kerastl.build(entry, num_classes=5, compile=False, weights=None)
    prepared = prepare(model)
    size = tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(0).uniform(0, 255, (2, *size)).astype("float32")
    reference = {k: np.asarray(v) for k, v in prepared.tf_function()(x).items()}
    built = _peak_mb()
    start = time.perf_counter()
    figures: list[dict[str, Any]] = []
    if mode == "whole":
        content = _whole(prepared, precision)
    else:
        concrete = prepared.tf_function().get_concrete_function()
        content, figures = segments(concrete, parts, precision)
    row = {"entry": entry, "mode": mode, "precision": precision}
    row["params"] = int(model.count_params())
    row.update(seconds=round(time.perf_counter() - start, 1), built_mb=round(built))
    row.update(peak_mb=round(_peak_mb()), file_mb=round(len(content) / 1e6, 1), parts=figures)
    path = Path(tempfile.mkdtemp(prefix="kerastl_seg_")) / "model.tflite"
    path.write_bytes(content)
    del content  # LiteRT maps the file, as kerastl's validation loads it
    interp = Interpreter(model_path=str(path))
    errors = []
    for i in range(len(x)):
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x[i : i + 1])
        interp.invoke()
        for d in interp.get_output_details():
            got = interp.get_tensor(d["index"])
            same = [r[i : i + 1] for r in reference.values() if r.shape[1:] == got.shape[1:]]
            if got.dtype.kind == "f" and same:
                scale = max(float(np.max(np.abs(r))) for r in same) or 1.0
                errors.append(min(float(np.max(np.abs(got - r))) for r in same) / scale)
    row["max_rel_err"] = max(errors) if errors else None
    row["peak_with_litert_mb"] = round(_peak_mb())
    del interp
    path.unlink()
    path.parent.rmdir()
    return row


def _child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.tflite_segments", "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"child {args} failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def markdown(rows: list[dict[str, Any]]) -> str:
    commands = list(dict.fromkeys(r["command"] for r in rows))
    lines = [
        "## TFLite conversion in parts, joined (bench/tflite_segments.py; an experiment)",
        "",
        " ".join(__doc__.split("\n\n")[2:5]).replace("\n", " "),
        "",
        *[f"- [{k}] `{c}`" for k, c in enumerate(commands, 1)],
        "",
        "| entry | params M | precision | mode | parts | built GB | peak GB | peak - built GB | s "
        "| file MB | peak with LiteRT GB | max rel err vs Keras | by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.2g}"
        lines.append(
            f"| {r['entry']} | {r['params'] / 1e6:.0f} | {r.get('precision', 'float32')} "
            f"| {r['mode']} | {len(r['parts']) or 1} "
            f"| {r['built_mb'] / 1e3:.2f} | {r['peak_mb'] / 1e3:.2f} "
            f"| {(r['peak_mb'] - r['built_mb']) / 1e3:.2f} | {r['seconds']:.0f} "
            f"| {r['file_mb']:.0f} | {r['peak_with_litert_mb'] / 1e3:.2f} | {err} "
            f"| [{commands.index(r['command']) + 1}] |"
        )
    return "\n".join(lines) + "\n"


def _merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored rows with the new run's (entry, precision, mode) rows in their place."""

    def key(r: dict[str, Any]) -> tuple:
        return r["entry"], r.get("precision", "float32"), r["mode"]

    fresh = {key(r): r for r in new}
    kept = [fresh.pop(key(r), r) for r in old]
    return kept + list(fresh.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--precisions", default="float32", help="float32,float16,dynamic")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args(argv)
    if args.render:
        RESULTS_MD.write_text(markdown(json.loads(RESULTS_JSON.read_text())["rows"]))
        return 0
    if args.child:
        entry, mode, parts, precision = json.loads(args.child)
        print(json.dumps(child(entry, mode, int(parts), precision)), flush=True)
        return 0
    command = ("python -m bench.tflite_segments " + " ".join(argv or sys.argv[1:])).strip()
    rows, i = [], 0
    for entry in args.models.split(","):
        for precision in args.precisions.split(","):
            for mode in ("whole", "segments") if i % 2 == 0 else ("segments", "whole"):
                rows.append(_child(entry, mode, str(args.segments), precision))
                rows[-1]["command"] = command
                print(json.dumps(rows[-1]), flush=True)
            i += 1
    old = json.loads(RESULTS_JSON.read_text())["rows"] if RESULTS_JSON.is_file() else []
    rows = _merge(old, rows)
    RESULTS_JSON.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    RESULTS_MD.write_text(markdown(rows))
    from bench import report

    report.write(report.load())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
