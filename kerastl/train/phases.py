"""The two phases of a run: phase 1 (on cached features when it can) and fine-tuning.

Each phase reads and updates a :class:`~kerastl.train.context.RunContext`; the
callbacks of both are made by :func:`phase_callbacks` from that context.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from typing import Any

import keras
import numpy as np

from kerastl import data as kdata
from kerastl.core.features import collapsed, feature_rms
from kerastl.core.meta import ModelMeta
from kerastl.core.policy import parse_policy
from kerastl.errors import ConfigError
from kerastl.train._cache import FeatureCache, backbone_is_frozen, feature_batch_size, split_model
from kerastl.train._callbacks import (
    InterruptCheck,
    NanGuard,
    OffsetEpochs,
    PreciseBatchNorm,
    ResumableCSVLogger,
    SafeBackupAndRestore,
    make_optimizer,
    make_schedule,
    seed_states,
    set_seed_states,
)
from kerastl.train._strategy import prepare_fit
from kerastl.train.context import RunContext, data_cache
from kerastl.train.runfolder import load_lora, read_json

log = logging.getLogger(__name__)


def compile_model(model: keras.Model, optimizer: Any, cfg: dict, **overrides: Any) -> None:
    """Compile ``model`` for its task with ``train.jit_compile`` and ``steps_per_execution``."""
    from kerastl.builder import compile_for_task

    t = cfg["train"]
    options = {"jit_compile": t["jit_compile"], "steps_per_execution": t["steps_per_execution"]}
    compile_for_task(model, optimizer=optimizer, **{**options, **overrides})


def phase_callbacks(ctx: RunContext, phase: str, fitted: keras.Model) -> list:
    """The callbacks of one phase, fitting ``fitted`` (the model, or its head on features).

    Order matters for a kill between two callbacks: NanGuard first (a NaN loss aborts
    before anything saves it); the CSV row and the best checkpoint of an epoch are
    written before its backup, so a resumed run never misses them (it redoes the
    epoch and the logger drops the duplicate row). With a progress bar, Keras'
    ``ProgbarLogger`` comes before them all: it ends the epoch's bar line before the
    callbacks log (``val_loss improved ...``), which would otherwise land inside it.
    """
    folder, best = ctx.folder, ctx.best
    cbs: list = [InterruptCheck(), NanGuard(phase), ResumableCSVLogger(str(folder.history_csv))]
    if ctx.verbose and not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in ctx.callbacks):
        cbs.insert(0, keras.callbacks.ProgbarLogger())  # fit() uses it instead of its own, last
    best.target = ctx.model
    # the head on cached features, or every epoch kept (keep: last): save once per phase
    best.defer = best.keep == "last" or fitted is not ctx.model
    cbs.append(best)
    stop = _early_stopping(ctx)
    cbs += stop
    if fitted is ctx.model:
        cbs += _precise_bn(ctx)
    backup = str(folder.backup_root / phase)
    cbs.append(SafeBackupAndRestore(backup, stateful=stop, double_checkpoint=True))
    if ctx.cfg["train"]["tensorboard"] and _has_tensorboard():
        logs = str(folder.logs_dir / "tensorboard" / phase)
        cbs.append(keras.callbacks.TensorBoard(logs, write_graph=False, profile_batch=0))
    return cbs + ctx.callbacks


def _early_stopping(ctx: RunContext) -> list:
    patience = ctx.cfg["train"]["early_stopping"]
    if patience is True:
        patience = 5
    if not patience:
        return []
    return [
        keras.callbacks.EarlyStopping(
            monitor=ctx.monitor,
            patience=int(patience),
            mode=ctx.best.mode,
            verbose=int(ctx.verbose > 0),
        )
    ]


def _precise_bn(ctx: RunContext) -> list:
    """PreciseBatchNorm per ``train.precise_bn``; ``auto``: for a random-init backbone whose
    BatchNorm trains (after a few epochs its moving averages are still near their initial
    values, and validation, in inference mode, sees collapsed features)."""
    pbn = ctx.cfg["train"]["precise_bn"]
    if pbn == "auto":
        meta = ModelMeta.of(ctx.model)
        pbn = meta.weights is None and bool(meta.train_batchnorm)
    if not pbn:
        return []
    # One seeded shuffle, the same batches every epoch: a resumed run recomputes the same
    # statistics as an uninterrupted one (a dataset reshuffled each pass restarts its
    # sequence of orders in the new process).
    order = np.random.default_rng(ctx.cfg["seed"] + 1).permutation(len(ctx.train_ex))
    batch = max(ctx.global_batch, 64)
    plain = ctx.dataset(ctx.train_ex.subset(order), batch, cache=data_cache(ctx.cfg))
    return [PreciseBatchNorm(plain, 4 if pbn is True else int(pbn))]


def _has_tensorboard() -> bool:
    if importlib.util.find_spec("tensorboard") is None:
        log.warning(
            "TensorBoard logs skipped: the 'tensorboard' package is not installed "
            "(pip install tensorboard)."
        )
        return False
    return True


def history_merge(total: dict[str, list[float]], h: keras.callbacks.History | None) -> None:
    """Append the epochs of ``h`` to ``total``."""
    if h is None:
        return
    for k, v in h.history.items():
        total.setdefault(k, []).extend(float(x) for x in v)


def decide_cache(cfg: dict, model: keras.Model, ex: kdata.Examples) -> str | None:
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


def phase1(ctx: RunContext) -> int:
    """Phase 1 (or its saved result when resuming); returns the epochs it ran."""
    t, model, state = ctx.cfg["train"], ctx.model, ctx.state
    epochs = t["epochs"]
    if not epochs:
        return 0
    if state.get("phase1_done"):
        model.load_weights(str(ctx.folder.phase1_saved))
        load_lora(model, ctx.folder.phase1_saved)
        # where phase 1 left the dropout masks: phase 2 draws on from there
        set_seed_states(model, state.get("seeds"), f"the phase-1 state in {ctx.folder.state_dir}")
        done = int(state.get("phase1_epochs", epochs))
        ctx.history = state.get("history", {})
        log.info(f"resuming: phase 1 already done ({done} epochs)")
        return done
    backed_up = ctx.folder.backed_up_epochs("phase1") if ctx.resuming else 0
    if backed_up:
        log.info(f"resuming phase 1 from epoch {backed_up + 1} ({backed_up} of {epochs} done)")
    t1 = time.perf_counter()
    cache_mode = decide_cache(ctx.cfg, model, ctx.train_ex)
    with ctx.strategy.scope():
        schedule = make_schedule(
            t["learning_rate"], t["schedule"], ctx.steps, epochs, t["warmup_epochs"]
        )
        optimizer = make_optimizer(t["optimizer"], schedule, t["weight_decay"])
    if cache_mode:
        with ctx.best.flushed_on_interrupt():
            h = _fit_on_cached_features(ctx, optimizer, cache_mode)
    else:
        if backbone_is_frozen(model):
            check_learnable(ctx.cfg, _probe_features(ctx))
        with ctx.strategy.scope():
            compile_model(model, optimizer, ctx.cfg)
        h = prepare_fit(model, ctx.strategy).fit(
            ctx.train_ds,
            validation_data=ctx.val_ds,
            epochs=epochs,
            verbose=ctx.verbose,
            shuffle=False,
            callbacks=phase_callbacks(ctx, "phase1", model),
        )
    history_merge(ctx.history, h)
    ctx.best.restore()
    done = ctx.folder.epochs_done(len(h.history.get("loss", [])))
    ctx.timings["phase1_seconds"] = time.perf_counter() - t1
    saved = {"phase1_done": True, "phase1_epochs": done, "history": ctx.history,
             "seeds": seed_states(model)}  # fmt: skip
    ctx.folder.write_state(model, saved)
    return done


def _fit_on_cached_features(ctx: RunContext, optimizer: Any, mode: str) -> Any:
    """Phase 1 on cached backbone features; returns the history (cache use in the timings)."""
    t0 = time.perf_counter()
    with ctx.strategy.scope():  # the head model fits with the strategy, like the full model
        feature_model, head = split_model(ctx.model)
    cache = FeatureCache(mode, ctx.cfg["train"]["cache_dir"])
    batch = feature_batch_size(ctx.image_size, ctx.global_batch)
    train_ds, val_ds, shape = _feature_datasets(ctx, cache, feature_model, batch)
    seconds = time.perf_counter() - t0
    log.info(
        f"training the head on cached {mode} features "
        f"({shape[0]} x {shape[1:]}; feature pass {seconds:.1f} s)"
    )
    with ctx.strategy.scope():
        head.kerastl_config = ctx.model.kerastl_config  # compile_for_task reads the task
        compile_model(head, optimizer, ctx.cfg, steps_per_execution=_head_steps(ctx))
    h = prepare_fit(head, ctx.strategy).fit(
        train_ds,
        validation_data=val_ds,
        epochs=ctx.cfg["train"]["epochs"],
        verbose=ctx.verbose,
        shuffle=False,
        callbacks=phase_callbacks(ctx, "phase1", head),
    )
    t = ctx.cfg["train"]
    with ctx.strategy.scope():  # the full model, with the trained head, ready for phase 2 / saving
        compile_model(ctx.model, make_optimizer(t["optimizer"], t["learning_rate"]), ctx.cfg)
    ctx.timings["feature_cache"] = {
        "mode": mode,
        "batch": batch,
        "feature_seconds": round(seconds, 3),
        "hits": cache.hits,
        "misses": cache.misses,
    }
    return h


def _feature_datasets(
    ctx: RunContext, cache: FeatureCache, feature_model: keras.Model, batch: int
) -> tuple[Any, Any, tuple]:
    """Training and validation datasets of cached features; also the training features' shape."""
    import tensorflow as tf

    from kerastl.data._pipeline import shuffle_and_batch

    def features_of(ex: kdata.Examples, label: str) -> tuple[Any, Any]:
        # Uncached, in order, at the inference batch size (not the training one).
        plain = ctx.dataset(ex, batch, shuffle=False, cache=False)
        steps = math.ceil(len(ex) / batch)
        return cache.get(
            ctx.model, feature_model, ex.fingerprint(), plain, steps, ctx.verbose, label
        )

    xtr, ytr = features_of(ctx.train_ex, "training features")
    check_learnable(ctx.cfg, xtr)
    val_ds = None
    if ctx.val_ex is not None:
        xva, yva = features_of(ctx.val_ex, "validation features")
        val_ds = tf.data.Dataset.from_tensor_slices((xva, yva)).batch(ctx.eval_batch(len(xva)))
    d = ctx.cfg["data"]
    train_ds = shuffle_and_batch(
        tf.data.Dataset.from_tensor_slices((xtr, ytr)),
        len(xtr),
        ctx.global_batch,
        d["shuffle"],
        ctx.cfg["seed"],
        drop_remainder=ctx.drops_last(len(xtr)),
    ).prefetch(tf.data.AUTOTUNE)
    return train_ds, val_ds, xtr.shape


#: Training examples whose features :func:`_probe_features` reads when phase 1 runs the
#: frozen backbone in every step (no feature cache).
PROBE_EXAMPLES = 64


def _probe_features(ctx: RunContext) -> np.ndarray:
    """The frozen backbone's features of the first training examples (unaugmented)."""
    feature_model, _ = split_model(ctx.model)
    ex = ctx.train_ex.subset(np.arange(min(len(ctx.train_ex), PROBE_EXAMPLES)))
    batches = ctx.dataset(ex, 16, shuffle=False, cache=False)
    return np.concatenate(
        [keras.ops.convert_to_numpy(feature_model(x, training=False)) for x, _ in batches]
    )


def check_learnable(cfg: dict, features: np.ndarray) -> None:
    """Stop a run whose frozen backbone gives every training example the same features.

    A head on collapsed features (:func:`kerastl.core.features.collapsed`) stays at chance
    accuracy, so a run that never unfreezes the backbone is refused before it trains;
    one whose fine-tuning trains the backbone goes on, with a warning.

    Example:
        >>> cfg = {"model": {"weights": None, "freeze": "backbone"},
        ...        "finetune": {"epochs": 0, "freeze": "none"}}
        >>> check_learnable(cfg, np.eye(4))  # features that differ: nothing to say
        >>> check_learnable(cfg, np.zeros((4, 8)))
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: model.weights: null (random init) with model.freeze: ...
    """
    rms = feature_rms(features)
    if not collapsed(features, rms):
        return
    m, ft = cfg["model"], cfg["finetune"]
    if m["weights"] is None:
        cause = (
            f"model.weights: null (random init) with model.freeze: {m['freeze']!r} keeps "
            "random layers frozen, their BatchNorm at its initial statistics"
        )
    else:
        cause = (
            f"model.weights: {m['weights']!r} with model.freeze: {m['freeze']!r}; check "
            "that the training examples differ"
        )
    msg = (
        f"{cause}: the frozen backbone gives every training example the same features "
        f"(RMS {rms:.1e}), and a head trained on them stays at chance accuracy."
    )
    kind = parse_policy(ft["freeze"]).kind
    if ft["epochs"] and kind != "backbone":
        what = "every layer" if kind == "none" else "the layers it unfreezes (the rest stay as now)"
        log.warning(f"{msg} Fine-tuning (finetune.freeze: {ft['freeze']!r}) then trains {what}.")
        return
    raise ConfigError(
        f"{msg} Valid: model.weights: imagenet, a preset or a weights file (--weights); "
        "model.freeze: none to train every layer from random init (--freeze none); or "
        "finetune.epochs > 0 to fine-tune the backbone after phase 1."
    )


def _head_steps(ctx: RunContext) -> int:
    """``steps_per_execution`` of the head on features.

    A step of a small head on feature vectors costs less than Keras' per-step
    dispatch; running a whole epoch per execution gives the same updates, faster.
    On one replica only: with several (MirroredStrategy on two devices, or several
    workers) Keras 3.15's multi-step execution fails ("You must feed a value for
    placeholder tensor", collectives aborted), so each step runs on its own.
    """
    spe = ctx.cfg["train"]["steps_per_execution"]
    if spe == 1 and ctx.strategy.num_replicas_in_sync == 1:
        spe = max(1, min(ctx.steps, 256))
    return spe


def finetune_setup(ctx: RunContext) -> tuple[float, list]:
    """Freeze, optimizer and callbacks of phase 2; returns (rate, extra callbacks).

    ``finetune.freeze`` is the limit of gradual unfreezing when ``gradual_every`` is
    set (``last:N`` / ``up_to:GROUP``: those groups join one by one; ``none``: all).
    ``layer_decay`` gives each group its own rate, each with the schedule, warm-up
    and weight decay of ``finetune`` / ``train``.
    """
    from kerastl.freeze import GradualUnfreezing, apply_policy, discriminative_optimizer

    cfg, model = ctx.cfg, ctx.model
    t, ft = cfg["train"], cfg["finetune"]
    lr2 = ft["learning_rate"] if ft["learning_rate"] is not None else t["learning_rate"] / 10
    bn = bool(ModelMeta.of(model).train_batchnorm)  # as build() resolved it from the weights

    def group_optimizer(rate: float) -> keras.optimizers.Optimizer:
        schedule = make_schedule(rate, ft["schedule"], ctx.steps, ft["epochs"], ft["warmup_epochs"])
        return make_optimizer(t["optimizer"], schedule, t["weight_decay"])

    extra: list = []
    with ctx.strategy.scope():
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
        compile_model(model, optimizer, cfg)
        if ft["gradual_every"]:
            extra.append(
                GradualUnfreezing(
                    model, every=ft["gradual_every"], max_groups=max_groups, verbose=ctx.verbose > 0
                )
            )
    return lr2, extra


def phase2(ctx: RunContext, done1: int) -> None:
    """Fine-tune from epoch ``done1`` for ``finetune.epochs`` epochs."""
    ft = ctx.cfg["finetune"]
    t2 = time.perf_counter()
    lr2, extra = finetune_setup(ctx)
    log.info(
        f"phase 2: fine-tuning (freeze={ft['freeze']!r}, lr={lr2:g}) for {ft['epochs']} epoch(s)"
    )
    if _phase2_already_done(ctx):
        return
    backed_up = ctx.folder.backed_up_epochs("phase2") if ctx.resuming else 0
    if backed_up > done1:
        log.info(
            f"resuming phase 2 from epoch {backed_up + 1} "
            f"({backed_up - done1} of {ft['epochs']} done)"
        )
    cbs = phase_callbacks(ctx, "phase2", ctx.model)
    if extra:  # before NanGuard, after InterruptCheck (and the progress bar)
        at = next(i for i, c in enumerate(cbs) if isinstance(c, NanGuard))
        cbs.insert(at, OffsetEpochs(extra[0], done1))
    h2 = prepare_fit(ctx.model, ctx.strategy).fit(
        ctx.train_ds,
        validation_data=ctx.val_ds,
        initial_epoch=done1,
        epochs=done1 + ft["epochs"],
        verbose=ctx.verbose,
        shuffle=False,
        callbacks=cbs,
    )
    history_merge(ctx.history, h2)
    ctx.best.restore()
    # Training is over (all epochs, or early stopping): `kerastl evaluate` of a run killed
    # from here on says so, with the epochs it ran.
    done = ctx.folder.epochs_done(done1 + len(h2.history.get("loss", [])))
    ctx.folder.update_state({"phase2_done": True, "epochs_done": done, "history": ctx.history})
    ctx.timings["phase2_seconds"] = time.perf_counter() - t2


def _phase2_already_done(ctx: RunContext) -> bool:
    """Resuming a run killed after phase 2 ended (all epochs, or early stopping): take its
    result instead of training on. Without this, the backup of its last epoch would resume
    ``fit()`` after that epoch, and an early-stopped run would train epochs an
    uninterrupted run never trained."""
    # state.json itself: without a phase 1 (train.epochs: 0) ctx.state is {}
    path = ctx.folder.state_dir / "state.json"
    state = read_json(path) if ctx.resuming and path.is_file() else {}
    last = ctx.folder.backup_root / "phase2" / "latest.weights.h5"
    if not state.get("phase2_done") or not (ctx.best.saved or last.is_file()):
        return False
    ctx.history = state.get("history", ctx.history)
    if not ctx.best.restore():  # no best model: the weights of the last epoch
        ctx.model.load_weights(str(last))
        load_lora(ctx.model, last)
    log.info(f"resuming: phase 2 already done ({state.get('epochs_done')} epochs in all)")
    return True
