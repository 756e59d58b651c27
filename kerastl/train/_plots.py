"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_history(csv_path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a Keras ``CSVLogger`` file as lists of floats."""
    out: dict[str, list[float]] = {}
    if not Path(csv_path).is_file():
        return out
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                try:
                    out.setdefault(k, []).append(float(v))
                except (TypeError, ValueError):
                    out.setdefault(k, []).append(float("nan"))
    return out


def plot_history(
    history: dict[str, list[float]], path: str | os.PathLike, phase_boundary: int | None = None
) -> str | None:
    """Loss and metric curves (train and validation) side by side; returns the path."""
    keys = [k for k in history if k not in ("epoch", "learning_rate") and not k.startswith("val_")]
    if not keys:
        return None
    plt = _plt()
    epochs = history.get("epoch") or list(range(len(history[keys[0]])))
    epochs = [e + 1 for e in epochs]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(epochs, history[k], marker="o", ms=3, label="train")
        if f"val_{k}" in history:
            ax.plot(epochs, history[f"val_{k}"], marker="o", ms=3, label="validation")
        if phase_boundary:
            ax.axvline(phase_boundary + 0.5, color="gray", ls="--", lw=1)
        ax.set_title(k)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_confusion(cm: Any, class_names: list[str], path: str | os.PathLike) -> str:
    """Confusion matrix heat map with counts (``sklearn.metrics.ConfusionMatrixDisplay``)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    cm = np.asarray(cm)
    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2), 16)
    fig, ax = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay(cm, display_labels=class_names).plot(
        ax=ax,
        cmap="Blues",
        include_values=n <= 30,
        xticks_rotation=45 if n > 4 else "horizontal",
        colorbar=False,
        values_format="d",
    )
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_roc(
    y_true: np.ndarray, scores: np.ndarray, class_names: list[str], path: str | os.PathLike
) -> str:
    """ROC curves, one per class (multilabel) or one (binary): ``RocCurveDisplay``."""
    from sklearn.metrics import RocCurveDisplay

    from kerastl.train._metrics import roc_auc, roc_curve

    plt = _plt()
    y = np.asarray(y_true).reshape(len(y_true), -1)
    s = np.asarray(scores).reshape(len(scores), -1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for i in range(s.shape[1]):
        if not 0 < y[:, i].sum() < len(y):  # one class only: no curve
            continue
        fpr, tpr = roc_curve(y[:, i], s[:, i])
        name = class_names[i] if s.shape[1] > 1 else (class_names[-1] if class_names else "1")
        RocCurveDisplay(fpr=fpr, tpr=tpr, roc_auc=roc_auc(y[:, i], s[:, i]), name=name).plot(ax=ax)
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7)
    ax.set_title("ROC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_regression(y_true: np.ndarray, preds: np.ndarray, path: str | os.PathLike) -> str:
    """Predicted vs true scatter (first output)."""
    plt = _plt()
    y = np.asarray(y_true).reshape(len(y_true), -1)[:, 0]
    p = np.asarray(preds).reshape(len(preds), -1)[:, 0]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, p, s=8, alpha=0.6)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("regression")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
