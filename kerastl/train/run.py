"""The training run as a pipeline of steps over one :class:`~kerastl.train.context.RunContext`.

open (config, strategy, data, run folder) -> build -> datasets -> phase 1 ->
phase 2 -> save -> evaluate, export, card -> close the run folder.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from kerastl import data as kdata
from kerastl.core import interrupt as _interrupt
from kerastl.core.convs import grouped_convs_as_depthwise
from kerastl.train import phases, runfolder
from kerastl.train.card import model_card
from kerastl.train.context import RunContext, build_model, make_datasets, open_run
from kerastl.train.evaluate import evaluate_run_model
from kerastl.train.export_step import export_run

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: The run folder (on the chief; elsewhere a temporary folder, deleted at the end).
        model_path: The best model (``model.keras``).
        metrics: Validation metrics (empty without validation data or off-chief).
        history: Per-epoch logs of both phases.
        config: The resolved config.
        timings: Seconds per phase, feature-cache use, strategy and replicas.
        exports: The export report, if exports were asked for.
        model: The trained model (best weights).
    """

    run_dir: str
    model_path: str
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    config: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)
    exports: Any = None
    model: Any = None


def train(
    config: dict | str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    examples: tuple[kdata.Examples, kdata.Examples | None] | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    evaluate: bool = True,
) -> RunResult:
    """Train as a run config says and write the run folder.

    Phase 1 trains with ``model.freeze`` (by default the head on a frozen
    backbone, on cached features when possible); phase 2, when
    ``finetune.epochs > 0``, unfreezes per ``finetune.freeze`` and fine-tunes
    at a lower rate (optionally gradual unfreezing and discriminative rates).
    An interrupted run resumes where it stopped (``train.resume``) when its
    config and data are unchanged; a finished run, or one whose config or data
    changed, starts fresh.

    Args:
        config: A config dict (validated here) or the path of a YAML file.
        overrides: ``{"train.epochs": 3, ...}`` applied before validation.
        examples: ``(train, validation)`` examples to use instead of ``data``.
        callbacks: Extra Keras callbacks for both phases.
        evaluate: Compute metrics, plots and the model card at the end.

    Returns:
        A :class:`RunResult`.

    Raises:
        ExportError: training finished (the model, metrics and card are kept) but
            the export asked for failed; ``exc.result`` holds the :class:`RunResult`.

    Example:
        >>> from kerastl.train import train
        >>> result = train("run.yaml", {"train.epochs": 2})  # doctest: +SKIP
        >>> result.metrics["accuracy"]  # doctest: +SKIP
        0.93
    """
    t_start = time.perf_counter()
    ctx = open_run(config, overrides, examples, callbacks)
    try:
        ctx.model = build_model(ctx)
        make_datasets(ctx)
        with grouped_convs_as_depthwise():  # ConvNeXt-T step 4.84x faster (bench/grouped_conv)
            done1 = phases.phase1(ctx)
            _interrupt.check()
            if ctx.cfg["finetune"]["epochs"]:
                phases.phase2(ctx, done1)
            _save_best(ctx)
            ctx.timings["total_seconds"] = time.perf_counter() - t_start
            return _finish(ctx, done1, evaluate)
    except BaseException:
        ctx.folder.drop_worker_files()  # the backups stay: the run resumes from them
        raise


def _save_best(ctx: RunContext) -> None:
    """The best weights are in the model; save them unless ``model.keras`` already holds them.

    Without validation data the best epoch is chosen by the training metric
    (``train.monitor`` without ``val_``); with ``train.keep: last``, the last epoch.
    """
    model_path = ctx.folder.model_path
    if not ctx.best.saved or not Path(model_path).exists():
        tmp = model_path + ".tmp.keras"
        ctx.model.save(tmp)
        os.replace(tmp, model_path)


def _finish(ctx: RunContext, done1: int, evaluate: bool) -> RunResult:
    """Evaluate, export, write the card; close the run folder. Raise if the export failed."""
    from kerastl.errors import ExportError
    from kerastl.train._plots import read_history

    # The CSV log spans every process of a resumed run; fit()'s History only this one's.
    logged = read_history(ctx.folder.history_csv)
    if logged.get("epoch"):
        ctx.history = {k: v for k, v in logged.items() if k != "epoch"}
    _interrupt.check()
    metrics, exports, export_error = {}, None, None
    if ctx.chief and evaluate:
        metrics, exports, export_error = _report(ctx, done1)
    # Only now is the run complete: a kill before this point resumes without redoing epochs.
    ctx.folder.close()
    # The run folder and its metrics are the caller's to show (``kerastl train`` prints
    # them on stdout; k-fold logs one line per fold): no line here, so none is printed twice.
    out_dir, model_path = ctx.folder.out_dir, ctx.folder.model_path
    result = RunResult(
        out_dir, model_path, metrics, ctx.history, ctx.cfg, ctx.timings, exports, ctx.model
    )
    if export_error is not None:
        err = ExportError(
            f"training finished and the model is kept at {model_path}, but the export "
            f"failed: {type(export_error).__name__}: {export_error}"
        )
        err.result = result
        raise err from export_error
    return result


def _report(ctx: RunContext, done1: int) -> tuple[dict, Any, Exception | None]:
    """Metrics and plots, exports, the model card and timings of a finished run (chief only).

    Returns ``(metrics, exports, export error)``: a failed export is reported in the
    card and raised by the caller once the run folder is complete.
    """
    cfg, out_dir, model_path = ctx.cfg, ctx.folder.out_dir, ctx.folder.model_path
    metrics: dict[str, Any] = {}
    if ctx.val_ex is not None:
        boundary = done1 if cfg["finetune"]["epochs"] else None
        metrics = evaluate_run_model(
            model_path, ctx.val_ex, cfg, out_dir, ctx.history, phase_boundary=boundary
        )
    export_error = None
    try:
        exports = export_run(model_path, cfg, out_dir, ctx.train_ex, ctx.val_ex)
    except Exception as exc:  # noqa: BLE001 - keep the trained run, then report the failure
        export_error = exc
        exports = {"failed": f"{type(exc).__name__}: {exc}"}
        log.warning(f"export failed: {type(exc).__name__}: {exc}")
    card = model_card(cfg, metrics, ctx.data_report, ctx.timings, exports, out_dir)
    runfolder.run_path(out_dir, "card").write_text(card, encoding="utf-8")
    runfolder.write_json(runfolder.run_path(out_dir, "timings"), ctx.timings)
    return metrics, exports, export_error
