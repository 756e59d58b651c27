"""Evaluation metrics from scikit-learn: one function per task, results as JSON-able dicts.

Classification: accuracy, top-k, macro F1, per-class precision/recall/F1,
confusion matrix. Binary: accuracy, ROC AUC, precision/recall/F1. Multilabel:
per-class and macro ROC AUC, micro/macro F1 at a threshold. Regression: MAE,
RMSE, R^2 per output. Every number comes from :mod:`sklearn.metrics`; this module
only picks the arguments (all classes listed, ``zero_division=0``) and the JSON shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from kerastl.errors import ConfigError


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """``cm[i, j]`` = examples of true class ``i`` predicted as ``j`` (all ``n`` classes).

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    return skm.confusion_matrix(
        np.asarray(y_true, int), np.asarray(y_pred, int), labels=np.arange(n)
    ).astype(np.int64)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); ``None`` if one class.

    Example:
        >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    y = np.asarray(y_true).astype(bool).reshape(-1)
    if y.all() or not y.any():
        return None
    return float(skm.roc_auc_score(y, np.asarray(scores, dtype=np.float64).reshape(-1)))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds (``sklearn.metrics.roc_curve``).

    Example:
        >>> fpr, tpr = roc_curve(np.array([0, 1]), np.array([0.2, 0.9]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
    """
    y = np.asarray(y_true).astype(bool).reshape(-1)
    fpr, tpr, _ = skm.roc_curve(y, np.asarray(scores, dtype=np.float64).reshape(-1))
    return fpr, tpr


def _prf(y: np.ndarray, pred: np.ndarray, labels: Any = None, average: str | None = None):
    """(precision, recall, F1, support) from scikit-learn, 0 where undefined."""
    return skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=average, zero_division=0
    )


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
    labels = np.arange(n)
    precision, recall, f1, support = _prf(y, pred, labels=labels)
    present = labels[support > 0]  # macro averages over the classes that occur
    macro = _prf(y, pred, labels=present, average="macro") if len(present) else (0.0,) * 3
    out: dict[str, Any] = {
        "task": "classification",
        "num_examples": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)) if len(y) else 0.0,
        "macro_f1": float(macro[2]),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
    }
    k = min(top_k, n - 1)
    if k >= 2:
        out[f"top{k}_accuracy"] = float(skm.top_k_accuracy_score(y, p, k=k, labels=labels))
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
    precision, recall, f1, _ = (
        float(v) if v is not None else 0.0 for v in _prf(y, pred, labels=[1], average="binary")
    )
    names = list(class_names) if class_names else ["0", "1"]
    return {
        "task": "binary",
        "num_examples": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)) if len(y) else 0.0,
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
    precision, recall, f1, _ = _prf(y, pred)
    aucs = [roc_auc(y[:, i], s[:, i]) for i in range(y.shape[1])]
    valid = [a for a in aucs if a is not None]
    micro_f1 = skm.f1_score(y, pred, average="micro", zero_division=0)
    return {
        "task": "multilabel",
        "num_examples": int(len(y)),
        "macro_auc": float(np.mean(valid)) if valid else None,
        "micro_f1": float(micro_f1),
        "macro_f1": float(f1.mean()),
        "subset_accuracy": float(skm.accuracy_score(y, pred)),
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
    mae = skm.mean_absolute_error(y, p, multioutput="raw_values")
    mse = skm.mean_squared_error(y, p, multioutput="raw_values")
    r2 = skm.r2_score(y, p, multioutput="raw_values") if len(y) > 1 else np.zeros(y.shape[1])
    return {
        "task": "regression",
        "num_examples": int(len(y)),
        "mae": float(mae.mean()),
        "rmse": float(np.sqrt(mse.mean())),
        "r2": float(r2.mean()),
        "per_output": [
            {"mae": float(mae[i]), "rmse": float(np.sqrt(mse[i])), "r2": float(r2[i])}
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
