"""The first ``fit`` call of a model: how often its training step is traced, and how long.

    python -m bench.first_step

Without a ``tf.distribute`` strategy, Keras builds the optimizer and the metrics inside the
first traced training step. That trace creates variables, so ``tf.function`` traces the
whole step a second time. A kerastl model builds them before the first trace
(``KerastlModel._maybe_symbolic_build``), as Keras itself does under a strategy.

Each row is one fresh process: build the model (random init, every layer trainable, a
2-class softmax head, Adam), then ``fit`` 8 images for one epoch (batch 4: two steps), then
a second one-epoch ``fit``. The first call holds the tracing; the second is the same
training without it. ``traces``: how many times the training step was traced.

* ``keras``: the ``keras.applications`` constructor with ``pooling="avg"`` and a Dense head,
  compiled as a user would (the plain-Keras way of the same job, preprocessing outside);
* ``kerastl``: ``kerastl.build`` (preprocessing inside the graph);
* ``kerastl, built in the step``: the same, with Keras' own deferred build put back.

Writes ``bench/results_first_step.md`` (RESULTS.md includes it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results_first_step.md"
#: (registry name, keras.applications constructor, image side)
MODELS = (
    ("mobilenet_v3_small", "MobileNetV3Small", 32),
    ("efficientnet_b0", "EfficientNetB0", 32),
    ("resnet50", "ResNet50", 32),
    ("nasnet_mobile", "NASNetMobile", 32),
)
MODES = ("keras", "kerastl", "kerastl, built in the step")

CHILD = """
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras

name, ctor, size, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
keras.utils.set_random_seed(0)
if mode == "keras":
    base = getattr(keras.applications, ctor)(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    model = keras.Model(base.input, keras.layers.Dense(2, activation="softmax")(base.output))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
else:
    import kerastl
    from kerastl.core.model import KerastlModel
    if mode != "kerastl":
        KerastlModel._maybe_symbolic_build = keras.Model._maybe_symbolic_build
    model = kerastl.build(name, num_classes=2, weights=None, freeze="none",
                          input_shape=(size, size, 3))
traces = []
step = model.train_step
def counted(data):
    traces.append(1)
    return step(data)
model.train_step = counted
x = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype("float32")
y = np.arange(8) % 2
t = time.perf_counter()
first = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0]
t1 = time.perf_counter()
model.fit(x, y, batch_size=4, epochs=1, verbose=0)
t2 = time.perf_counter()
print(json.dumps({"first_s": t1 - t, "second_s": t2 - t1, "traces": len(traces),
                  "loss": first}))
"""


def run_one(name: str, ctor: str, size: int, mode: str) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, ctor, str(size), mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=HERE.parent,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"model": name, "size": size, "mode": mode, **row}


def markdown(rows: list[dict[str, Any]], command: str, commit: str) -> str:
    lines = [
        "## The first `fit` call: traces of the training step",
        "",
        f"`{command}` ({commit}; {os.cpu_count()} cores).",
        "",
        "One fresh process per row: random init, every layer trainable, 2-class softmax head, "
        "Adam; `fit` on 8 images, batch 4, one epoch (first call: tracing and 2 steps), then "
        "the same again (second call: 2 steps). `keras`: the `keras.applications` constructor "
        "with `pooling='avg'` and a Dense head, preprocessing outside the graph; `kerastl`: "
        "`kerastl.build` (preprocessing inside); `kerastl, built in the step`: the same with "
        "Keras' own deferred build of the optimizer and metrics put back, which traces the "
        "step twice. The ratio is the first call's time over plain Keras' in the same run.",
        "",
        "| model | px | way | traces | first call s | second call s | first / keras |",
        "|---|---|---|---|---|---|---|",
    ]
    keras_first = {r["model"]: r["first_s"] for r in rows if r["mode"] == "keras"}
    for r in rows:
        ratio = r["first_s"] / keras_first[r["model"]] if r["model"] in keras_first else None
        lines.append(
            f"| {r['model']} | {r['size']} | {r['mode']} | {r['traces']} | {r['first_s']:.1f} | "
            f"{r['second_s']:.2f} | {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(m[0] for m in MODELS), help="comma-separated")
    args = p.parse_args(argv)
    wanted = args.models.split(",")
    unknown = sorted(set(wanted) - {m[0] for m in MODELS})
    if unknown:
        p.error(f"--models: {unknown} not in {[m[0] for m in MODELS]}")
    rows = []
    for name, ctor, size in (m for m in MODELS if m[0] in wanted):
        for mode in MODES:
            rows.append(run_one(name, ctor, size, mode))
            print(rows[-1], flush=True)
    cmd = "python -m bench.first_step" + (
        "" if len(wanted) == len(MODELS) else f" --models {args.models}"
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=HERE).returncode
    md = markdown(rows, cmd, commit + ("+changes" if dirty else ""))
    RESULTS_MD.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
