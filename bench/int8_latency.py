"""Why int8 ConvNeXt was slower than float32 in LiteRT on this CPU, kernel by kernel.

    python -m bench.int8_latency

``bench.export_memory``'s all-format runs timed ConvNeXt-B and ConvNeXt-L int8 TFLite files
slower than their float32 files (0.32x and 0.66x at c763a8b and 2c0bd9e), while ResNet-50,
ViT-L and BERT-L int8 files were faster. This benchmark finds the cause. One process, one interpreter thread, random-init weights;
every file runs both in LiteRT's interpreter as users get it (the XNNPACK delegate on) and
with TFLite's built-in kernels only (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``):

1. ConvNeXt-T through kerastl's own export graph and converter: float32, and int8 (the
   flatbuffer quantizer, 20 calibration inputs);
2. one depthwise convolution (the layer ConvNeXt has and ResNet lacks), k x k for k = 3,
   5, 7, at ConvNeXt-T's four stage shapes;
3. the same 7x7 convolution computed as three depthwise convolutions of 7x3, 7x3 and 7x1
   taps, summed (each at most 25 taps: ``kerastl.core.convs.split_depthwise``), and
   ConvNeXt-T with that split in its graph, which is the graph kerastl converts to TFLite
   since this benchmark (``one 7x7 conv``: the graph before).

Each figure is the median of the timed calls (files called alternately after one untimed
call). Writes ``bench/results_int8_latency.md`` (RESULTS.md includes it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results_int8_latency.md"
#: ConvNeXt-T's stages at 224 px: (height = width, channels, blocks).
STAGES = ((56, 96, 3), (28, 192, 3), (14, 384, 9), (7, 768, 3))
RUNTIMES = ("xnnpack", "builtin")


def _interpreter(content: bytes, runtime: str) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {}
    if runtime == "builtin":
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_content=bytes(content), num_threads=1, **kw)
    it.allocate_tensors()
    return it


def time_files(files: dict[str, bytes], x: Any, runs: int) -> dict[tuple[str, str], float]:
    """Median ms per (file, runtime): every interpreter called in turn, after one warm-up."""
    import numpy as np

    its = {(f, r): _interpreter(c, r) for f, c in files.items() for r in RUNTIMES}
    for it in its.values():
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in its}
    for _ in range(runs):
        for key, it in its.items():
            start = time.perf_counter()
            it.invoke()
            times[key].append(time.perf_counter() - start)
    return {k: round(float(np.median(v)) * 1000, 2) for k, v in times.items()}


def delegate_partitions(content: bytes) -> int:
    """How many parts XNNPACK takes the graph in (its DELEGATE nodes)."""
    it = _interpreter(content, "xnnpack")
    return sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


def _calibration(shape: tuple[int, ...], n: int = 20, scale: float = 1.0) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.uniform(0, 1, (n, *shape)) * scale).astype("float32")


def convnext_files(split: bool, cal: Any) -> dict[str, bytes]:
    """ConvNeXt-T's float32 and int8 TFLite files, through kerastl's export graph."""
    import keras

    import kerastl
    from kerastl.core.convs import large_depthwise_split
    from kerastl.export._trace import prepare
    from kerastl.export.formats import tflite
    from kerastl.export.formats.saved_model import write_graph

    keras.utils.set_random_seed(0)  # the same weights in both graphs
    prep = prepare(kerastl.build("convnext_tiny", num_classes=10))
    with tempfile.TemporaryDirectory() as tmp:
        with large_depthwise_split() if split else contextlib.nullcontext():
            write_graph(prep, Path(tmp) / "sm", extras=False)
        name = prep.modality.input_name
        return {
            "float32": tflite.convert(Path(tmp) / "sm", "float32", name),
            "int8": tflite.convert(Path(tmp) / "sm", "int8", name, calibration=cal),
        }


def layer_files(k: int, hw: int, c: int, split: bool) -> dict[str, bytes]:
    """One ``DepthwiseConv2D(k, padding='same')`` at ``hw x hw x c``: float32 and int8."""
    import keras
    import tensorflow as tf

    from kerastl.core.convs import large_depthwise_split

    keras.utils.set_random_seed(0)
    x = keras.Input((hw, hw, c), batch_size=1)
    model = keras.Model(x, keras.layers.DepthwiseConv2D(k, padding="same")(x))
    cal = _calibration((hw, hw, c))
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        with large_depthwise_split() if split else contextlib.nullcontext():
            model.export(tmp, format="tf_saved_model", verbose=False)
        for q in ("float32", "int8"):
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if q == "int8":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = lambda: ([cal[i : i + 1]] for i in range(len(cal)))
                conv.experimental_new_quantizer = False  # as kerastl converts
            files[q] = conv.convert()
    return files


def _scores(content: bytes, xs: Any) -> Any:
    """The file's first float output for each input, through the XNNPACK interpreter."""
    import numpy as np

    it = _interpreter(content, "xnnpack")
    out = next(d for d in it.get_output_details() if d["dtype"] == np.float32)
    rows = []
    for x in xs:
        it.set_tensor(it.get_input_details()[0]["index"], x[None])
        it.invoke()
        rows.append(it.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def convnext_rows(runs: int) -> list[dict[str, Any]]:
    """ConvNeXt-T with one 7x7 conv per block and with it split: time and fidelity."""
    import numpy as np

    cal = _calibration((224, 224, 3), scale=255.0)
    test = _calibration((224, 224, 3), n=8, scale=255.0)[::-1].copy()
    ref = None
    rows = []
    for split in (False, True):
        files = convnext_files(split, cal)
        if ref is None:
            ref = _scores(files["float32"], test)  # the exported float32 file = Keras (checked)
        ms = time_files(files, test[:1], runs)
        for q, content in files.items():
            got = _scores(content, test)
            cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
            rows.append(
                {
                    "graph": "7x7 split (kerastl)" if split else "one 7x7 conv (before)",
                    "precision": q,
                    **{r: ms[(q, r)] for r in RUNTIMES},
                    "partitions": delegate_partitions(content),
                    "max_abs_diff": float(np.abs(got - ref).max()),
                    "min_cosine": float(cos.min()),
                }
            )
    return rows


def layer_rows(runs: int) -> list[dict[str, Any]]:
    """Depthwise k x k at ConvNeXt-T's stage shapes, and the 7x7 split; ms per runtime."""
    import numpy as np

    rows = []
    cases = [(k, 56, 96, False) for k in (3, 5)]
    cases += [(7, hw, c, split) for hw, c, _ in STAGES for split in (False, True)]
    for k, hw, c, split in cases:
        files = layer_files(k, hw, c, split)
        x = np.random.default_rng(1).uniform(0, 1, (1, hw, hw, c)).astype("float32")
        ms = time_files(files, x, runs)
        rows.append(
            {
                "kernel": f"{k}x{k}" + (" as 7x3+7x3+7x1" if split else ""),
                "shape": f"{hw}x{hw}x{c}",
                **{f"{q}/{r}": ms[(q, r)] for q in files for r in RUNTIMES},
            }
        )
    return rows


def _stage_total(layers: list[dict[str, Any]], split: bool, column: str) -> float:
    """ms ConvNeXt-T spends in its 18 depthwise 7x7 layers, from the per-layer rows."""
    blocks = {f"{hw}x{hw}x{c}": n for hw, c, n in STAGES}
    suffix = " as 7x3+7x3+7x1" if split else ""
    return sum(r[column] * blocks[r["shape"]] for r in layers if r["kernel"] == "7x7" + suffix)


def markdown(convnext: list[dict[str, Any]], layers: list[dict[str, Any]], cmd: str) -> str:
    """The section RESULTS.md includes."""
    lines = [
        "## ConvNeXt int8 in LiteRT: why it was slower than float32 (bench/int8_latency.py)",
        "",
        f"`{cmd}` ({_git()}). " + " ".join(" ".join(__doc__.split("\n\n")[2:4]).split()),
        "",
        "ConvNeXt-T, batch 1, 1 thread, ms (XNNPACK = LiteRT's default; built-in = TFLite's "
        "own kernels only). Partitions: the parts XNNPACK takes the graph in. Fidelity: the "
        "file's scores on 8 inputs against the float32 file with one 7x7 conv (which "
        "validation checks against Keras).",
        "",
        "| graph | precision | XNNPACK ms | built-in ms | XNNPACK partitions "
        "| max abs diff | min cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in convnext:
        lines.append(
            f"| {r['graph']} | {r['precision']} | {r['xnnpack']:.1f} | {r['builtin']:.1f} "
            f"| {r['partitions']} | {r['max_abs_diff']:.2g} | {r['min_cosine']:.4f} |"
        )
    lines += [
        "",
        "One `DepthwiseConv2D(k, padding='same')`, batch 1, 1 thread, ms:",
        "",
        "| kernel | input | float32 XNNPACK | float32 built-in | int8 XNNPACK | int8 built-in |",
        "|---|---|---|---|---|---|",
    ]
    cols = [f"{q}/{r}" for q in ("float32", "int8") for r in RUNTIMES]
    for r in layers:
        lines.append(
            f"| {r['kernel']} | {r['shape']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |"
        )
    lines += ["", _summary(convnext, layers), ""]
    return "\n".join(lines)


def _summary(convnext: list[dict[str, Any]], layers: list[dict[str, Any]]) -> str:
    """The measured reading, in words, from the rows above."""
    t = {(r["graph"], r["precision"]): r for r in convnext}
    one, split = "one 7x7 conv (before)", "7x7 split (kerastl)"
    dw = {s: _stage_total(layers, s, "int8/xnnpack") for s in (False, True)}
    dwf = _stage_total(layers, False, "float32/xnnpack")
    return (
        f"Reading: with one 7x7 conv per block, ConvNeXt-T int8 takes "
        f"{t[one, 'int8']['xnnpack']:.0f} ms with XNNPACK against "
        f"{t[one, 'float32']['xnnpack']:.0f} ms for float32, and "
        f"{t[one, 'int8']['builtin']:.0f} ms with the built-in kernels. Its 18 depthwise 7x7 "
        f"layers alone add up to {dw[False]:.0f} ms in int8 with XNNPACK ({dwf:.0f} ms in "
        "float32), from the per-layer rows: XNNPACK's depthwise kernels of more than 25 taps "
        "are the slow path on this CPU, and its 3x3 and 5x5 ones are not. Cut into parts of "
        f"at most 25 taps, the same 18 layers take {dw[True]:.0f} ms in int8, and the whole "
        f"split model {t[split, 'int8']['xnnpack']:.0f} ms (float32: "
        f"{t[split, 'float32']['xnnpack']:.0f} ms); the int8 file's min cosine is "
        f"{t[split, 'int8']['min_cosine']:.4f} against {t[one, 'int8']['min_cosine']:.4f} "
        "unsplit. ResNet-50, ViT "
        "and BERT have no such layer; their int8 files are faster than float32 (latency "
        "table of bench/export_memory.py)."
    )


def _git() -> str:
    from bench.export_memory import _git as git

    return git()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.int8_latency", description=__doc__)
    p.add_argument("--runs", type=int, default=15, help="timed calls per file and runtime")
    args = p.parse_args(argv)
    cmd = "python -m bench.int8_latency" + (f" --runs {args.runs}" if args.runs != 15 else "")
    layers = layer_rows(args.runs)
    for r in layers:
        print(r, flush=True)
    convnext = convnext_rows(args.runs)
    for r in convnext:
        print(r, flush=True)
    RESULTS_MD.write_text(markdown(convnext, layers, cmd))
    from bench import report

    report.write(report.load())
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
