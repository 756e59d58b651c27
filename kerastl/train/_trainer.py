"""The training run: data -> strategy -> model -> two-phase recipe -> evaluation -> run folder."""

from __future__ import annotations

import contextlib
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
from kerastl._errors import ConfigError, DataError
from kerastl.train import _run
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
from kerastl.train._config import load_config, validate_config
from kerastl.train._metrics import HEADLINE
from kerastl.train._strategy import (
    get_strategy,
    is_chief,
    prepare_fit,
    set_precision,
    strategy_name,
    worker_id,
)


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
        print(f"[kerastl] skipped {len(skipped)} unreadable file(s):")
        for p, why in skipped[:20]:
            print(f"  {p}: {why}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more (see data_report.json)")
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
            print(
                f"[kerastl] cached features disabled: augmentation {augment} changes the "
                "images every epoch, so backbone features cannot be computed once."
            )
        return None
    if not frozen:
        if want != "auto":
            print(
                "[kerastl] cached features disabled: the backbone is not frozen "
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
    An interrupted run resumes where it stopped (``train.resume``).

    Args:
        config: A config dict (validated here) or the path of a YAML file.
        overrides: ``{"train.epochs": 3, ...}`` applied before validation.
        examples: ``(train, validation)`` examples to use instead of ``data``.
        callbacks: Extra Keras callbacks for both phases.
        evaluate: Compute metrics, plots and the model card at the end.

    Returns:
        A :class:`RunResult`.

    Example:
        >>> from kerastl.train import train
        >>> result = train("run.yaml", {"train.epochs": 2})  # doctest: +SKIP
        >>> result.metrics["accuracy"]  # doctest: +SKIP
        0.93
    """
    t_start = time.perf_counter()
    if isinstance(config, dict):
        cfg = dict(config)
        if overrides:
            from kerastl.train._config import set_key

            for k, v in overrides.items():
                set_key(cfg, k, v)
        if examples is not None:
            cfg.setdefault("data", {})
            cfg["data"] = {
                **(cfg.get("data") or {}),
                "path": cfg.get("data", {}).get("path") or "<in-memory examples>",
            }
        cfg = validate_config(cfg)
        if cfg["name"] is None:
            cfg["name"] = "run"
    else:
        cfg = load_config(config, overrides)
    t, ft = cfg["train"], cfg["finetune"]
    verbose = _verbose(t["verbose"])
    # A fresh Keras session per run: layer-name counters restart (layer groups of some
    # backbones are declared by auto-generated names) and earlier runs' graphs are freed.
    keras.utils.clear_session()
    keras.utils.set_random_seed(cfg["seed"])
    precision = set_precision(t["precision"])
    strategy = get_strategy(t["strategy"])
    replicas = strategy.num_replicas_in_sync
    global_batch = t["batch_size"] * replicas
    chief = is_chief()
    run_dir = str(Path(cfg["output_dir"]) / cfg["name"])
    out_dir = run_dir if chief else _run_temp_dir()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    backup_root = Path(run_dir) / "backup" / worker_id()
    state_dir = Path(out_dir) / "state"
    if not t["resume"]:
        for p in (backup_root, state_dir, Path(out_dir) / "logs"):
            shutil.rmtree(p, ignore_errors=True)
    if chief:
        _run.write_config(out_dir, cfg)

    # -- data -----------------------------------------------------------------
    if examples is not None:
        train_ex, val_ex = examples
    else:
        train_ex, val_ex = load_examples(cfg)
    skipped = _report_skipped(train_ex, val_ex)
    from kerastl.heads import resolve_task

    want = resolve_task(cfg["model"]["task"]).name
    for part in (train_ex, val_ex):
        if part is not None and part.task != want:
            raise DataError(
                f"{part.source}: the labels were encoded for task={part.task!r} but "
                f"model.task is {want!r}; load the data with task={want!r}."
            )

    # -- model, in the strategy scope -----------------------------------------
    with strategy.scope():
        model = _build_model(cfg, train_ex, cfg["model"]["freeze"])
    image_size = _image_size(model)
    channels = cfg["model"]["channels"]
    steps = max(1, math.ceil(len(train_ex) / global_batch))
    cache_path = cfg["data"]["cache"] if isinstance(cfg["data"]["cache"], str) else True
    train_ds = kdata.make_dataset(
        train_ex,
        image_size,
        global_batch,
        shuffle=cfg["data"]["shuffle"],
        seed=cfg["seed"],
        augment=cfg["data"]["augment"],
        cache=cache_path,
        channels=channels,
    )
    val_ds = (
        kdata.make_dataset(val_ex, image_size, global_batch, cache=True, channels=channels)
        if val_ex is not None
        else None
    )
    monitor = t["monitor"] if val_ds is not None else t["monitor"].replace("val_", "")
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
    if chief:
        _run.write_json(_run.run_path(out_dir, "data_report"), data_report)

    model_path = str(Path(out_dir) / "model.keras")
    best = BestCheckpoint(model_path, target=model, monitor=monitor, verbose=int(verbose > 0))
    logs_dir = Path(out_dir) / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)

    def common_callbacks(phase: str, fitted: keras.Model) -> list:
        # Order matters for a kill between two callbacks: NanGuard first (a NaN loss aborts
        # before anything saves it); the CSV row and the best checkpoint of an epoch are
        # written before its backup, so a resumed run never misses them (it redoes the epoch
        # and the logger drops the duplicate row).
        cbs: list = [
            InterruptCheck(),
            NanGuard(phase),
            ResumableCSVLogger(str(logs_dir / "history.csv")),
        ]
        best.target = model
        best.defer = fitted is not model  # the head on cached features: save once per phase
        cbs.append(best)
        patience = t["early_stopping"]
        if patience and patience is not True:
            cbs.append(
                keras.callbacks.EarlyStopping(
                    monitor=monitor,
                    patience=int(patience),
                    mode=best.mode,
                    verbose=int(verbose > 0),
                )
            )
        elif patience is True:
            cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=5, mode=best.mode))
        pbn = t["precise_bn"]
        if pbn and fitted is model:
            plain = kdata.make_dataset(
                train_ex,
                image_size,
                max(global_batch, 64),
                shuffle=True,
                seed=cfg["seed"] + 1,
                cache=True,
                channels=channels,
            )
            cbs.append(PreciseBatchNorm(plain, 4 if pbn is True else int(pbn)))
        cbs.append(SafeBackupAndRestore(str(backup_root / phase), double_checkpoint=True))
        if t["tensorboard"] and _has_tensorboard():
            cbs.append(
                keras.callbacks.TensorBoard(
                    str(logs_dir / "tensorboard" / phase), write_graph=False, profile_batch=0
                )
            )
        return cbs + list(callbacks or [])

    state = _read_state(state_dir) if t["resume"] else {}
    history: dict[str, list[float]] = {}
    timings: dict[str, Any] = {
        "strategy": strategy_name(strategy),
        "replicas": replicas,
        "precision": precision,
        "feature_cache": "no",
    }
    if state.get("best") is not None:
        best.best = state["best"]

    # -- phase 1 --------------------------------------------------------------
    epochs1 = t["epochs"]
    done1 = 0
    if epochs1 and state.get("phase1_done"):
        model.load_weights(str(state_dir / "phase1.weights.h5"))
        done1 = int(state.get("phase1_epochs", epochs1))
        history = state.get("history", {})
        print(f"[kerastl] resuming: phase 1 already done ({done1} epochs)")
    elif epochs1:
        t1 = time.perf_counter()
        cache_mode = _decide_cache(cfg, model, train_ex)
        with strategy.scope():
            optimizer = make_optimizer(
                t["optimizer"],
                make_schedule(
                    t["learning_rate"], t["schedule"], steps, epochs1, t["warmup_epochs"]
                ),
                t["weight_decay"],
            )
        if cache_mode:
            with best.flushed_on_interrupt():
                h, info = _fit_on_cached_features(
                    model,
                    cfg,
                    train_ex,
                    val_ex,
                    optimizer,
                    strategy,
                    cache_mode,
                    global_batch,
                    epochs1,
                    verbose,
                    common_callbacks,
                )
            timings["feature_cache"] = info
        else:
            with strategy.scope():
                _compile(model, optimizer, cfg)
            h = prepare_fit(model, strategy).fit(
                train_ds,
                validation_data=val_ds,
                epochs=epochs1,
                verbose=verbose,
                shuffle=False,
                callbacks=common_callbacks("phase1", model),
            )
        _history_merge(history, h)
        best.restore()
        done1 = _epochs_done(logs_dir, len(h.history.get("loss", [])))
        timings["phase1_seconds"] = time.perf_counter() - t1
        _write_state(
            state_dir,
            model,
            {
                "phase1_done": True,
                "phase1_epochs": done1,
                "best": best.best if math.isfinite(best.best) else None,
                "history": history,
            },
        )

    # -- phase 2: fine-tune ---------------------------------------------------
    _interrupt.check()
    if ft["epochs"]:
        t2 = time.perf_counter()
        from kerastl.freeze import GradualUnfreezing, apply_policy, discriminative_optimizer

        lr2 = ft["learning_rate"] if ft["learning_rate"] is not None else t["learning_rate"] / 10
        extra: list = []
        with strategy.scope():
            if ft["gradual_every"]:
                apply_policy(model, "backbone", train_batchnorm=cfg["model"]["train_batchnorm"])
            else:
                apply_policy(model, ft["freeze"], train_batchnorm=cfg["model"]["train_batchnorm"])
            if ft["layer_decay"]:
                optimizer = discriminative_optimizer(
                    model, lr2, decay=ft["layer_decay"], optimizer=t["optimizer"]
                )
            else:
                optimizer = make_optimizer(
                    t["optimizer"],
                    make_schedule(lr2, ft["schedule"], steps, ft["epochs"], ft["warmup_epochs"]),
                    t["weight_decay"],
                )
            _compile(model, optimizer, cfg)
            if ft["gradual_every"]:
                extra.append(
                    GradualUnfreezing(model, every=ft["gradual_every"], verbose=verbose > 0)
                )
        print(
            f"[kerastl] phase 2: fine-tuning (freeze={ft['freeze']!r}, lr={lr2:g}) "
            f"for {ft['epochs']} epoch(s)"
        )
        cbs = common_callbacks("phase2", model)
        if extra:
            cbs.insert(1, _OffsetEpochs(extra[0], done1))
        h2 = prepare_fit(model, strategy).fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=done1,
            epochs=done1 + ft["epochs"],
            verbose=verbose,
            shuffle=False,
            callbacks=cbs,
        )
        _history_merge(history, h2)
        best.restore()
        timings["phase2_seconds"] = time.perf_counter() - t2

    # The best weights are in the model and in model.keras (or, without validation, the last).
    if best.best_weights is None or not Path(model_path).exists():
        tmp = model_path + ".tmp.keras"
        model.save(tmp)
        os.replace(tmp, model_path)
    timings["total_seconds"] = time.perf_counter() - t_start

    # The CSV log spans every process of a resumed run; fit()'s History only this one's.
    from kerastl.train._plots import read_history

    logged = read_history(logs_dir / "history.csv")
    if logged.get("epoch"):
        history = {k: v for k, v in logged.items() if k != "epoch"}
    _interrupt.check()
    metrics: dict[str, Any] = {}
    exports = None
    if chief and evaluate:
        from kerastl.train._evaluate import evaluate_run_model

        if val_ex is not None:
            metrics = evaluate_run_model(
                model_path,
                val_ex,
                cfg,
                out_dir,
                history,
                phase_boundary=done1 if ft["epochs"] else None,
            )
        exports = _export(model_path, cfg, out_dir, val_ex if val_ex is not None else train_ex)
        card = _run.model_card(cfg, metrics, data_report, timings, exports, out_dir)
        _run.run_path(out_dir, "card").write_text(card, encoding="utf-8")
        _run.write_json(Path(out_dir) / "timings.json", timings)
    # Only now is the run complete: a kill before this point resumes without redoing epochs.
    shutil.rmtree(backup_root, ignore_errors=True)
    with contextlib.suppress(OSError):
        backup_root.parent.rmdir()  # only when no other worker's backup is left
    if not chief:  # a non-chief worker's files only existed to keep the collectives in step
        shutil.rmtree(out_dir, ignore_errors=True)
    if chief and verbose and metrics:
        key = HEADLINE.get(cfg["model"]["task"])
        print(f"[kerastl] run folder: {out_dir}  validation {key}: {metrics.get(key)}")
    return RunResult(out_dir, model_path, metrics, history, cfg, timings, exports, model)


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
        print(
            "[kerastl] TensorBoard logs skipped: the 'tensorboard' package is not installed "
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
    _run.write_json(state_dir / "state.json", state)


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
    print(
        f"[kerastl] training the head on cached {mode} features "
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


def _export(model_path: str, cfg: dict, out_dir: str, ex: kdata.Examples) -> Any:
    formats = cfg["export"]["formats"]
    if not formats:
        return None
    try:
        from kerastl.export import export
    except ImportError as exc:
        print(
            f"[kerastl] export skipped: kerastl.export is not available in this build ({exc}). "
            f"The trained model is {model_path}; export it later with `kerastl export`."
        )
        return {"skipped": f"kerastl.export unavailable: {exc}"}
    import kerastl.heads  # noqa: F401 - registers the serializable loss
    import kerastl.layers  # noqa: F401 - registers ImagePreprocessing before loading
    from kerastl._model import load_model

    model = load_model(model_path)
    n = min(len(ex), 64)
    sample = ex.subset(np.arange(n))
    ds = kdata.make_dataset(
        sample, _image_size(model), n, cache=False, channels=cfg["model"]["channels"]
    )
    x, _ = next(iter(ds))
    x = x.numpy()
    try:
        report = export(
            model,
            str(Path(out_dir) / "export"),
            formats=formats,
            quantize=cfg["export"]["quantize"],
            calibration_data=x,
            validation_data=x,
            name=cfg["export"]["name"] or cfg["name"],
            version=cfg["export"]["version"],
        )
    except (ConfigError, DataError):
        raise
    except Exception as exc:  # noqa: BLE001 - keep the trained run; report the export failure
        print(f"[kerastl] export failed: {type(exc).__name__}: {exc}")
        return {"failed": f"{type(exc).__name__}: {exc}"}
    print(f"[kerastl] exported {formats} to {Path(out_dir) / 'export'}")
    return report
