"""TFLite conversion in graph segments joined into one file, against kerastl's whole conversion.

    python -m bench.tflite_segments [--models vit_base_patch16_224_imagenet] [--segments 12]
        [--precisions float32,float16,dynamic]

An experiment for issue 19 (the TFLite memory bar), not yet kerastl's export path.
TensorFlow's MLIR converter holds four to five copies of the weights it converts; converted
a part at a time, it holds that many copies of one part. For each model, two fresh child
processes build the same model (random init, seed 0) and make a TFLite file of it (float32,
or float16 / dynamic-range with kerastl's settings) with the model in memory, as
``kerastl.export`` does:

- ``whole``: kerastl's path: the SavedModel graph kerastl writes for the converter
  (``write_graph(..., extras=False)``), then ``kerastl.export.formats.tflite.convert``;
- ``segments``: the traced inference function frozen (kerastl's freeze that reads each
  variable when its constant is made, as for ONNX); its nodes put in the order a
  depth-first walk from the outputs needs them; cut where one tensor alone is live (ViT:
  between transformer blocks) into about ``--segments`` parts of equal weight bytes; each
  part converted alone by TensorFlow's converter (its GraphDef API); the parts joined into
  one flatbuffer, one subgraph, each part's input tensor replaced by the previous part's
  output.

Peak is the child's ``ru_maxrss`` (model and TensorFlow included) when the file is made,
before LiteRT loads it; then the file is written, let go, and LiteRT maps it and runs it on
2 inputs (the peak after that is the last column but one); its float outputs are compared
with Keras'. Writes ``bench/results_tflite_segments.md`` (RESULTS.md includes it).
"""

from __future__ import annotations

import argparse
import gc
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
#: Nodes computed from weights alone go with the part that uses them.
_WEIGHT_OPS = ("Identity", "Cast", "Reshape", "Transpose")


def _src(name: str) -> tuple[str, int]:
    node, _, port = name.lstrip("^").partition(":")
    return node, int(port or 0)


def _is_output(node: Any) -> bool:
    """The frozen function's outputs are ``Identity``, ``Identity_1``, ..."""
    return node.op == "Identity" and node.name.split("_")[0] == "Identity"


def _data_inputs(node: Any) -> list[str]:
    return [i for i in node.input if not i.startswith("^")]


def walk_order(graph_def: Any) -> list[Any]:
    """Nodes in the order a depth-first walk from the outputs needs them."""
    by_name = {n.name: n for n in graph_def.node}
    consumed = {_src(i)[0] for n in graph_def.node for i in n.input}
    sinks = [n.name for n in graph_def.node if n.name not in consumed and _is_output(n)]
    order, seen = [], set()
    for sink in sinks:
        stack = [(sink, False)]
        while stack:
            name, done = stack.pop()
            if done:
                order.append(by_name[name])
            elif name not in seen:
                seen.add(name)
                stack.append((name, True))
                ins = [_src(i)[0] for i in _data_inputs(by_name[name])]
                stack += [(i, False) for i in reversed(ins) if i not in seen]
    return order


def plan(
    nodes: list[Any], parts: int, sizes: dict[str, int] | None = None
) -> tuple[set[str], list[tuple[int, tuple[str, int]]]]:
    """Weight nodes, and the cuts: (position, the one tensor live after it).

    ``sizes``: bytes of the constants whose values were left out of the GraphDef.
    """
    weights: set[str] = set()
    for n in nodes:
        ins = [_src(i)[0] for i in _data_inputs(n)]
        if n.op == "Const" or (n.op in _WEIGHT_OPS and ins and all(i in weights for i in ins)):
            weights.add(n.name)
    last: dict[tuple[str, int], int] = {}
    nbytes = [0] * len(nodes)
    counted: set[str] = set()
    by_name = {n.name: n for n in nodes}
    for j, n in enumerate(nodes):
        for i in _data_inputs(n):
            if _src(i)[0] not in weights:
                last[_src(i)] = j
            elif n.name not in weights:
                nbytes[j] += _weight_bytes(by_name, _src(i)[0], counted, sizes or {})
    cuts, alive = [], set()
    for j, n in enumerate(nodes):
        alive = {s for s in alive if last[s] > j}
        alive |= {s for s in last if s[0] == n.name and last[s] > j}
        if len(alive) == 1 and n.op != "Placeholder":
            cuts.append((j, next(iter(alive))))
    total, running, cum = sum(nbytes), 0, []
    for b in nbytes:
        running += b
        cum.append(running)
    chosen: list[tuple[int, tuple[str, int]]] = []
    for q in range(1, parts):
        best = min(cuts, key=lambda c: abs(cum[c[0]] - total * q / parts))
        if not chosen or best[0] > chosen[-1][0]:
            chosen.append(best)
    return weights, chosen


def _weight_bytes(by_name: dict[str, Any], name: str, counted: set[str], sizes: dict) -> int:
    total, stack = 0, [name]
    while stack:
        u = stack.pop()
        if u in counted:
            continue
        counted.add(u)
        node = by_name[u]
        if node.op == "Const":
            total += sizes.get(u, len(node.attr["value"].tensor.tensor_content))
        stack += [_src(i)[0] for i in _data_inputs(node)]
    return total


def _part_graph(nodes, weights, body, cut_in, shapes, variables=None) -> Any:
    """The GraphDef of one part: its nodes, the weights they read (values read from
    ``variables`` now, one at a time, for the constants left empty), a placeholder in front."""
    import numpy as np
    import tensorflow as tf

    by_name = {n.name: n for n in nodes}
    needed, stack = set(), [_src(i)[0] for n in body for i in _data_inputs(n)]
    while stack:
        u = stack.pop()
        if u in weights and u not in needed:
            needed.add(u)
            stack += [_src(i)[0] for i in _data_inputs(by_name[u])]
    part = tf.compat.v1.GraphDef()
    if cut_in is not None:
        ph = part.node.add(name="part_input", op="Placeholder")
        dtype, shape = shapes[cut_in]
        ph.attr["dtype"].type = dtype
        ph.attr["shape"].shape.CopyFrom(shape)
    for n in [by_name[u] for u in sorted(needed)] + [n for n in body if n.name not in weights]:
        m = part.node.add()
        m.CopyFrom(n)
        if variables and n.name in variables:
            m.attr["value"].tensor.tensor_content = np.asarray(variables[n.name].numpy()).tobytes()
        ins = _data_inputs(m)
        if cut_in is not None:
            ins = ["part_input" if _src(i) == cut_in else i for i in ins]
        del m.input[:]
        m.input.extend(ins)
    return part


def _shapes(graph_def: Any, tensors: list[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """dtype and shape of ``tensors``, from a copy of the graph whose weights are one value."""
    import tensorflow as tf

    light = tf.compat.v1.GraphDef()
    for n in graph_def.node:
        m = light.node.add()
        m.CopyFrom(n)
        value = m.attr["value"].tensor if n.op == "Const" else None
        if value is not None and (len(value.tensor_content) > 1024 or _left_out(value)):
            value.tensor_content = b""
            value.float_val.append(0.0) if value.dtype == 1 else value.int_val.append(0)
    with tf.Graph().as_default() as g:
        tf.import_graph_def(light, name="")
        found = {t: g.get_tensor_by_name(f"{t[0]}:{t[1]}") for t in tensors}
        return {t: (v.dtype.as_datatype_enum, v.shape.as_proto()) for t, v in found.items()}


def _left_out(value: Any) -> bool:
    """A constant whose values :func:`_freeze_light` left out."""
    fields = ("tensor_content", "float_val", "int_val", "int64_val", "half_val", "bool_val")
    return not any(len(getattr(value, f)) for f in fields) and len(value.tensor_shape.dim) > 0


def _freeze_light(concrete: Any) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """The frozen GraphDef without its variables' values, name -> variable, name -> bytes.

    kerastl's freeze (each variable read when its constant is made) gives the GraphDef;
    a copy without the values is kept and the full one let go, so the weights are read
    again part by part.
    """
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants as c2c

    from kerastl.export.formats import onnx as kx_onnx

    data = kx_onnx._reading_when_needed()(
        func=concrete, lower_control_flow=False, aggressive_inlining=True
    )
    graph_def, _ = c2c._replace_variables_by_constants(converter_data=data)
    data.forget()
    variables = {
        name: entry[0].variable
        for name, entry in data._tensor_data.items()
        if hasattr(entry[0], "variable")
    }
    del data
    light = tf.compat.v1.GraphDef()
    for n in graph_def.node:
        if n.name in variables:  # dtype and shape only, never the values
            m = light.node.add(name=n.name, op="Const")
            m.attr["dtype"].CopyFrom(n.attr["dtype"])
            m.attr["value"].tensor.dtype = n.attr["value"].tensor.dtype
            m.attr["value"].tensor.tensor_shape.CopyFrom(n.attr["value"].tensor.tensor_shape)
        else:
            light.node.add().CopyFrom(n)
    del graph_def
    sizes = {k: int(np.prod(v.shape)) * v.dtype.size for k, v in variables.items()}
    return light, variables, sizes


def _convert_part(
    part: Any, inputs: list[str], outputs: list[str], precision: str = "float32"
) -> bytes:
    """One part's file, with kerastl's converter settings for ``precision`` (not int8)."""
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        tf.import_graph_def(part, name="")
        ins = [g.get_tensor_by_name(n) for n in inputs]
        outs = [g.get_tensor_by_name(n) for n in outputs]
        converter = tf.compat.v1.lite.TFLiteConverter(part, ins, outs)
        if precision in ("float16", "dynamic"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def segments(
    concrete: Any, parts: int, precision: str = "float32"
) -> tuple[bytearray, list[dict[str, Any]]]:
    """The TFLite file of ``concrete``, converted part by part, and per-part figures."""
    graph_def, variables, sizes = _freeze_light(concrete)
    nodes = walk_order(graph_def)
    weights, cuts = plan(nodes, parts, sizes)
    shapes = _shapes(graph_def, [c[1] for c in cuts])
    sinks = [f"{n.name}:0" for n in nodes if _is_output(n)]
    first_input = next(f"{n.name}:0" for n in nodes if n.op == "Placeholder")
    bounds = [(-1, None), *cuts, (len(nodes) - 1, None)]
    files, figures = [], []
    for (a, cut_in), (b, cut_out) in zip(bounds, bounds[1:]):
        start = time.perf_counter()
        body = nodes[a + 1 : b + 1]
        part = _part_graph(nodes, weights, body, cut_in, shapes, variables)
        inputs = ["part_input:0"] if cut_in is not None else [first_input]
        outputs = [f"{cut_out[0]}:{cut_out[1]}"] if cut_out is not None else sinks
        files.append(_convert_part(part, inputs, outputs, precision))
        del part
        gc.collect()
        figures.append(
            {
                "nodes": len(body),
                "mb": round(len(files[-1]) / 1e6, 1),
                "s": round(time.perf_counter() - start, 1),
                "peak_mb": round(_peak_mb()),
            }
        )
    del nodes, graph_def
    gc.collect()
    return join(files), figures


def join(files: list[bytes]) -> bytearray:
    """One flatbuffer of chained single-subgraph files: each file's first input is the
    previous file's first output; operator codes shared, buffers and tensors renumbered.
    ``files`` is emptied on the way (each file let go once it is read)."""
    from ai_edge_litert import schema_py_generated as schema

    from kerastl.export.formats import tflite_metadata

    out = schema.ModelT.InitFromPackedBuf(files[0], 0)
    files[0] = b""
    main = out.subgraphs[0]
    for k in range(1, len(files)):
        model = schema.ModelT.InitFromPackedBuf(files[k], 0)
        files[k] = b""
        _append(out, main, model)
        del model
    out.signatureDefs = None
    size = sum(len(b.data) for b in out.buffers if b.data is not None)
    return tflite_metadata.pack(out, size + (1 << 20))


def _append(out: Any, main: Any, model: Any) -> None:
    def key(code: Any) -> tuple:
        return (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)

    codes = [key(c) for c in out.operatorCodes]
    code_map = {}
    for i, code in enumerate(model.operatorCodes):
        if key(code) not in codes:
            out.operatorCodes.append(code)
            codes.append(key(code))
        code_map[i] = codes.index(key(code))
    buffer_map = {0: 0}
    for i, buf in enumerate(model.buffers[1:], start=1):
        out.buffers.append(buf)
        buffer_map[i] = len(out.buffers) - 1
    sub = model.subgraphs[0]
    tensor_map = {sub.inputs[0]: main.outputs[0]}
    for i, tensor in enumerate(sub.tensors):
        if i not in tensor_map:
            tensor.buffer = buffer_map.get(tensor.buffer, 0)
            main.tensors.append(tensor)
            tensor_map[i] = len(main.tensors) - 1
    for op in sub.operators:
        op.opcodeIndex = code_map[op.opcodeIndex]
        op.inputs = [tensor_map[i] if i >= 0 else i for i in op.inputs]
        op.outputs = [tensor_map[i] for i in op.outputs]
        main.operators.append(op)
    main.outputs = [tensor_map[i] for i in sub.outputs]


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
