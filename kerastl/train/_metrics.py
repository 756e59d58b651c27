"""Evaluation metrics in NumPy: one function per task, results as plain JSON-able dicts.

Classification: accuracy, top-k, macro F1, per-class precision/recall/F1,
confusion matrix. Binary: accuracy, ROC AUC, precision/recall/F1. Multilabel:
per-class and macro ROC AUC, micro/macro F1 at a threshold. Regression: MAE,
RMSE, R^2 per output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerastl._errors import ConfigError


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """``cm[i, j]`` = examples of true class ``i`` predicted as ``j``.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tie correction); ``None`` if one class.

    Example:
        >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds (for plotting)."""
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="mergesort")
    y = y[order]
    tps = np.concatenate([[0], np.cumsum(y)])
    fps = np.concatenate([[0], np.cumsum(~y)])
    return _safe_div(fps, max(fps[-1], 1)), _safe_div(tps, max(tps[-1], 1))


def _prf(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str] | None = None, top_k: int = 5
) -> dict[str, Any]:
    """Metrics of a multi-class model from integer labels and class probabilities.

    Example:
        >>> m = classification_metrics(np.array([0, 1, 2]), np.eye(3))
        >>> m["accuracy"], m["macro_f1"]
        (1.0, 1.0)
    """
    y = np.asarray(y_true).reshape(-1).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    n = p.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, n)
    tp = np.diag(cm)
    precision, recall, f1 = _prf(tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp)
    support = cm.sum(axis=1)
    present = support > 0
    out: dict[str, Any] = {
        "task": "classification",
        "num_examples": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
    }
    k = min(top_k, n - 1)
    if k >= 2:
        top = np.argsort(-p, axis=1)[:, :k]
        out[f"top{k}_accuracy"] = float((top == y[:, None]).any(axis=1).mean())
    out["per_class"] = {
        c: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(names)
    }
    out["confusion_matrix"] = cm.tolist()
    out["class_names"] = names
    return out


def binary_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics of a one-sigmoid binary model."""
    y = np.asarray(y_true).reshape(-1).astype(int)
    s = np.asarray(probs, dtype=np.float64).reshape(-1)
    pred = (s >= threshold).astype(int)
    cm = confusion_matrix(y, pred, 2)
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    precision, recall, f1 = (float(v) for v in _prf(np.array(tp), np.array(fp), np.array(fn)))
    names = list(class_names) if class_names else ["0", "1"]
    return {
        "task": "binary",
        "num_examples": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "auc": roc_auc(y, s),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": threshold,
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }


def multilabel_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics of a multi-label model from multi-hot labels and sigmoid scores."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(probs, dtype=np.float64)
    names = list(class_names) if class_names else [str(i) for i in range(y.shape[1])]
    pred = (s >= threshold).astype(int)
    tp = (pred & y).sum(axis=0)
    fp = (pred & (1 - y)).sum(axis=0)
    fn = ((1 - pred) & y).sum(axis=0)
    precision, recall, f1 = _prf(tp, fp, fn)
    aucs = [roc_auc(y[:, i], s[:, i]) for i in range(y.shape[1])]
    valid = [a for a in aucs if a is not None]
    _, _, micro_f1 = _prf(np.array(tp.sum()), np.array(fp.sum()), np.array(fn.sum()))
    return {
        "task": "multilabel",
        "num_examples": int(len(y)),
        "macro_auc": float(np.mean(valid)) if valid else None,
        "micro_f1": float(micro_f1),
        "macro_f1": float(f1.mean()),
        "subset_accuracy": float((pred == y).all(axis=1).mean()),
        "threshold": threshold,
        "per_class": {
            c: {
                "auc": aucs[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(y[:, i].sum()),
            }
            for i, c in enumerate(names)
        },
        "class_names": names,
    }


def regression_metrics(y_true: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE and R^2 (overall and per output).

    Example:
        >>> regression_metrics(np.array([[1.0], [3.0]]), np.array([[2.0], [3.0]]))["mae"]
        0.5
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    p = np.asarray(preds, dtype=np.float64).reshape(len(preds), -1)
    err = p - y
    var = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1.0 - _safe_div((err**2).sum(axis=0), var)
    return {
        "task": "regression",
        "num_examples": int(len(y)),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(r2.mean()),
        "per_output": [
            {
                "mae": float(np.abs(err[:, i]).mean()),
                "rmse": float(np.sqrt((err[:, i] ** 2).mean())),
                "r2": float(r2[i]),
            }
            for i in range(y.shape[1])
        ],
    }


def embedding_metrics(y_true: np.ndarray, emb: np.ndarray) -> dict[str, Any]:
    """Leave-one-out nearest-neighbour accuracy of L2-normalised embeddings."""
    y = np.asarray(y_true).reshape(-1).astype(int)
    z = np.asarray(emb, dtype=np.float64)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(axis=1)
    return {
        "task": "embedding",
        "num_examples": int(len(y)),
        "nn_accuracy": float((y[nn] == y).mean()) if len(y) > 1 else 0.0,
    }


def compute_metrics(
    task: str,
    y_true: np.ndarray,
    outputs: np.ndarray,
    class_names: list[str] | None = None,
    top_k: int = 5,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Dispatch to the metrics of ``task``."""
    if task == "classification":
        return classification_metrics(y_true, outputs, class_names, top_k)
    if task == "binary":
        return binary_metrics(y_true, outputs, class_names, threshold)
    if task == "multilabel":
        return multilabel_metrics(y_true, outputs, class_names, threshold)
    if task == "regression":
        return regression_metrics(y_true, outputs)
    if task == "embedding":
        return embedding_metrics(y_true, outputs)
    raise ConfigError(f"task={task!r}: no metrics defined.")


#: The headline number of each task (for tables and k-fold summaries).
HEADLINE = {
    "classification": "accuracy",
    "binary": "auc",
    "multilabel": "macro_auc",
    "regression": "rmse",
    "embedding": "nn_accuracy",
}


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The top-level float metrics (what k-fold averages)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k != "num_examples"
        and k != "threshold"
    }
