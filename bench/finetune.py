"""(2) Fine-tuning step time: kerastl against a hand-written keras.Model, and what XLA and
``mixed_bfloat16`` change on this CPU; scaling of throughput with batch size.

kerastl side: ``kerastl.build(name, num_classes, weights=None, freeze="none")``
(compiled by kerastl: Adam, sparse cross-entropy, accuracy) and ``model.fit``.
Plain side: :func:`bench._plain.classifier` (the Keras guide's model) with the
same backbone weights, batch, optimizer and loss. Both fit the same in-memory
batches; a callback times every step; each round is one ``fit`` call of
``steps`` steps, and rounds alternate between the sides.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench import _plain
from bench._harness import Bar, Section, alternate, fmt, load1, log, machine, ratio

BAR_SLOWER = 0.03


class StepTimer:
    """Keras callback recording the wall time of every training step."""

    def __init__(self):
        import keras

        outer = self

        class _CB(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                outer._t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                outer.times.append(time.perf_counter() - outer._t0)

        self.callback = _CB()
        self.times: list[float] = []
        self._t0 = 0.0


def _bf16_note() -> str:
    """What this CPU offers bfloat16 (its flags), for the mixed_bfloat16 row's reader."""
    flags = machine().get("cpu_flags")
    if flags is None:
        return "The CPU's bfloat16 support is unknown (no /proc/cpuinfo)."
    native = sorted(set(flags) & {"avx512_bf16", "amx_bf16", "bf16"})
    if native:
        return f"The CPU has native bfloat16 ({', '.join(native)})."
    return "The CPU has no bfloat16 instructions (no avx512_bf16, amx_bf16 or bf16 flag)."


def _dataset(size: int, batch: int, steps: int, seed: int = 0):
    import tensorflow as tf

    x = _plain.random_images(batch * steps, size, seed)
    y = np.random.default_rng(seed).integers(0, 5, batch * steps)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat()


def _fit_round(model, ds, steps: int):
    """A callable for :func:`alternate`: one ``fit`` of ``steps`` steps -> every step's time.

    The step times of all rounds are pooled, so the median is over every step.
    """

    def go() -> list[float]:
        timer = StepTimer()
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer.callback])
        return list(timer.times)

    return go


def _warm_time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _pair(
    sec: Section,
    name: str,
    size: int,
    batch: int,
    steps: int,
    reps: int,
    train_batchnorm: bool,
) -> dict[str, Any]:
    """kerastl vs plain Keras for one backbone; adds a row and returns the figures."""
    import keras

    import kerastl

    keras.utils.set_random_seed(0)
    shape = (size, size, 3)
    kt = kerastl.build(
        name,
        num_classes=5,
        input_shape=shape,
        weights=None,
        freeze="none",
        train_batchnorm=train_batchnorm,
    )
    base = _plain.base_model(name, shape)
    base.set_weights(kt.get_layer("backbone").get_weights())
    plain, _ = _plain.classifier(
        name, shape, 5, base_trainable=True, bn_trainable=train_batchnorm, base=base
    )
    ds = _dataset(size, batch, steps)
    sides = {"kerastl": _fit_round(kt, ds, steps), "plain keras": _fit_round(plain, ds, steps)}
    warm = {k: _warm_time(f) for k, f in sides.items()}
    log(f"pair {name}: warm {warm}")
    s = alternate(sides, reps, warmup=0)
    r = ratio(s["kerastl"].median, s["plain keras"].median)
    trainable = {
        "kerastl": len(kt.trainable_weights),
        "plain keras": len(plain.trainable_weights),
    }
    return {
        "samples": s,
        "ratio": r,
        "warm": warm,
        "trainable": trainable,
        "label": f"{name} {size}px batch {batch}, BatchNorm "
        + ("training" if train_batchnorm else "frozen (inference mode)"),
    }


PRECISION_SETTINGS = {
    "float32": ("float32", False),
    "float32 + jit_compile": ("float32", True),
    "mixed_bfloat16": ("mixed_bfloat16", False),
    "mixed_bfloat16 + jit_compile": ("mixed_bfloat16", True),
}


def _precision_variants(
    sec: Section, name: str, size: int, batch: int, steps: int, reps: int, labels: list[str]
) -> dict[str, Any]:
    """float32 / XLA / mixed_bfloat16 / both, on the kerastl model, alternating."""
    import keras

    import kerastl

    shape = (size, size, 3)
    ds = _dataset(size, batch, steps)
    sides, warm, models = {}, {}, {}
    for label in labels:
        policy, jit = PRECISION_SETTINGS[label]
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        m = kerastl.build(
            name, num_classes=5, input_shape=shape, weights=None, freeze="none", compile=False
        )
        kerastl.compile_for_task(m, jit_compile=jit)
        keras.mixed_precision.set_global_policy("float32")
        models[label] = m
        sides[label] = _fit_round(m, ds, steps)
        warm[label] = _warm_time(sides[label])
        log(f"precision {label}: first fit {warm[label]:.1f} s")
    s = alternate(sides, reps, warmup=0)
    log("precision variants timed")
    return {"samples": s, "warm": warm}


def _accuracy(size: int, epochs: int, name: str, labels: list[str]) -> dict[str, Any]:
    """Fine-tune on digits with each setting (same start weights, seed); validation accuracy.

    The start weights are random with BatchNorm statistics set from the data
    (no ImageNet here); BatchNorm stays frozen (kerastl's default), everything
    else trains.
    """
    import keras

    import kerastl

    x, y = _plain.digits_rgb(size)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, va = idx[: int(0.8 * len(x))], idx[int(0.8 * len(x)) :]
    keras.utils.set_random_seed(0)
    start = kerastl.build(name, num_classes=10, input_shape=(size, size, 3), compile=False)
    _plain.informative_batchnorm(start, x[tr[:256]])
    weights = start.get_weights()
    out = {}
    for label in labels:
        policy, jit = PRECISION_SETTINGS[label]
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        m = kerastl.build(
            name,
            num_classes=10,
            input_shape=(size, size, 3),
            weights=None,
            freeze="none",
            train_batchnorm=False,  # as described (random init alone would train BatchNorm)
            compile=False,
        )
        keras.mixed_precision.set_global_policy("float32")
        m.set_weights(weights)
        kerastl.compile_for_task(m, learning_rate=1e-3, jit_compile=jit)
        t0 = time.perf_counter()
        h = m.fit(
            x[tr],
            y[tr],
            validation_data=(x[va], y[va]),
            epochs=epochs,
            batch_size=64,
            verbose=0,
            shuffle=True,
        )
        log(f"accuracy {label}: {h.history['val_accuracy']}")
        out[label] = {
            "val_accuracy": float(h.history["val_accuracy"][-1]),
            "best_val_accuracy": float(max(h.history["val_accuracy"])),
            "history": [float(v) for v in h.history["val_accuracy"]],
            "seconds": time.perf_counter() - t0,
            "load": load1(),
        }
    return out


def _batch_scaling(
    name: str, size: int, batches: list[int], steps: int, reps: int
) -> dict[str, Any]:
    import keras

    import kerastl

    keras.utils.set_random_seed(0)
    m = kerastl.build(name, num_classes=5, input_shape=(size, size, 3), weights=None, freeze="none")
    sides = {f"batch {b}": _fit_round(m, _dataset(size, b, steps), steps) for b in batches}
    return alternate(sides, reps, warmup=1)


def run(quick: bool = False) -> Section:
    """Fine-tuning benchmarks; ``quick`` keeps one pair, no XLA, few rounds, two batch sizes."""
    size = 96 if quick else 128
    batch, steps = 32, 3
    reps = 5 if quick else 8
    pairs = [("mobilenet_v3_small", False)]
    if not quick:
        pairs.append(("mobilenet_v2", True))
    labels = (
        ["float32", "mixed_bfloat16"]
        if quick
        else ["float32", "float32 + jit_compile", "mixed_bfloat16"]
    )
    acc_labels = [] if quick else ["float32", "mixed_bfloat16"]
    sec = Section(
        "finetune",
        "(2) Fine-tuning step time, XLA and bfloat16, batch-size scaling",
        params={
            "input": size,
            "batch": batch,
            "steps_per_round": steps,
            "rounds": reps,
            "weights": None,
            "freeze": "none",
        },
    )
    t = sec.table(
        "Training step time, kerastl.build + fit vs hand-written keras.applications base + "
        "GlobalAveragePooling + Dense + fit (same weights, batch, optimizer, loss; median over "
        "every step of alternating rounds)",
        [
            "model",
            "kerastl s/step",
            "plain s/step",
            "kerastl / plain",
            "images/s kerastl",
            "first fit s (trace) kerastl / plain",
            "trainable tensors kerastl / plain",
            "load",
        ],
    )
    for name, tbn in pairs:
        p = _pair(sec, name, size, batch, steps, reps, tbn)
        s = p["samples"]
        t.rows.append(
            [
                p["label"],
                fmt(s["kerastl"].median),
                fmt(s["plain keras"].median),
                fmt(p["ratio"]),
                fmt(batch / s["kerastl"].median),
                f"{p['warm']['kerastl']:.1f} / {p['warm']['plain keras']:.1f}",
                f"{p['trainable']['kerastl']} / {p['trainable']['plain keras']}",
                fmt(s["kerastl"].load),
            ]
        )
        sec.data[f"pair {p['label']}"] = {k: v.as_dict() for k, v in s.items()}
        sec.data[f"pair {p['label']}"]["trainable_weights"] = p["trainable"]
        met = p["ratio"] <= 1 + BAR_SLOWER
        sec.bars.append(
            Bar(
                item=f"fine-tune step, {p['label']}",
                bar=f"kerastl <= {1 + BAR_SLOWER:.2f} x plain",
                value=f"{p['ratio']:.3f} x ({s['kerastl'].median * 1000:.0f} vs "
                f"{s['plain keras'].median * 1000:.0f} ms/step, load {s['kerastl'].load})",
                met=met,
                note=""
                if met
                else "same layers and ops on both sides; on this shared machine step times spread by "
                f"+-{100 * max(s['kerastl'].spread, s['plain keras'].spread):.0f}% (interquartile), "
                "more than the 3% bar",
            )
        )

    name = "mobilenet_v3_small"
    prec = _precision_variants(sec, name, size, batch, steps, max(3, reps // 3), labels)
    ps = prec["samples"]
    base = ps["float32"].median
    t2 = sec.table(
        f"What jit_compile (XLA) and mixed_bfloat16 change: {name} {size}px batch {batch}, "
        "kerastl model, alternating",
        ["setting", "s/step", "vs float32", "first fit s (trace + compile)", "load"],
    )
    for label, smp in ps.items():
        t2.rows.append(
            [
                label,
                fmt(smp.median),
                fmt(ratio(smp.median, base)),
                fmt(prec["warm"][label]),
                fmt(smp.load),
            ]
        )
    sec.data["precision"] = {k: v.as_dict() for k, v in ps.items()}
    sec.data["precision_warm"] = prec["warm"]

    acc_epochs = 6
    if acc_labels:
        acc = _accuracy(32, acc_epochs, name, acc_labels)
        t3 = sec.table(
            f"Accuracy effect on a tiny task: {name} (random weights, BatchNorm statistics set "
            "from the data, BatchNorm frozen, everything else trains) fine-tuned on "
            f"scikit-learn digits at 32 px, {acc_epochs} epochs, batch 64, seed 0, 1437 train / "
            "360 validation",
            ["setting", "final val accuracy", "best val accuracy", "fit s", "load"],
        )
        for label, a in acc.items():
            t3.rows.append(
                [
                    label,
                    fmt(a["val_accuracy"]),
                    fmt(a["best_val_accuracy"]),
                    fmt(a["seconds"]),
                    fmt(a["load"]),
                ]
            )
        sec.data["accuracy"] = acc
    fastest = min(ps, key=lambda k: ps[k].median)
    sec.notes.append(
        f"Fastest setting on this CPU: {fastest} "
        f"({ratio(ps[fastest].median, base):.2f} x the float32 step time). "
        + (
            "kerastl's defaults (train.precision: float32, train.jit_compile: false; "
            "`compile_for_task` leaves Keras' jit_compile='auto', which is off on CPU) are "
            "already the fastest here, so they stay."
            if fastest == "float32"
            else f"Consider making {fastest} the CPU default if the accuracy table shows no loss."
        )
        + f" {_bf16_note()} XLA figures come from the full run only: compiling takes minutes."
    )

    batches = [8, 32] if quick else [8, 16, 32, 64]
    bs = _batch_scaling(name, size, batches, steps, max(3, reps // 3))
    t4 = sec.table(
        f"Fine-tune throughput against batch size: {name} {size}px, kerastl, alternating",
        ["batch", "s/step", "images/s", "vs smallest batch (images/s)", "load"],
    )
    first = None
    for b in batches:
        smp = bs[f"batch {b}"]
        ips = b / smp.median
        first = first or ips
        t4.rows.append([b, fmt(smp.median), fmt(ips), fmt(ips / first), fmt(smp.load)])
    sec.data["batch_scaling"] = {k: v.as_dict() for k, v in bs.items()}
    return sec
