"""Scaling: MirroredStrategy on 1 vs 2 logical CPU devices (a functional check here).

The process splits its CPU into two logical devices before TensorFlow starts, then:

* ``kerastl.train.get_strategy("mirrored")`` must pick both logical CPUs (2 replicas);
* the same model (same initial weights, BatchNorm frozen, no dropout) trained one step
  on the same global batch with 1 and with 2 replicas must end with the same loss and
  weights (the gradients are all-reduced means);
* step time with 1 vs 2 replicas, alternating: both replicas share the same 2 physical
  cores, so no speed-up is expected - real speed-up needs several GPUs or hosts;
* ``kerastl.train.train`` with ``train.strategy: mirrored`` runs an epoch end to end.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np

from bench import _plain
from bench._harness import Bar, Section, alternate, fmt, last_json_line, log, ratio, run_child

GLOBAL_BATCH = 32


def run(quick: bool = False) -> Section:
    """1 vs 2 replicas of MirroredStrategy on logical CPUs."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras

    import kerastl
    from kerastl.train import get_strategy

    size = 64
    steps, reps = 3, (3 if quick else 6)
    sec = Section(
        "distribute",
        "Scaling: MirroredStrategy on 1 vs 2 logical CPU devices",
        params={
            "backbone": "mobilenet_v3_small",
            "input": size,
            "global_batch": GLOBAL_BATCH,
            "steps_per_round": steps,
            "rounds": reps,
        },
    )
    two = get_strategy("mirrored")
    one = tf.distribute.MirroredStrategy(devices=["/cpu:0"])
    x = _plain.random_images(GLOBAL_BATCH * steps, size, seed=0)
    y = np.random.default_rng(0).integers(0, 5, len(x))

    def build(strategy, weights=None):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            m = kerastl.build(
                "mobilenet_v3_small",
                num_classes=5,
                input_shape=(size, size, 3),
                freeze="none",
                compile=False,
            )
            if weights is not None:
                m.set_weights(weights)
            kerastl.compile_for_task(m, optimizer=keras.optimizers.SGD(0.01))
        return m

    m1 = build(one)
    _plain.informative_batchnorm(m1, x[:GLOBAL_BATCH])  # otherwise every output is uniform
    start = m1.get_weights()
    m2 = build(two, start)
    batch = tf.data.Dataset.from_tensor_slices((x[:GLOBAL_BATCH], y[:GLOBAL_BATCH])).batch(
        GLOBAL_BATCH
    )
    h1 = m1.fit(batch, epochs=1, verbose=0)
    h2 = m2.fit(batch, epochs=1, verbose=0)
    w_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(m1.get_weights(), m2.get_weights()))
    loss1, loss2 = h1.history["loss"][0], h2.history["loss"][0]
    log(f"one step: loss {loss1:.6f} vs {loss2:.6f}, max weight diff {w_diff:.2e}")
    same = abs(loss1 - loss2) <= 1e-4 * max(1.0, abs(loss1)) and w_diff <= 1e-4

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).repeat()

    def rounds(model):
        def go() -> list[float]:
            times: list[float] = []

            class CB(keras.callbacks.Callback):
                def on_train_batch_begin(self, b, logs=None):
                    self.t0 = time.perf_counter()

                def on_train_batch_end(self, b, logs=None):
                    times.append(time.perf_counter() - self.t0)

            model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[CB()])
            return times

        return go

    s = alternate({"1 replica": rounds(m1), "2 replicas": rounds(m2)}, reps, warmup=1)
    t = sec.table(
        f"Training step, global batch {GLOBAL_BATCH}, mobilenet_v3_small {size} px, 2 logical "
        "CPUs on the same 2 cores",
        ["strategy", "replicas", "s/step", "images/s", "vs 1 replica", "load"],
    )
    for label, n in (("1 replica", 1), ("2 replicas", 2)):
        smp = s[label]
        t.rows.append(
            [
                f"MirroredStrategy ({label})",
                n,
                fmt(smp.median),
                fmt(GLOBAL_BATCH / smp.median),
                fmt(ratio(s["1 replica"].median, smp.median)),
                fmt(smp.load),
            ]
        )
    sec.data["steps"] = {k: v.as_dict() for k, v in s.items()}

    # The user path, in its own process: a second MirroredStrategy over the same devices in
    # this process would reuse collective instance keys already bound to the models above.
    res = run_child(["-m", "bench.distribute", "--train-child", str(size)], timeout=300)
    train_run = last_json_line(res["stdout"]) or {
        "error": (res["killed"] or f"exit {res['returncode']}")
        + ": "
        + res["stderr"].strip()[-300:]
    }
    replicas = train_run.get("replicas")
    loss = float(train_run.get("loss", float("nan")))
    run_s = float(train_run.get("seconds", float("nan")))
    log(f"train() mirrored: {train_run}")
    sec.data["train_run"] = train_run
    ok = bool(same and two.num_replicas_in_sync == 2 and replicas == 2 and np.isfinite(loss))
    sec.bars.append(
        Bar(
            item="MirroredStrategy, 1 vs 2 logical CPUs (functional)",
            bar="2 replicas; same loss and weights as 1 replica after one step; train() runs",
            value=f"{two.num_replicas_in_sync} replicas from get_strategy('mirrored'); loss "
            f"{loss1:.5f} vs {loss2:.5f}, max weight diff {w_diff:.1e}; train(): {replicas} "
            f"replicas, loss {loss:.3f}, {run_s:.0f} s; step time 2 vs 1 replica "
            f"{ratio(s['2 replicas'].median, s['1 replica'].median):.2f} x",
            met=ok,
            note="no speed-up is expected: both logical devices share the same 2 cores; "
            "real scaling needs several GPUs or hosts",
        )
    )
    return sec


def train_child(size: int) -> dict:
    """In a fresh process with 2 logical CPUs: ``kerastl.train.train`` with strategy mirrored."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from kerastl import data as kdata
    from kerastl.train import train

    x = _plain.random_images(96, size, seed=0).astype("uint8")
    y = np.arange(96) % 3
    ex = kdata.from_numpy(x, y, class_names=["a", "b", "c"])
    with tempfile.TemporaryDirectory(prefix="kerastl_bench_dist_") as tmp:
        cfg = {
            "name": "mirrored",
            "output_dir": tmp,
            "seed": 0,
            "model": {"backbone": "mobilenet_v3_small", "input_size": size, "freeze": "none"},
            "data": {"verify": False},
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "strategy": "mirrored",
                "early_stopping": 0,
                "verbose": 0,
                "tensorboard": False,
                "resume": False,
                "cache_features": "off",
            },
        }
        t0 = time.perf_counter()
        res = train(cfg, examples=ex.split(0.25, seed=0), evaluate=False)
        out = {
            "seconds": time.perf_counter() - t0,
            "replicas": res.timings.get("replicas"),
            "strategy": res.timings.get("strategy"),
            "loss": float(res.history.get("loss", [float("nan")])[-1]),
        }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--train-child":
        train_child(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.distribute --train-child SIZE")
