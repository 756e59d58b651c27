"""The training run: data -> strategy -> model -> two-phase recipe -> evaluation -> run folder."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl import _interrupt
from kerastl import data as kdata
from kerastl._errors import DataError
from kerastl.train import runfolder
from kerastl.train._cache import (
    FeatureCache,
    backbone_is_frozen,
    feature_batch_size,
    split_model,
)
from kerastl.train._callbacks import (
    BestCheckpoint,
    InterruptCheck,
    NanGuard,
    PreciseBatchNorm,
    ResumableCSVLogger,
    SafeBackupAndRestore,
    make_optimizer,
    make_schedule,
)
from kerastl.train._config import check_data_paths, load_config, validate_config
from kerastl.train._metrics import HEADLINE
from kerastl.train._strategy import (
    get_strategy,
    is_chief,
    prepare_fit,
    set_precision,
    strategy_name,
    worker_id,
)

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


def _verbose(value: Any) -> int:
    if value == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(value)


def _image_size(model: keras.Model) -> tuple[int, int] | None:
    spec = (getattr(model, "kerastl_config", {}) or {}).get("input", {})
    shape = spec.get("shape")
    if spec.get("name") == "image" and shape and len(shape) == 3:
        return (int(shape[0]), int(shape[1]))
    return None


def load_examples(cfg: dict) -> tuple[kdata.Examples, kdata.Examples | None]:
    """Read the config's data into ``(train, validation)`` examples (validation may be None)."""
    d, m = cfg["data"], cfg["model"]
    opts = {
        k: d[k]
        for k in ("path_column", "label_column", "text_column", "root", "name", "data_dir", "split")
    }
    ex = kdata.load(
        d["source"], d["path"], m["task"], d["class_names"], m["channels"], d["verify"], **opts
    )
    if d["val_path"]:
        val = kdata.load(
            d["source"],
            d["val_path"],
            m["task"],
            ex.class_names,
            m["channels"],
            d["verify"],
            **opts,
        )
        return ex, val
    if d["source"] == "tfds" and d["val_tfds_split"]:
        val = kdata.from_tfds(d["name"], d["data_dir"], d["val_tfds_split"], m["task"])
        return ex, val
    if d["val_split"] > 0:
        train, val = ex.split(d["val_split"], seed=cfg["seed"])
        train.skipped = ex.skipped
        return train, val
    return ex, None


def _report_skipped(ex: kdata.Examples, val: kdata.Examples | None) -> list[tuple[str, str]]:
    skipped = list(ex.skipped) + (list(val.skipped) if val is not None else [])
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable file(s):")
        for p, why in skipped[:20]:
            log.warning(f"  {p}: {why}")
        if len(skipped) > 20:
            log.warning(f"  ... and {len(skipped) - 20} more (see data_report.json)")
    return skipped


def _build_model(cfg: dict, ex: kdata.Examples, freeze: Any) -> keras.Model:
    from kerastl._build import build

    m = cfg["model"]
    task = m["task"]
    if task == "regression":
        num = int(ex.y.shape[1])
    elif task == "binary":
        num = None
    elif task == "embedding":
        num = None
    else:
        num = len(ex.class_names or [])
    size = m["input_size"]
    input_shape = None
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        input_shape = (h, w, m["channels"])
    elif m["channels"] != 3:
        from kerastl.zoo import get_spec

        s = get_spec(m["backbone"]).input_size
        input_shape = (s, s, m["channels"])
    class_names = ex.class_names if task in ("classification", "multilabel", "binary") else None
    model = build(
        m["backbone"],
        task=task,
        num_classes=num,
        weights=m["weights"],
        input_shape=input_shape,
        freeze=freeze,
        dropout=m["dropout"],
        pooling=m["pooling"],
        class_names=class_names,
        train_batchnorm=m["train_batchnorm"],
        embedding_dim=m["embedding_dim"],
        compile=False,
        **(m["options"] or {}),
    )
    meta = model.kerastl_config
    kdata.check_head(ex, meta["num_outputs"], meta["task"], None)
    return model


def _compile(model: keras.Model, optimizer: Any, cfg: dict) -> None:
    from kerastl._build import compile_for_task

    t = cfg["train"]
    jit = t["jit_compile"]
    compile_for_task(
        model, optimizer=optimizer, jit_compile=jit, steps_per_execution=t["steps_per_execution"]
    )


def _decide_cache(cfg: dict, model: keras.Model, ex: kdata.Examples) -> str | None:
    """``"memory"``/``"disk"`` when training the head on cached features, else None."""
    want = cfg["train"]["cache_features"]
    want = {True: "auto", False: "off"}.get(want, want)
    if want == "off":
        return None
    frozen = backbone_is_frozen(model)
    augment = kdata.augment_names(cfg["data"]["augment"]) if ex.kind != "text" else []
    if augment:
        if want != "auto" or frozen:
            log.info(
                f"cached features disabled: augmentation {augment} changes the "
                "images every epoch, so backbone features cannot be computed once."
            )
        return None
    if not frozen:
        if want != "auto":
            log.info(
                "cached features disabled: the backbone is not frozen "
                f"(freeze={cfg['model']['freeze']!r}); they need freeze: backbone."
            )
        return None
    return "memory" if want == "auto" else want


def _history_merge(total: dict[str, list[float]], h: keras.callbacks.History | None) -> None:
    if h is None:
        return
    for k, v in h.history.items():
        total.setdefault(k, []).extend(float(x) for x in v)


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
    cfg = _resolve_config(config, overrides, examples)
    if examples is None:
        check_data_paths(cfg)
    t = cfg["train"]
    verbose = _verbose(t["verbose"])
    # A fresh Keras session per run: layer-name counters restart (layer groups of some
    # backbones are declared by auto-generated names) and earlier runs' graphs are freed.
    keras.utils.clear_session()
    keras.utils.set_random_seed(cfg["seed"])
    precision = set_precision(t["precision"])
    strategy = get_strategy(t["strategy"])
    # Data first: nothing is written for a run whose data cannot be read.
    train_ex, val_ex = examples if examples is not None else load_examples(cfg)
    _check_task(cfg, train_ex, val_ex)
    run = _Run(cfg, strategy, verbose, train_ex, val_ex, list(callbacks or []))
    _prepare_run_dir(run, _run_fingerprint(cfg, train_ex, val_ex))
    skipped = _report_skipped(train_ex, val_ex)
    with strategy.scope():
        run.model = _build_model(cfg, train_ex, cfg["model"]["freeze"])
    data_report = _make_datasets(run, skipped)
    run.timings.update(
        {
            "strategy": strategy_name(strategy),
            "replicas": run.replicas,
            "precision": precision,
            "feature_cache": "no",
        }
    )
    done1 = _phase1(run)
    _interrupt.check()
    if cfg["finetune"]["epochs"]:
        _phase2(run, done1)
    # The best weights are in the model and in model.keras (or, without validation, the last).
    if run.best.best_weights is None or not Path(run.model_path).exists():
        tmp = run.model_path + ".tmp.keras"
        run.model.save(tmp)
        os.replace(tmp, run.model_path)
    run.timings["total_seconds"] = time.perf_counter() - t_start
    return _finish(run, data_report, done1, evaluate)


@dataclass
class _Run:
    """What the steps of one :func:`train` call share."""

    cfg: dict
    strategy: Any
    verbose: int
    train_ex: kdata.Examples
    val_ex: kdata.Examples | None
    callbacks: list
    model: Any = None
    best: Any = None
    train_ds: Any = None
    val_ds: Any = None
    monitor: str = ""
    history: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def global_batch(self) -> int:
        return self.cfg["train"]["batch_size"] * self.replicas

    @property
    def chief(self) -> bool:
        return is_chief()

    @property
    def run_dir(self) -> str:
        return str(Path(self.cfg["output_dir"]) / self.cfg["name"])

    @property
    def out_dir(self) -> str:
        if "_out_dir" not in self.__dict__:
            self.__dict__["_out_dir"] = self.run_dir if self.chief else _run_temp_dir()
        return self.__dict__["_out_dir"]

    @property
    def backup_root(self) -> Path:
        return Path(self.run_dir) / "backup" / worker_id()

    @property
    def state_dir(self) -> Path:
        return Path(self.out_dir) / "state"

    @property
    def logs_dir(self) -> Path:
        return Path(self.out_dir) / "logs"

    @property
    def model_path(self) -> str:
        return str(Path(self.out_dir) / "model.keras")

    @property
    def steps(self) -> int:
        return max(1, math.ceil(len(self.train_ex) / self.global_batch))


def _resolve_config(config: Any, overrides: dict | None, examples: Any) -> dict:
    if not isinstance(config, dict):
        return load_config(config, overrides)
    cfg = dict(config)
    if overrides:
        from kerastl.train._config import set_key

        for k, v in overrides.items():
            set_key(cfg, k, v)
    if examples is not None:
        cfg["data"] = {
            **(cfg.get("data") or {}),
            "path": (cfg.get("data") or {}).get("path") or "<in-memory examples>",
        }
    cfg = validate_config(cfg)
    if cfg["name"] is None:
        cfg["name"] = "run"
    return cfg


def _check_task(cfg: dict, train_ex: kdata.Examples, val_ex: kdata.Examples | None) -> None:
    from kerastl.heads import resolve_task

    want = resolve_task(cfg["model"]["task"]).name
    for part in (train_ex, val_ex):
        if part is not None and part.task != want:
            raise DataError(
                f"{part.source}: the labels were encoded for task={part.task!r} but "
                f"model.task is {want!r}; load the data with task={want!r}."
            )


#: Keys that do not change what a run trains (a resumed run may differ in them).
_NOT_TRAINING = {"name", "output_dir", "export", "evaluate"}
_NOT_TRAINING_TRAIN = {"resume", "verbose", "tensorboard", "cache_dir"}


def _run_fingerprint(cfg: dict, train_ex: kdata.Examples, val_ex: kdata.Examples | None) -> str:
    """A hash of what the run trains: the training keys of the config and both data sets."""
    import hashlib
    import json

    relevant = {k: v for k, v in cfg.items() if k not in _NOT_TRAINING}
    relevant["train"] = {k: v for k, v in cfg["train"].items() if k not in _NOT_TRAINING_TRAIN}
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    h.update(train_ex.fingerprint().encode())
    h.update((val_ex.fingerprint() if val_ex is not None else "-").encode())
    return h.hexdigest()[:16]


def _resume_refusal(run: _Run, fingerprint: str) -> str | None:
    """Why the saved state of this run folder must not be resumed (None: resume it)."""
    import json

    if not run.cfg["train"]["resume"]:
        return "train.resume is false"
    marker = Path(run.run_dir) / "state" / "run.json"
    leftovers = [p for p in (run.backup_root, run.state_dir, run.logs_dir) if p.exists()]
    if not leftovers:
        return None
    if not marker.is_file():
        return "its saved state records no config/data fingerprint"
    prev = json.loads(marker.read_text())
    if prev.get("finished"):
        return "the earlier run with this name finished"
    if prev.get("fingerprint") != fingerprint:
        return "the config or data changed since the interrupted run"
    return None


def _prepare_run_dir(run: _Run, fingerprint: str) -> None:
    """Create the run folder; resume its state only for an unfinished, unchanged run."""
    reason = _resume_refusal(run, fingerprint)
    if reason is not None:
        if reason != "train.resume is false" and (run.state_dir.exists() or run.logs_dir.exists()):
            log.info(
                f"{run.run_dir}: starting fresh ({reason}); its saved state, "
                "backups and logs are not reused."
            )
        for p in (run.backup_root, run.state_dir, run.logs_dir):
            shutil.rmtree(p, ignore_errors=True)
    else:
        run.state = _read_state(run.state_dir)
    Path(run.out_dir).mkdir(parents=True, exist_ok=True)
    run.state_dir.mkdir(parents=True, exist_ok=True)
    if run.chief:
        runfolder.write_json(
            run.state_dir / "run.json", {"fingerprint": fingerprint, "finished": False}
        )
        runfolder.write_config(run.out_dir, run.cfg)


def _make_datasets(run: _Run, skipped: list) -> dict:
    cfg, model = run.cfg, run.model
    image_size, channels = _image_size(model), cfg["model"]["channels"]
    cache_path = cfg["data"]["cache"] if isinstance(cfg["data"]["cache"], str) else True
    run.train_ds = kdata.make_dataset(
        run.train_ex,
        image_size,
        run.global_batch,
        shuffle=cfg["data"]["shuffle"],
        seed=cfg["seed"],
        augment=cfg["data"]["augment"],
        cache=cache_path,
        channels=channels,
    )
    if run.val_ex is not None:
        run.val_ds = kdata.make_dataset(
            run.val_ex, image_size, run.global_batch, cache=True, channels=channels
        )
    t = cfg["train"]
    run.monitor = t["monitor"] if run.val_ds is not None else t["monitor"].replace("val_", "")
    train_ex, val_ex = run.train_ex, run.val_ex
    data_report = {
        "source": train_ex.source,
        "modality": train_ex.modality,
        "num_train": len(train_ex),
        "num_val": len(val_ex) if val_ex is not None else 0,
        "class_names": train_ex.class_names,
        "train_class_counts": train_ex.class_counts(),
        "val_class_counts": val_ex.class_counts() if val_ex is not None else {},
        "input_shape": model.kerastl_config.get("input", {}).get("shape"),
        "fingerprint": train_ex.fingerprint(),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }
    if run.chief:
        runfolder.write_json(runfolder.run_path(run.out_dir, "data_report"), data_report)
    run.best = BestCheckpoint(
        run.model_path, target=model, monitor=run.monitor, verbose=int(run.verbose > 0)
    )
    if run.state.get("best") is not None:
        run.best.best = run.state["best"]
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    return data_report


def _common_callbacks(run: _Run, phase: str, fitted: keras.Model) -> list:
    # Order matters for a kill between two callbacks: NanGuard first (a NaN loss aborts
    # before anything saves it); the CSV row and the best checkpoint of an epoch are
    # written before its backup, so a resumed run never misses them (it redoes the epoch
    # and the logger drops the duplicate row).
    t, best = run.cfg["train"], run.best
    cbs: list = [
        InterruptCheck(),
        NanGuard(phase),
        ResumableCSVLogger(str(run.logs_dir / "history.csv")),
    ]
    best.target = run.model
    best.defer = fitted is not run.model  # the head on cached features: save once per phase
    cbs.append(best)
    patience = t["early_stopping"]
    if patience is True:
        patience = 5
    if patience:
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=run.monitor,
                patience=int(patience),
                mode=best.mode,
                verbose=int(run.verbose > 0),
            )
        )
    pbn = t["precise_bn"]
    if pbn and fitted is run.model:
        plain = kdata.make_dataset(
            run.train_ex,
            _image_size(run.model),
            max(run.global_batch, 64),
            shuffle=True,
            seed=run.cfg["seed"] + 1,
            cache=True,
            channels=run.cfg["model"]["channels"],
        )
        cbs.append(PreciseBatchNorm(plain, 4 if pbn is True else int(pbn)))
    cbs.append(SafeBackupAndRestore(str(run.backup_root / phase), double_checkpoint=True))
    if t["tensorboard"] and _has_tensorboard():
        cbs.append(
            keras.callbacks.TensorBoard(
                str(run.logs_dir / "tensorboard" / phase), write_graph=False, profile_batch=0
            )
        )
    return cbs + run.callbacks


def _phase1(run: _Run) -> int:
    """Phase 1 (or its saved result when resuming); returns the epochs it ran."""
    t, model, state = run.cfg["train"], run.model, run.state
    epochs1 = t["epochs"]
    if not epochs1:
        return 0
    if state.get("phase1_done"):
        model.load_weights(str(run.state_dir / "phase1.weights.h5"))
        done1 = int(state.get("phase1_epochs", epochs1))
        run.history = state.get("history", {})
        log.info(f"resuming: phase 1 already done ({done1} epochs)")
        return done1
    t1 = time.perf_counter()
    cache_mode = _decide_cache(run.cfg, model, run.train_ex)
    with run.strategy.scope():
        optimizer = make_optimizer(
            t["optimizer"],
            make_schedule(
                t["learning_rate"], t["schedule"], run.steps, epochs1, t["warmup_epochs"]
            ),
            t["weight_decay"],
        )
    if cache_mode:
        with run.best.flushed_on_interrupt():
            h, info = _fit_on_cached_features(
                model,
                run.cfg,
                run.train_ex,
                run.val_ex,
                optimizer,
                run.strategy,
                cache_mode,
                run.global_batch,
                epochs1,
                run.verbose,
                lambda phase, fitted: _common_callbacks(run, phase, fitted),
            )
        run.timings["feature_cache"] = info
    else:
        with run.strategy.scope():
            _compile(model, optimizer, run.cfg)
        h = prepare_fit(model, run.strategy).fit(
            run.train_ds,
            validation_data=run.val_ds,
            epochs=epochs1,
            verbose=run.verbose,
            shuffle=False,
            callbacks=_common_callbacks(run, "phase1", model),
        )
    _history_merge(run.history, h)
    run.best.restore()
    done1 = _epochs_done(run.logs_dir, len(h.history.get("loss", [])))
    run.timings["phase1_seconds"] = time.perf_counter() - t1
    best = run.best.best if math.isfinite(run.best.best) else None
    _write_state(
        run.state_dir,
        model,
        {"phase1_done": True, "phase1_epochs": done1, "best": best, "history": run.history},
    )
    return done1


def _finetune_setup(run: _Run) -> tuple[float, list]:
    """Freeze, optimizer and callbacks of phase 2; returns (rate, extra callbacks).

    ``finetune.freeze`` is the limit of gradual unfreezing when ``gradual_every`` is
    set (``last:N`` / ``up_to:GROUP``: those groups join one by one; ``none``: all).
    ``layer_decay`` gives each group its own rate, each with the schedule, warm-up
    and weight decay of ``finetune`` / ``train``.
    """
    from kerastl.freeze import GradualUnfreezing, apply_policy, discriminative_optimizer

    cfg, model = run.cfg, run.model
    t, ft = cfg["train"], cfg["finetune"]
    lr2 = ft["learning_rate"] if ft["learning_rate"] is not None else t["learning_rate"] / 10
    bn = cfg["model"]["train_batchnorm"]

    def group_optimizer(rate: float) -> keras.optimizers.Optimizer:
        schedule = make_schedule(rate, ft["schedule"], run.steps, ft["epochs"], ft["warmup_epochs"])
        return make_optimizer(t["optimizer"], schedule, t["weight_decay"])

    extra: list = []
    with run.strategy.scope():
        if ft["gradual_every"]:
            limit = apply_policy(model, ft["freeze"], train_batchnorm=bn)
            max_groups = sum(limit.values())
            apply_policy(model, "backbone", train_batchnorm=bn)
        else:
            apply_policy(model, ft["freeze"], train_batchnorm=bn)
        if ft["layer_decay"]:
            optimizer = discriminative_optimizer(
                model, lr2, decay=ft["layer_decay"], factory=group_optimizer
            )
        else:
            optimizer = group_optimizer(lr2)
        _compile(model, optimizer, cfg)
        if ft["gradual_every"]:
            extra.append(
                GradualUnfreezing(
                    model,
                    every=ft["gradual_every"],
                    max_groups=max_groups,
                    verbose=run.verbose > 0,
                )
            )
    return lr2, extra


def _phase2(run: _Run, done1: int) -> None:
    ft = run.cfg["finetune"]
    t2 = time.perf_counter()
    lr2, extra = _finetune_setup(run)
    log.info(
        f"phase 2: fine-tuning (freeze={ft['freeze']!r}, lr={lr2:g}) for {ft['epochs']} epoch(s)"
    )
    cbs = _common_callbacks(run, "phase2", run.model)
    if extra:
        cbs.insert(1, _OffsetEpochs(extra[0], done1))
    h2 = prepare_fit(run.model, run.strategy).fit(
        run.train_ds,
        validation_data=run.val_ds,
        initial_epoch=done1,
        epochs=done1 + ft["epochs"],
        verbose=run.verbose,
        shuffle=False,
        callbacks=cbs,
    )
    _history_merge(run.history, h2)
    run.best.restore()
    run.timings["phase2_seconds"] = time.perf_counter() - t2


def _finish(run: _Run, data_report: dict, done1: int, evaluate: bool) -> RunResult:
    """Evaluate, export, write the card; mark the run finished. Raise if the export failed."""
    from kerastl._errors import ExportError
    from kerastl.train._plots import read_history

    cfg, out_dir = run.cfg, run.out_dir
    # The CSV log spans every process of a resumed run; fit()'s History only this one's.
    logged = read_history(run.logs_dir / "history.csv")
    if logged.get("epoch"):
        run.history = {k: v for k, v in logged.items() if k != "epoch"}
    _interrupt.check()
    metrics: dict[str, Any] = {}
    exports, export_error = None, None
    if run.chief and evaluate:
        from kerastl.train.evaluate import evaluate_run_model

        if run.val_ex is not None:
            boundary = done1 if cfg["finetune"]["epochs"] else None
            metrics = evaluate_run_model(
                run.model_path, run.val_ex, cfg, out_dir, run.history, phase_boundary=boundary
            )
        try:
            exports = _export(run.model_path, cfg, out_dir, run.train_ex, run.val_ex)
        except Exception as exc:  # noqa: BLE001 - keep the trained run, then report the failure
            export_error = exc
            exports = {"failed": f"{type(exc).__name__}: {exc}"}
            log.warning(f"export failed: {type(exc).__name__}: {exc}")
        card = runfolder.model_card(cfg, metrics, data_report, run.timings, exports, out_dir)
        runfolder.run_path(out_dir, "card").write_text(card, encoding="utf-8")
        runfolder.write_json(Path(out_dir) / "timings.json", run.timings)
    # Only now is the run complete: a kill before this point resumes without redoing epochs.
    if run.chief:
        marker = run.state_dir / "run.json"
        runfolder.write_json(marker, {**_read_json(marker), "finished": True})
    shutil.rmtree(run.backup_root, ignore_errors=True)
    with contextlib.suppress(OSError):
        run.backup_root.parent.rmdir()  # only when no other worker's backup is left
    if not run.chief:  # a non-chief worker's files only existed to keep the collectives in step
        shutil.rmtree(out_dir, ignore_errors=True)
    if run.chief and run.verbose and metrics:
        key = HEADLINE.get(cfg["model"]["task"])
        log.info(f"run folder: {out_dir}  validation {key}: {metrics.get(key)}")
    result = RunResult(
        out_dir, run.model_path, metrics, run.history, cfg, run.timings, exports, run.model
    )
    if export_error is not None:
        err = ExportError(
            f"training finished and the model is kept at {run.model_path}, but the export "
            f"failed: {type(export_error).__name__}: {export_error}"
        )
        err.result = result
        raise err from export_error
    return result


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


class _OffsetEpochs(keras.callbacks.Callback):
    """Feed a callback epoch numbers relative to the start of its phase."""

    def __init__(self, inner: keras.callbacks.Callback, offset: int):
        super().__init__()
        self.inner = inner
        self.offset = offset

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def on_epoch_begin(self, epoch, logs=None):
        self.inner.on_epoch_begin(epoch - self.offset, logs)


def _has_tensorboard() -> bool:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        log.warning(
            "TensorBoard logs skipped: the 'tensorboard' package is not installed "
            "(pip install tensorboard)."
        )
        return False
    return True


def _epochs_done(logs_dir: Path, fallback: int) -> int:
    from kerastl.train._plots import read_history

    hist = read_history(logs_dir / "history.csv")
    epochs = hist.get("epoch")
    return int(max(epochs)) + 1 if epochs else fallback


def _run_temp_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f"kerastl_{worker_id()}_")


def _read_state(state_dir: Path) -> dict:
    import json

    path = state_dir / "state.json"
    if path.is_file() and (state_dir / "phase1.weights.h5").is_file():
        return json.loads(path.read_text())
    return {}


def _write_state(state_dir: Path, model: keras.Model, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "phase1.tmp.weights.h5"
    model.save_weights(str(tmp))
    os.replace(tmp, state_dir / "phase1.weights.h5")
    runfolder.write_json(state_dir / "state.json", state)


def _fit_on_cached_features(
    model,
    cfg,
    train_ex,
    val_ex,
    optimizer,
    strategy,
    mode,
    global_batch,
    epochs,
    verbose,
    common_callbacks,
):
    """Phase 1 on cached backbone features; returns (history, cache info)."""
    import tensorflow as tf

    from kerastl.data._pipeline import shuffle_and_batch

    t0 = time.perf_counter()
    with strategy.scope():  # the head model fits with the strategy, like the full model
        feature_model, head = split_model(model)
    cache = FeatureCache(mode, cfg["train"]["cache_dir"])
    size = _image_size(model)
    batch = feature_batch_size(size, global_batch)

    def features_of(ex, label):
        # Uncached, in order, at the inference batch size (not the training one).
        plain = kdata.make_dataset(
            ex, size, batch, shuffle=False, cache=False, channels=cfg["model"]["channels"]
        )
        steps = math.ceil(len(ex) / batch)
        return cache.get(model, feature_model, ex.fingerprint(), plain, steps, verbose, label)

    xtr, ytr = features_of(train_ex, "training features")
    steps = math.ceil(len(train_ex) / global_batch)
    val_feats = None
    if val_ex is not None:
        xva, yva = features_of(val_ex, "validation features")
        val_feats = tf.data.Dataset.from_tensor_slices((xva, yva)).batch(global_batch)
    feats_ds = shuffle_and_batch(
        tf.data.Dataset.from_tensor_slices((xtr, ytr)),
        len(xtr),
        global_batch,
        cfg["data"]["shuffle"],
        cfg["seed"],
    ).prefetch(tf.data.AUTOTUNE)
    seconds = time.perf_counter() - t0
    log.info(
        f"training the head on cached {mode} features "
        f"({xtr.shape[0]} x {xtr.shape[1:]}; feature pass {seconds:.1f} s)"
    )
    with strategy.scope():
        from kerastl._build import compile_for_task

        head.kerastl_config = model.kerastl_config  # compile_for_task reads the task
        # A step of a small head on feature vectors costs less than Keras' per-step
        # dispatch; running a whole epoch per execution gives the same updates, faster.
        # (Not under MultiWorkerMirroredStrategy: its collectives fail with several
        # steps per execution in Keras 3.15.)
        spe = cfg["train"]["steps_per_execution"]
        if spe == 1 and strategy_name(strategy) != "MultiWorkerMirroredStrategy":
            spe = max(1, min(steps, 256))
        compile_for_task(
            head,
            optimizer=optimizer,
            jit_compile=cfg["train"]["jit_compile"],
            steps_per_execution=spe,
        )
    h = prepare_fit(head, strategy).fit(
        feats_ds,
        validation_data=val_feats,
        epochs=epochs,
        verbose=verbose,
        shuffle=False,
        callbacks=common_callbacks("phase1", head),
    )
    with strategy.scope():  # the full model, with the trained head, ready for phase 2 / saving
        _compile(
            model, make_optimizer(cfg["train"]["optimizer"], cfg["train"]["learning_rate"]), cfg
        )
    info = {
        "mode": mode,
        "batch": batch,
        "feature_seconds": round(seconds, 3),
        "hits": cache.hits,
        "misses": cache.misses,
    }
    return h, info


def run_dir_of(cfg: dict) -> str:
    """The run folder a config writes to."""
    return str(Path(cfg["output_dir"]) / cfg["name"])


#: int8 calibration sample drawn from the training data (the converter's warning threshold).
CALIBRATION_SAMPLES = 300
#: Validation examples every exported file is compared on (stratified random sample).
EXPORT_VALIDATION_SAMPLES = 128


def sample_indices(ex: kdata.Examples, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` indices of ``ex``: a class-stratified random sample where there are classes.

    Folder data is ordered by class, so the first ``n`` would be one class; this
    keeps each class's share (sklearn's ``train_test_split(stratify=...)``).

    Example:
        >>> ex = kdata.from_numpy(np.zeros((40, 4, 4, 3), "uint8"), [0] * 30 + [1] * 10)
        >>> np.bincount(ex.y[sample_indices(ex, 8, seed=0)]).tolist()
        [6, 2]
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ex))
    if len(ex) <= n:
        return idx
    labels = None
    if ex.task in ("classification", "binary", "embedding") and ex.class_names:
        labels = np.asarray(ex.y).reshape(len(ex), -1)[:, 0].astype(int)
    try:
        chosen, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # a class with one example cannot be stratified
        chosen, _ = train_test_split(idx, train_size=n, random_state=seed)
    return np.sort(chosen)


def _materialise(ex: kdata.Examples, indices: np.ndarray, model: keras.Model, cfg: dict):
    """Inputs (decoded, resized as in training) and labels of ``ex[indices]``."""
    sample = ex.subset(indices)
    ds = kdata.make_dataset(
        sample, _image_size(model), len(sample), cache=False, channels=cfg["model"]["channels"]
    )
    x, _ = next(iter(ds))
    return x.numpy(), sample


def _export(
    model_path: str,
    cfg: dict,
    out_dir: str,
    train_ex: kdata.Examples,
    val_ex: kdata.Examples | None,
) -> Any:
    """Export the run's best model; raises when the export fails (the run is kept).

    int8 files are calibrated on a class-stratified random sample of the training
    data (:data:`CALIBRATION_SAMPLES` where the data has them); every file is
    validated on a stratified sample of the validation data, with its labels, so the
    report gives the accuracy with and without quantisation.
    """
    formats = cfg["export"]["formats"]
    if not formats:
        return None
    import kerastl.heads  # noqa: F401 - registers the serializable loss
    import kerastl.layers  # noqa: F401 - registers ImagePreprocessing before loading
    from kerastl._model import load_model
    from kerastl.export import export

    model = load_model(model_path)
    task = cfg["model"]["task"]
    seed = cfg["seed"]
    val_source = val_ex if val_ex is not None else train_ex
    x_val, val_sample = _materialise(
        val_source, sample_indices(val_source, EXPORT_VALIDATION_SAMPLES, seed), model, cfg
    )
    labelled = task in ("classification", "binary", "multilabel", "regression")
    validation = (x_val, val_sample.y) if labelled else x_val
    calibration, calibration_info = None, None
    if "int8" in cfg["export"]["quantize"]:
        x_cal, cal_sample = _materialise(
            train_ex, sample_indices(train_ex, CALIBRATION_SAMPLES, seed + 1), model, cfg
        )
        calibration = x_cal
        calibration_info = {
            "source": "training data, class-stratified random sample",
            "samples": len(cal_sample),
            "class_counts": cal_sample.class_counts(),
        }
        log.info(
            f"int8 calibration: {len(cal_sample)} training examples, per class "
            f"{cal_sample.class_counts()}"
        )
    report = export(
        model,
        str(Path(out_dir) / "export"),
        formats=formats,
        quantize=cfg["export"]["quantize"],
        calibration_data=calibration,
        validation_data=validation,
        name=cfg["export"]["name"] or cfg["name"],
        version=cfg["export"]["version"],
        overwrite=True,  # a rerun's files replace the last run's once they pass validation
        max_validation_samples=EXPORT_VALIDATION_SAMPLES,
        max_calibration_samples=CALIBRATION_SAMPLES,
    )
    report["calibration"] = calibration_info
    report["validation"]["source"] = (
        f"{'validation' if val_ex is not None else 'training'} data, stratified random sample"
    )
    _print_export_summary(report, formats, out_dir)
    return report


def _print_export_summary(report: dict, formats: list, out_dir: str) -> None:
    log.info(f"exported {formats} to {Path(out_dir) / 'export'}")
    for art in report.get("artifacts", []):
        metric = (art.get("parity") or {}).get("metric")
        if metric:
            log.info(
                f"  {art['path']}: {metric['name']} {metric['artifact']:.4f} "
                f"(Keras float32 {metric['keras']:.4f}) on {report['validation']['samples']} "
                "validation examples"
            )
