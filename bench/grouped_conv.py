"""ConvNeXt's grouped convolutions: Keras' XLA-compiled grouped conv vs kerastl's depthwise.

    python -m bench.grouped_conv

Keras' TensorFlow backend runs a grouped convolution (ConvNeXt's 7x7
``Conv2D(groups=channels)``) through a ``tf.function(jit_compile=True)``; kerastl runs the
same layer as a depthwise convolution while it trains, extracts features and exports
(:mod:`kerastl.core.convs`). In one process, on the same random-init model:

* inference: the model's call (``training=False``) in a ``tf.function``, batch 1 and 8;
* training: ``train_on_batch`` (Adam, batch 16), two copies of one model, one per way.

Calls alternate between the two ways; each figure is the median of the timed calls
after one untimed call. Writes ``bench/results_grouped_conv.md`` (RESULTS.md includes it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results_grouped_conv.md"


def _median_pair(plain: Any, ours: Any, runs: int) -> tuple[float, float]:
    """Median seconds of ``plain()`` and ``ours()``, called alternately after one warm-up."""
    import numpy as np

    plain(), ours()
    a, b = [], []
    for _ in range(runs):
        for fn, out in ((plain, a), (ours, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return float(np.median(a)), float(np.median(b))


def inference(entry: str, size: int, batch: int, runs: int) -> dict[str, Any]:
    import keras
    import numpy as np
    import tensorflow as tf

    import kerastl
    from kerastl.core.convs import grouped_convs_as_depthwise

    keras.utils.set_random_seed(0)
    model = kerastl.build(entry, num_classes=10, input_shape=(size, size, 3), weights=None)
    x = tf.constant(np.random.default_rng(1).uniform(0, 255, (batch, size, size, 3)), tf.float32)
    plain = tf.function(lambda t: model(t, training=False), autograph=False)

    def swapped(t):
        with grouped_convs_as_depthwise():
            return model(t, training=False)

    ours = tf.function(swapped, autograph=False)
    diff = float(np.abs(plain(x).numpy() - ours(x).numpy()).max())
    a, b = _median_pair(lambda: plain(x).numpy(), lambda: ours(x).numpy(), runs)
    return {"entry": entry, "job": f"inference, batch {batch}", "keras_s": a, "kerastl_s": b,
            "max_abs_diff": diff}  # fmt: skip


def training(entry: str, size: int, batch: int, runs: int) -> dict[str, Any]:
    import keras
    import numpy as np

    import kerastl
    from kerastl.core.convs import grouped_convs_as_depthwise

    def make() -> Any:
        keras.utils.set_random_seed(0)
        m = kerastl.build(entry, num_classes=3, input_shape=(size, size, 3), weights=None,
                          compile=False)  # fmt: skip
        m.trainable = True
        m.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
        return m

    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"), np.arange(batch) % 3
    plain_model, our_model = make(), make()

    def ours() -> float:
        with grouped_convs_as_depthwise():
            return our_model.train_on_batch(x, y)

    losses = [plain_model.train_on_batch(x, y), ours()]
    a, b = _median_pair(lambda: plain_model.train_on_batch(x, y), ours, runs)
    return {"entry": entry, "job": f"training step, batch {batch}", "keras_s": a,
            "kerastl_s": b, "max_abs_diff": abs(float(losses[0]) - float(losses[1]))}  # fmt: skip


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## ConvNeXt's grouped convolutions: Keras' XLA grouped conv vs kerastl's depthwise",
        "",
        f"`{command}` (one process, the two ways called alternately, median seconds; "
        "random-init models; inference in a `tf.function`, training with `train_on_batch`, "
        "Adam). Diff: max abs difference of the outputs (inference) or of the first step's "
        "loss (training).",
        "",
        "| entry | job | Keras s | kerastl s | speed-up | diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['entry']} | {r['job']} | {r['keras_s']:.3f} | {r['kerastl_s']:.3f} | "
            f"{r['keras_s'] / r['kerastl_s']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grouped_conv", description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    rows = [
        inference("convnext_base", 224, 1, args.runs),
        inference("convnext_base", 224, 8, args.runs),
        training("convnext_tiny", 96, 16, args.runs),
    ]
    command = "python -m bench.grouped_conv" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    RESULTS_MD.write_text(markdown(rows, command))
    from bench import report

    report.write(report.load())
    print(RESULTS_MD.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
