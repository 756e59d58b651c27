"""k-fold cross-validation of a run config: train k times, report the mean and spread."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kerastl import data as kdata
from kerastl.core.tf_log import quiet_retracing
from kerastl.errors import check_folds
from kerastl.train import runfolder
from kerastl.train._config import load_config, validate_config
from kerastl.train._metrics import HEADLINE, scalar_metrics
from kerastl.train.context import load_examples
from kerastl.train.run import train

log = logging.getLogger(__name__)


def cross_validate(
    config: dict | str | os.PathLike,
    folds: int = 5,
    overrides: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    export: dict[str, Any] | None = None,
) -> dict:
    """k-fold cross-validation of a run config: train k times, report mean and spread.

    ``export``: the config's export section as written, when the caller cleared it before
    validating the config (``kerastl train --folds``: a run name no file can take is fine
    for folds, which export nothing); the folds say they skip it.

    All data (training + validation of the config) is split into ``folds``
    stratified parts; fold ``i`` trains on the others and validates on part
    ``i``. Fold runs are written to ``<run>/folds/fold<i>`` (``i`` from 0; the log
    names that folder, e.g. ``folds/fold0 (1 of 3)``) without exports; the summary
    to ``<run>/kfold.json`` (``fold_runs`` lists the folders in the order of
    ``per_fold``). TensorFlow's retracing warnings, expected when k models train in
    one process, go to kerastl's debug log.

    Raises:
        ConfigError: ``folds`` is not a whole number >= 2.

    Returns:
        ``{"folds": k, "fold_runs": [...], "per_fold": [...], "mean": {...}, "std": {...}}``.

    Example:
        >>> summary = cross_validate("run.yaml", folds=3)  # doctest: +SKIP
        >>> summary["mean"]["accuracy"], summary["std"]["accuracy"]  # doctest: +SKIP
    """
    check_folds(folds)
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
    per_fold, names = [], []
    skipped = _skipped_export({"export": export} if export else cfg)
    if skipped:
        log.warning(skipped)
    with quiet_retracing():
        for i, (tr, va) in enumerate(ex.folds(folds, seed=cfg["seed"])):
            fold_cfg = fold_config(cfg, base, i)
            name = f"folds/{fold_cfg['name']}"
            names.append(name)
            log.info(f"{name} ({i + 1} of {folds}): {len(tr)} training, {len(va)} validation")
            result = train(fold_cfg, examples=(ex.subset(tr), ex.subset(va)))
            per_fold.append(scalar_metrics(result.metrics))
            key = HEADLINE.get(cfg["model"]["task"])
            if key in result.metrics:
                log.info(f"{name} ({i + 1} of {folds}): validation {key} {result.metrics[key]:.4f}")
    keys = sorted(set.intersection(*(set(m) for m in per_fold))) if per_fold else []
    summary = {
        "folds": folds,
        "epochs": "each fold trains all its epochs and is scored on its last (the scored part "
        "chooses no epoch: no early stopping, train.keep last)",
        "num_examples": len(ex),
        "export": skipped or "none configured",
        "headline": HEADLINE.get(cfg["model"]["task"]),
        "fold_runs": names,
        "per_fold": per_fold,
        "mean": {k: float(np.mean([m[k] for m in per_fold])) for k in keys},
        "std": {k: float(np.std([m[k] for m in per_fold])) for k in keys},
    }
    runfolder.write_json(base / "kfold.json", summary)
    return summary


def _skipped_export(cfg: dict) -> str | None:
    """What the config would export that the folds do not, said once; ``None`` if nothing.

    Example:
        >>> print(_skipped_export({"export": {"formats": ["tflite"], "quantize": ["int8"]}}))
        k-fold exports nothing: the config's export (tflite; quantize int8) is for a single run (kerastl train without --folds)
        >>> _skipped_export({"export": {"formats": [], "quantize": []}}) is None
        True
    """
    formats = list(cfg.get("export", {}).get("formats") or [])
    if not formats:
        return None
    quantize = list(cfg["export"].get("quantize") or [])
    what = ", ".join(formats) + (f"; quantize {', '.join(quantize)}" if quantize else "")
    return (
        f"k-fold exports nothing: the config's export ({what}) is for a single run "
        "(kerastl train without --folds)"
    )


def fold_config(cfg: dict, base: Path, i: int) -> dict:
    """The run config of fold ``i``: ``<base>/folds/fold<i>``, no export, all epochs.

    The folds are for scores only: ``export`` is cleared as a whole (formats and
    their TFLite precisions), so a config that exports and quantizes still folds.
    Each fold is scored on the part it leaves out, so that part chooses nothing: the
    fold trains every epoch (no early stopping) and keeps its last one
    (``train.keep: last``); a best epoch chosen on the scored part would lift its score.

    Example:
        >>> cfg = {"name": "r", "output_dir": "runs", "train": {"keep": "best", "early_stopping": 5},
        ...        "export": {"formats": ["tflite"], "quantize": ["int8"], "name": None, "version": 2}}
        >>> f = fold_config(cfg, Path("runs/r"), 0)
        >>> f["name"], f["export"]["formats"], f["export"]["quantize"], f["export"]["version"]
        ('fold0', [], [], None)
        >>> f["train"]["keep"], f["train"]["early_stopping"]
        ('last', 0)
    """
    fold_cfg = copy.deepcopy(cfg)
    fold_cfg["output_dir"] = str(base / "folds")
    fold_cfg["name"] = f"fold{i}"
    fold_cfg["exist_ok"] = True  # a k-fold rerun replaces its folds (kfold.json is rewritten)
    fold_cfg["export"].update(formats=[], quantize=[], version=None)
    fold_cfg["train"].update(keep="last", early_stopping=0)
    return fold_cfg


def _concat(a: kdata.Examples, b: kdata.Examples) -> kdata.Examples:
    if a.kind == "tfds" or b.kind == "tfds":
        return a
    return replace(
        a,
        x=np.concatenate([a.x, b.x]),
        y=np.concatenate([a.y, b.y]),
        skipped=a.skipped + b.skipped,
        source=f"{a.source} + {b.source}",
    )
