"""(3) Input pipeline: images per second from a folder of JPEGs (decode, resize, augment).

A folder of synthetic photos (smooth colour fields, shapes and noise, 320-480 px wide,
JPEG quality 90) is generated once, one sub-folder per class. Both sides produce
shuffled batches of 32 float32 images at ``size`` px with the same augmentation
(``kerastl.data.build_augmenter("standard")``: flip, rotation, zoom, contrast - the same
Keras layers on both sides), for 3 epochs, from a fresh dataset object each repetition:

* kerastl: ``kerastl.data.from_image_folder(root, verify=False)`` + ``make_dataset(ex,
  size, 32, shuffle=True, augment="standard")`` (decoded images cached as uint8 by default);
* Keras: ``keras.utils.image_dataset_from_directory(root, image_size=size, batch_size=32,
  shuffle=True, seed=0)`` + ``.map(augment, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)``,
  as the Keras guides write it;
* (full run) Keras with ``.cache()`` before the augmentation, to show where the gap comes from.

kerastl's default in ``kerastl train`` also verifies every file once (``verify=True``),
which is timed separately.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench._harness import Bar, Section, alternate, fmt, log, ratio

BATCH = 32
EPOCHS = 3
BAR = 1.5


def make_jpeg_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> int:
    """Write ``classes`` x ``per_class`` synthetic JPEG photos under ``root/<class>/``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    n = 0
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w = int(rng.integers(320, 481))
            h = int(w * rng.uniform(0.66, 0.8))
            small = rng.uniform(0, 255, (6, 8, 3)).astype("uint8")
            img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
                x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
                color = tuple(int(v) for v in rng.integers(0, 256, 3))
                (draw.ellipse if (i + c) % 2 else draw.rectangle)((x0, y0, x1, y1), fill=color)
            arr = np.asarray(img).astype("int16") + rng.integers(-12, 13, (h, w, 3))
            Image.fromarray(arr.clip(0, 255).astype("uint8")).save(
                folder / f"{i:05d}.jpg", quality=90
            )
            n += 1
    return n


def _consume(ds, epochs: int) -> list[float]:
    """Iterate ``ds`` for ``epochs`` epochs; seconds per epoch."""
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for x, _y in ds:
            x.shape  # noqa: B018 - the batch is materialised by iteration
        times.append(time.perf_counter() - t0)
    return times


def kerastl_side(root: Path, size: int, store: list):
    from kerastl import data as kdata

    def go() -> float:
        t0 = time.perf_counter()
        ex = kdata.from_image_folder(root, verify=False)
        ds = kdata.make_dataset(ex, size, BATCH, shuffle=True, seed=0, augment="standard")
        setup = time.perf_counter() - t0
        epochs = _consume(ds, EPOCHS)
        store.append({"setup": setup, "epochs": epochs, "n": len(ex)})
        return setup + sum(epochs)

    return go


def keras_side(root: Path, size: int, store: list, cache: bool = False):
    import keras
    import tensorflow as tf

    from kerastl.data import build_augmenter

    def go() -> float:
        t0 = time.perf_counter()
        ds = keras.utils.image_dataset_from_directory(
            str(root),
            image_size=(size, size),
            batch_size=BATCH,
            shuffle=True,
            seed=0,
            verbose=False,
        )
        if cache:
            ds = ds.cache()
        aug = build_augmenter("standard", seed=0)
        ds = ds.map(
            lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        ).prefetch(tf.data.AUTOTUNE)
        setup = time.perf_counter() - t0
        epochs = _consume(ds, EPOCHS)
        store.append({"setup": setup, "epochs": epochs})
        return setup + sum(epochs)

    return go


def run(quick: bool = False) -> Section:
    """kerastl's pipeline vs ``image_dataset_from_directory``, images/s over 3 epochs."""
    classes, per_class = (5, 50) if quick else (5, 160)
    size = 160
    reps = 2 if quick else 4
    sec = Section(
        "pipeline",
        "(3) Input pipeline: images/s from a folder of JPEGs",
        params={
            "images": classes * per_class,
            "classes": classes,
            "jpeg": "320-480 px, q90",
            "image_size": size,
            "batch": BATCH,
            "epochs": EPOCHS,
            "augment": "standard",
            "reps": reps,
        },
    )
    with tempfile.TemporaryDirectory(prefix="kerastl_bench_jpeg_") as tmp:
        root = Path(tmp) / "photos"
        t0 = time.perf_counter()
        n = make_jpeg_folder(root, classes, per_class)
        log(f"{n} JPEGs written in {time.perf_counter() - t0:.1f} s")
        store: dict[str, list] = {"kerastl": [], "keras": [], "keras + cache()": []}
        sides = {
            "kerastl": kerastl_side(root, size, store["kerastl"]),
            "keras": keras_side(root, size, store["keras"]),
        }
        if not quick:
            sides["keras + cache()"] = keras_side(root, size, store["keras + cache()"], True)
        s = alternate(sides, reps, warmup=1)
        from kerastl import data as kdata

        t0 = time.perf_counter()
        kdata.from_image_folder(root, verify=True)
        verify_s = time.perf_counter() - t0
    t = sec.table(
        f"{n} JPEGs -> batches of {BATCH} at {size} px with augmentation, {EPOCHS} epochs from "
        "a fresh dataset (median of alternating repetitions; setup = listing the folder and "
        "building the pipeline)",
        [
            "pipeline",
            "images/s (3 epochs)",
            "vs keras",
            "epoch 1 images/s",
            "epochs 2-3 images/s",
            "setup s",
            "load",
        ],
    )
    total = EPOCHS * n
    keras_ips = total / s["keras"].median
    for name, smp in s.items():
        runs = store[name][-len(smp.values) :]
        e1 = float(np.median([r["epochs"][0] for r in runs]))
        rest = float(np.median([sum(r["epochs"][1:]) for r in runs]))
        setup = float(np.median([r["setup"] for r in runs]))
        ips = total / smp.median
        t.rows.append(
            [
                name,
                fmt(ips),
                fmt(ratio(ips, keras_ips)),
                fmt(n / e1),
                fmt((EPOCHS - 1) * n / rest),
                fmt(setup),
                fmt(smp.load),
            ]
        )
        sec.data[name] = {**smp.as_dict(), "runs": runs}
    kt_ips = total / s["kerastl"].median
    r = ratio(kt_ips, keras_ips)
    kt_runs = store["kerastl"][-reps:]
    k_runs = store["keras"][-reps:]
    e1_ratio = ratio(
        float(np.median([x["epochs"][0] for x in k_runs])),
        float(np.median([x["epochs"][0] for x in kt_runs])),
    )
    rest_ratio = ratio(
        float(np.median([sum(x["epochs"][1:]) for x in k_runs])),
        float(np.median([sum(x["epochs"][1:]) for x in kt_runs])),
    )
    sec.bars.append(
        Bar(
            item=f"input pipeline, {n} JPEGs, {EPOCHS} epochs",
            bar=f">= {BAR} x keras.utils.image_dataset_from_directory",
            value=f"{r:.2f} x ({kt_ips:.0f} vs {keras_ips:.0f} images/s, load "
            f"{s['kerastl'].load}); first epoch alone {e1_ratio:.2f} x",
            met=r >= BAR,
            note=f"first epoch (decode + resize + augment on both sides) {e1_ratio:.2f} x, "
            f"later epochs {rest_ratio:.2f} x (kerastl reads cached decoded uint8 images; the "
            "augmentation still runs every epoch on both sides)",
        )
    )
    sec.notes.append(
        f"`from_image_folder(verify=True)` (the default of `kerastl train`) decodes every file "
        f"once to find corrupt ones: {verify_s:.1f} s for {n} files here, a one-time cost not in "
        "the table."
    )
    sec.data["verify_seconds"] = verify_s
    return sec
