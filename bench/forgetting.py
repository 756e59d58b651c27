"""Forgetting: full fine-tuning vs L2-SP vs freezing, measured on the same run.

    python bench/forgetting.py [--size 96] [--epochs 3] [--write]

EfficientNet-Lite0 (real ImageNet weights) is fine-tuned on scikit-learn digits
(600 training images, 10 classes) under each policy with the same data, seed,
optimizer and epochs. For each, :func:`kerastl.forgetting.forgetting_report`
runs the ImageNet classifier on the pretrained and on the fine-tuned backbone
over two samples of real inputs (200 held-out digits; the 200 scikit-image LFW
photos, faces and non-faces, which are not the fine-tuning task) and reports
top-1 agreement, top-5 overlap, mean KL and each layer group's weight drift.
``--write`` writes the table to bench/results_forgetting.md (included by RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

#: policy name -> (freeze, L2-SP alpha); ``--l2sp`` adds more L2-SP strengths.
POLICIES = {
    "full fine-tuning": ("none", 0.0),
    "L2-SP (alpha 0.01)": ("none", 0.01),
    "freeze all but last 2 groups": ("last:2", 0.0),
    "frozen backbone (head only)": ("backbone", 0.0),
}


def _data(size: int):
    sys.path.insert(0, str(Path(__file__).parent))
    from fewshot import image_tasks

    tasks = image_tasks(size)
    x, y = tasks["digits (10 classes)"]
    lfw, _ = tasks["lfw faces vs non-faces (2)"]
    order = np.random.default_rng(0).permutation(len(y))
    tr, va = order[:600], order[600:800]
    return (x[tr], y[tr]), (x[va], y[va]), lfw


def run_policy(freeze, alpha, data, size: int, epochs: int, lr: float, reference) -> dict:
    import keras

    import kerastl
    from kerastl.forgetting import forgetting_report

    (xt, yt), (xv, yv), lfw = data
    keras.utils.set_random_seed(0)
    model = kerastl.build(
        "efficientnet_lite0",
        num_classes=10,
        weights="imagenet",
        input_shape=(size, size, 3),
        freeze=freeze,
        compile=False,
    )
    if alpha:
        kerastl.apply_l2sp(model, alpha=alpha)
    kerastl.compile_for_task(model, learning_rate=lr)
    t0 = time.perf_counter()
    model.fit(xt, yt, batch_size=32, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - t0
    acc = float(np.mean(model.predict(xv, verbose=0).argmax(1) == yv))
    on_digits = forgetting_report(model, reference, xv)
    on_lfw = forgetting_report(model, reference, lfw)
    return {"acc": acc, "digits": on_digits, "lfw": on_lfw, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--l2sp", default="", help="extra L2-SP alphas, e.g. 1,10")
    ap.add_argument("--only", default="", help="run only policies whose name contains this")
    args = ap.parse_args()
    policies = dict(POLICIES)
    for a in filter(None, args.l2sp.split(",")):
        policies[f"L2-SP (alpha {float(a):g})"] = ("none", float(a))
    policies = {k: v for k, v in policies.items() if args.only in k}

    import kerastl

    data = _data(args.size)
    reference = kerastl.build(
        "efficientnet_lite0",
        weights="imagenet",
        pretrained_head=True,
        input_shape=(args.size, args.size, 3),
        compile=False,
    )
    results = {}
    for name, (freeze, alpha) in policies.items():
        results[name] = run_policy(freeze, alpha, data, args.size, args.epochs, args.lr, reference)
        r = results[name]
        print(
            f"{name}: acc {r['acc']:.3f}, agreement digits {r['digits']['top1_agreement']:.3f} "
            f"lfw {r['lfw']['top1_agreement']:.3f}, drift {r['digits']['weight_drift']['all']:.4f}"
            f" ({r['seconds']:.0f} s)",
            flush=True,
        )
    table = _table(results)
    print("\n".join(table))
    if args.write:
        path = Path(__file__).with_name("results_forgetting.md")  # RESULTS.md includes it
        head = [
            "",
            "## Forgetting: full fine-tuning vs L2-SP vs freezing (issue 17)",
            "",
            f"Command: `python bench/forgetting.py --size {args.size} --epochs {args.epochs} "
            f"--lr {args.lr}"
            + (f" --l2sp {args.l2sp}" if args.l2sp else "")
            + (f" --only '{args.only}'" if args.only else "")
            + " --write`. EfficientNet-Lite0 (ImageNet weights), fine-tuned on 600 scikit-learn "
            f"digits at {args.size} px, {args.epochs} epochs, Adam {args.lr}, batch 32, seed 0, the "
            "same for every policy. Source task = the ImageNet classifier that ships with the "
            "checkpoint, run on the pretrained vs fine-tuned backbone. Agreement on 200 held-out "
            "digits and on scikit-image's 200 LFW photos (not the training task). Drift = "
            "||w - w0|| / ||w0|| over the backbone's learned weights (BatchNorm moving statistics "
            "left out).",
            "",
        ]
        path.write_text("\n".join(head + table).strip() + "\n")


def _table(results: dict) -> list[str]:
    groups = list(next(iter(results.values()))["digits"]["weight_drift"])
    rows = [
        "| policy | digits val acc | top-1 agreement (digits) | top-1 agreement (LFW) | "
        "top-5 overlap (LFW) | mean KL (LFW) | backbone drift | "
        + " | ".join(f"drift {g}" for g in groups if g != "all")
        + " |",
        "|---" * (7 + len(groups) - 1) + "|",
    ]
    for name, r in results.items():
        d, lfw = r["digits"], r["lfw"]
        drift = d["weight_drift"]
        rows.append(
            f"| {name} | {r['acc']:.3f} | {d['top1_agreement']:.3f} | "
            f"{lfw['top1_agreement']:.3f} | {lfw['top5_overlap']:.3f} | {lfw['mean_kl']:.3f} | "
            f"{drift['all']:.2e} | "
            + " | ".join(f"{drift[g]:.2e}" for g in groups if g != "all")
            + " |"
        )
    return rows


if __name__ == "__main__":
    main()
