"""``kerastl demo``: transfer learning on real data that ships with scikit-learn.

The data is scikit-learn's copy of the UCI handwritten digits (1,797 scanned
8x8 digits, bundled inside the scikit-learn wheel: nothing is downloaded).

1. Source task: train a registry backbone from scratch on digits 0-4.
2. Target task: digits 5-9 (classes the source never saw) with only a few
   labelled examples per class. Transfer: reuse the source backbone, train the
   head on cached features, then fine-tune. Scratch: the same model from
   random weights on the same few labels, same budget of epochs.
3. Print the table (validation on every other 5-9 digit) and export the
   transferred model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from kerastl._errors import missing_dependency


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


def _few_shot(y: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        train.extend(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
    train_idx = np.sort(np.asarray(train))
    return train_idx, np.setdiff1d(np.arange(len(y)), train_idx)


def _base_config(output_dir: str, backbone: str, seed: int) -> dict[str, Any]:
    return {
        "output_dir": output_dir,
        "seed": seed,
        "model": {"backbone": backbone, "input_size": 32, "dropout": 0.1},
        "data": {"path": "<scikit-learn digits>"},
        "train": {
            "batch_size": 32,
            "early_stopping": 0,
            "verbose": 0,
            "tensorboard": False,
            "monitor": "val_accuracy",
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


def run_demo(
    output_dir: str = "runs/demo",
    backbone: str = "mobilenet_v2",
    shots: int = 10,
    quick: bool = False,
    export: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo and return its table as a dict (also written to ``summary.json``).

    Args:
        output_dir: Folder of the demo's runs.
        backbone: Registry backbone (trained from scratch on the source task).
        shots: Labelled examples per target class.
        quick: Fewer epochs (for tests).
        export: Export the transferred model (SavedModel, TFLite, ONNX).
        seed: Seed of data selection and training.

    Example:
        >>> from kerastl.train.demo import run_demo
        >>> table = run_demo(quick=True, export=False)  # doctest: +SKIP
    """
    from kerastl import data as kdata
    from kerastl.train._trainer import train

    t0 = time.perf_counter()
    x, y = load_digits_uint8()
    src = y < 5
    tgt = ~src
    print(
        f"[demo] data: scikit-learn digits, {len(y)} real 8x8 scans (shipped in the "
        "scikit-learn wheel, no download)"
    )
    print(
        f"[demo] source task: digits 0-4 ({int(src.sum())} images); target task: digits 5-9 "
        f"with {shots} labelled images per class ({int(tgt.sum())} images in all)"
    )
    source_ex = kdata.from_numpy(
        x[src], y[src], class_names=[str(i) for i in range(5)], source="scikit-learn digits 0-4"
    )
    s_train, s_val = source_ex.split(0.2, seed=seed)
    yt = y[tgt] - 5
    t_train_idx, t_val_idx = _few_shot(yt, shots, seed)
    target_ex = kdata.from_numpy(
        x[tgt], yt, class_names=[str(i) for i in range(5, 10)], source="scikit-learn digits 5-9"
    )
    t_train, t_val = target_ex.subset(t_train_idx), target_ex.subset(t_val_idx)
    base = _base_config(output_dir, backbone, seed)
    e_src = 2 if quick else 12
    e_head, e_ft = (4, 1) if quick else (20, 20)

    # 1. source task, from scratch (BatchNorm trains: the weights are random).
    print(f"[demo] 1/3 training {backbone} from scratch on the source task ({e_src} epochs)")
    t1 = time.perf_counter()
    src_run = train(
        _merge(
            base,
            {
                "name": "source",
                "model": {"weights": None, "freeze": "none", "train_batchnorm": True},
                "train": {"epochs": e_src, "learning_rate": 1e-3, "precise_bn": True},
            },
        ),
        examples=(s_train, s_val),
    )
    t_src = time.perf_counter() - t1
    print(f"[demo]     source accuracy {src_run.metrics['accuracy']:.3f} ({t_src:.0f} s)")

    # 2. transfer: source backbone, head on cached features, then fine-tune.
    print(
        f"[demo] 2/3 transfer to digits 5-9: head on cached features ({e_head} epochs), "
        f"then fine-tune ({e_ft} epochs)"
    )
    t1 = time.perf_counter()
    transfer = train(
        _merge(
            base,
            {
                "name": "transfer",
                "model": {"weights": src_run.model_path, "freeze": "backbone"},
                "train": {"epochs": e_head, "learning_rate": 3e-3, "cache_features": "memory"},
                "finetune": {"epochs": e_ft, "freeze": "none", "learning_rate": 3e-4},
                "export": {"formats": ["saved_model", "tflite", "onnx"] if export else []},
            },
        ),
        examples=(t_train, t_val),
    )
    t_transfer = time.perf_counter() - t1

    # 3. scratch: same model, random weights, same labels and epochs.
    print(
        f"[demo] 3/3 same model from scratch on the same {len(t_train)} labels "
        f"({e_head + e_ft} epochs)"
    )
    t1 = time.perf_counter()
    scratch = train(
        _merge(
            base,
            {
                "name": "scratch",
                "model": {"weights": None, "freeze": "none", "train_batchnorm": True},
                "train": {"epochs": e_head + e_ft, "learning_rate": 1e-3, "precise_bn": True},
            },
        ),
        examples=(t_train, t_val),
    )
    t_scratch = time.perf_counter() - t1

    rows = [
        {
            "model": f"source: {backbone} on digits 0-4",
            "labels": len(s_train),
            "accuracy": src_run.metrics["accuracy"],
            "macro_f1": src_run.metrics["macro_f1"],
            "seconds": t_src,
        },
        {
            "model": "target 5-9: transfer (cached head + fine-tune)",
            "labels": len(t_train),
            "accuracy": transfer.metrics["accuracy"],
            "macro_f1": transfer.metrics["macro_f1"],
            "seconds": t_transfer,
        },
        {
            "model": "target 5-9: from scratch",
            "labels": len(t_train),
            "accuracy": scratch.metrics["accuracy"],
            "macro_f1": scratch.metrics["macro_f1"],
            "seconds": t_scratch,
        },
    ]
    table = _format_table(rows, len(t_val), len(s_val))
    print()
    print(table)
    gain = transfer.metrics["accuracy"] - scratch.metrics["accuracy"]
    print(
        f"\nTransfer beats scratch by {gain * 100:+.1f} accuracy points on {len(t_val)} held-out "
        f"target digits, with {len(t_train)} labels."
    )
    exports = transfer.exports
    if export:
        print(
            f"Transferred model exported to {Path(transfer.run_dir) / 'export'}: "
            f"{_export_summary(exports)}"
        )
    total = time.perf_counter() - t0
    print(
        f"Total demo time: {total:.0f} s. Run folders: {output_dir}/source, "
        f"{output_dir}/transfer, {output_dir}/scratch"
    )
    summary = {
        "rows": rows,
        "target_val": len(t_val),
        "source_val": len(s_val),
        "gain": gain,
        "seconds": total,
        "exports": _export_summary(exports),
        "feature_cache": transfer.timings.get("feature_cache"),
        "table": table,
        "ok": True,
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (Path(output_dir) / "README.md").write_text(
        "# kerastl demo: transfer learning vs scratch\n\n```\n" + table + "\n```\n"
    )
    return summary


def _format_table(rows: list[dict], n_target_val: int, n_source_val: int) -> str:
    head = f"{'model':50} {'labels':>6} {'accuracy':>9} {'macro F1':>9} {'time':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:50} {r['labels']:6d} {r['accuracy']:9.3f} "
            f"{r['macro_f1']:9.3f} {r['seconds']:6.0f}s"
        )
    lines.append(
        f"(validation: {n_source_val} held-out source digits; "
        f"{n_target_val} held-out target digits)"
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
