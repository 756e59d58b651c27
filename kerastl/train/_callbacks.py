"""Optimizers, learning-rate schedules and the callbacks of a run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kerastl.core import interrupt as _interrupt
from kerastl.core.safety import atomic_write_text
from kerastl.errors import ConfigError, KerastlError, choice_error
from kerastl.train import runfolder
from kerastl.train._config import KEEP, OPTIMIZERS, SCHEDULES

log = logging.getLogger(__name__)


def make_schedule(
    learning_rate: float,
    schedule: str,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0.0,
) -> Any:
    """A constant rate, or linear warmup then cosine decay to zero over ``epochs``.

    Example:
        >>> s = make_schedule(1e-3, "cosine", steps_per_epoch=10, epochs=5, warmup_epochs=1)
        >>> round(float(s(10)), 6), round(float(s(50)), 6)
        (0.001, 0.0)
    """
    if schedule not in SCHEDULES:
        raise choice_error("schedule", schedule, SCHEDULES)
    total = max(1, int(steps_per_epoch * epochs))
    warmup = min(int(round(steps_per_epoch * warmup_epochs)), total - 1)
    if schedule == "constant":
        if warmup <= 0:
            return float(learning_rate)
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=float(learning_rate), warmup_steps=warmup
        )
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=total - warmup,
            warmup_target=float(learning_rate),
            warmup_steps=warmup,
        )
    return keras.optimizers.schedules.CosineDecay(float(learning_rate), decay_steps=total)


def make_optimizer(name: str, learning_rate: Any, weight_decay: float = 0.0):
    """A Keras optimizer by name (``adam``, ``adamw``, ``sgd`` with momentum 0.9, ``rmsprop``)."""
    if name not in OPTIMIZERS:
        raise choice_error("optimizer", name, OPTIMIZERS)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 0.004)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=weight_decay or None)
    return keras.optimizers.RMSprop(learning_rate, weight_decay=weight_decay or None)


class BestCheckpoint(keras.callbacks.Callback):
    """Save ``target`` as ``.keras`` whenever ``monitor`` improves, and keep its best weights.

    Unlike ``keras.callbacks.ModelCheckpoint`` the saved model can differ from
    the one being fitted: when the head trains on cached features, the full
    model (backbone + head, sharing the head's layers) is what gets saved.

    Args:
        path: The ``.keras`` file to write.
        target: Model to save (default: the fitted model).
        monitor: Log key, e.g. ``"val_loss"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy/auc/f1).
        best: Best value so far (to continue across the phases of a recipe).
        record: A JSON file that keeps the best value next to each save, so a run
            killed and resumed keeps comparing with the model that ``path`` holds.
        keep: ``"best"`` (the epoch with the best ``monitor``) or ``"last"`` (every epoch
            replaces the one before: no epoch is chosen on the validation data, whose
            scores then stay unbiased estimates).

    Example:
        >>> BestCheckpoint("m.keras", monitor="val_accuracy").mode
        'max'
        >>> last = BestCheckpoint("m.keras", monitor="val_accuracy", keep="last")
        >>> last.best = 0.9
        >>> last._better(0.5)  # the later epoch is kept, even when it scores lower
        True
    """

    def __init__(
        self,
        path: str,
        target: keras.Model | None = None,
        monitor: str = "val_loss",
        mode: str = "auto",
        best: float | None = None,
        verbose: int = 1,
        record: str | os.PathLike | None = None,
        keep: str = "best",
    ):
        super().__init__()
        if keep not in KEEP:
            raise choice_error("train.keep", keep, KEEP)
        self.keep = keep
        self.path = str(path)
        self.record = record
        self.target = target
        self.monitor = monitor
        if mode == "auto":
            mode = (
                "max"
                if any(s in monitor for s in ("acc", "auc", "f1", "precision", "recall"))
                else "min"
            )
        self.mode = mode
        self.best = best if best is not None else (-math.inf if mode == "max" else math.inf)
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.verbose = verbose
        #: Keep the best weights in memory and write the file once, when fit() ends (for
        #: the head on cached features: an epoch takes less time than a save).
        self.defer = False
        self._unsaved = False
        #: The ``.keras`` file of an earlier process's best model, when resumed from it.
        self._resumed_from: str | None = None

    def resume(self, record: str | os.PathLike, saved: str | os.PathLike) -> bool:
        """Continue from the best value in ``record``, whose model an earlier process saved
        as ``saved``; False if either file is missing."""
        if self.keep == "last" or not (os.path.isfile(record) and os.path.isfile(saved)):
            return False  # keep last: the resumed live weights are the latest, not the file
        self.best = float(runfolder.read_json(record)["best"])
        self._resumed_from = str(saved)
        return True

    def _better(self, value: float) -> bool:
        if self.keep == "last":
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        if logs and self.monitor not in logs:
            raise ConfigError(
                f"train.monitor: {self.monitor!r} is not among the metrics this run logs "
                f"({', '.join(sorted(logs))}), so no best epoch could be chosen; set "
                "train.monitor to one of them."
            )
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self._better(float(value)):
            model = self.target or self.model
            if self.verbose:
                verb = "improved to" if self.keep == "best" else "is"
                log.info(
                    f"epoch {epoch + 1}: {self.monitor} {verb} {float(value):.4g}; "
                    + ("kept for the end of the phase" if self.defer else f"saving {self.path}")
                )
            self.best = float(value)
            self.best_epoch = epoch
            self.best_weights = model.get_weights()
            if self.defer:
                self._unsaved = True
            else:
                self._save(model)

    def on_train_end(self, logs=None):
        self.flush()

    @contextlib.contextmanager
    def flushed_on_interrupt(self):
        """Write the kept best model before a Ctrl-C leaves ``fit()``."""
        try:
            yield
        except KeyboardInterrupt:
            self.flush()
            raise

    def flush(self) -> None:
        """Write a best model kept in memory (``defer``); also called on Ctrl-C."""
        if self._unsaved and self.best_weights is not None:
            model = self.target or self.model
            current = model.get_weights()
            model.set_weights(self.best_weights)
            self._save(model)
            model.set_weights(current)

    def _save(self, model) -> None:
        tmp = self.path + ".tmp.keras"
        model.save(tmp)
        os.replace(tmp, self.path)  # never leave a half-written best model
        self._unsaved = False
        if self.record is not None:
            runfolder.write_json(self.record, {"best": self.best, "epoch": self.best_epoch})

    @property
    def saved(self) -> bool:
        """``path`` holds the best model (of this process or of the one it resumes)."""
        return self.best_weights is not None or self._resumed_from is not None

    def restore(self) -> bool:
        """Load the best weights back into the target; False if none were seen.

        After a resume with no improvement in this process, they come from the earlier
        process's file.
        """
        model = self.target or self.model
        if self.best_weights is not None:
            model.set_weights(self.best_weights)
            return True
        if self._resumed_from is not None:
            from kerastl.builder import load_model
            from kerastl.zoo.sources.lora import reseed_lora

            model.set_weights(load_model(self._resumed_from, compile=False).get_weights())
            reseed_lora(model)  # a .keras file merges LoRA into its kernels
            return True
        return False


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recompute the moving statistics of trainable BatchNorm layers at the end of each epoch.

    BatchNorm's moving averages lag far behind the weights when a network
    trains from scratch on little data (keras.applications use momentum 0.99
    or 0.999), so validation in inference mode is poor. This callback runs a
    few training-mode forward passes over ``dataset`` (no gradient step) with
    the momentum set so the moving statistics become the average of the batch
    statistics ("precise BN", Wu & Johnson 2021). Frozen BN layers
    (``trainable=False``) are not touched.

    Args:
        dataset: Batched ``(x, y)`` training data without augmentation.
        batches: How many batches to average.
        target: Model whose BN layers are updated (default: the fitted model).
    """

    def __init__(self, dataset: Any, batches: int = 8, target: keras.Model | None = None):
        super().__init__()
        self.dataset = dataset
        self.batches = int(batches)
        self.target = target

    @staticmethod
    def layers(model: keras.Model) -> list:
        return [
            layer
            for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        ]

    def recalibrate(self, model: keras.Model) -> int:
        """Recompute the statistics now; returns the number of BN layers updated."""
        bns = self.layers(model)
        if not bns:
            return 0
        saved = [b.momentum for b in bns]
        try:
            for i, (x, _) in enumerate(self.dataset.take(self.batches)):
                for b in bns:
                    b.momentum = i / (i + 1.0)  # running average of batch statistics
                model(x, training=True)
        finally:
            for b, m in zip(bns, saved):
                b.momentum = m
        return len(bns)

    def on_train_batch_end(self, batch, logs=None):
        # After the epoch's last step and before validation (which on_epoch_end would miss).
        steps = (self.params or {}).get("steps")
        if steps and batch + 1 >= steps:
            self.recalibrate(self.target or self.model)


class TrainingDiverged(KerastlError):
    """The training loss became NaN or infinite; the last good checkpoint was kept."""


class NanGuard(keras.callbacks.Callback):
    """Stop at the first non-finite loss, before anything saves the broken weights.

    Unlike ``keras.callbacks.TerminateOnNaN`` (which lets the epoch end, so
    ``BackupAndRestore`` and checkpoints would then write NaN weights), this
    raises :class:`TrainingDiverged` from the batch: the epoch never ends, the
    backup and ``model.keras`` keep the last good state. Put it first.
    """

    def __init__(self, phase: str = ""):
        super().__init__()
        self.phase = phase
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingDiverged(
                f"training stopped: the loss became {float(loss)} at epoch {self.epoch + 1}, "
                f"batch {batch + 1}{' of ' + self.phase if self.phase else ''}. The last good "
                "checkpoint (model.keras) and the backup of the last finished epoch are kept; "
                "lower train.learning_rate or check the data for extreme values, then rerun."
            )


def _atomic_copy(src: str, dst: str) -> None:
    import shutil

    tmp = f"{dst}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


#: The counters a resumed callback needs to act as in an uninterrupted ``fit()``.
CALLBACK_STATE = {"EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch")}


def _callback_state(callback: Any) -> dict[str, Any]:
    """The :data:`CALLBACK_STATE` attributes of ``callback`` (JSON numbers).

    Example:
        >>> es = keras.callbacks.EarlyStopping(patience=3)
        >>> es.on_train_begin(); es.wait = 2
        >>> _callback_state(es)
        {'wait': 2, 'best': None, 'best_epoch': 0, 'stopped_epoch': 0}
    """
    keys = CALLBACK_STATE[type(callback).__name__]
    values = {k: getattr(callback, k) for k in keys}
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}


def _generators(model: Any) -> list:
    """The model's random-number generators (dropout, drop-connect, noise), in layer order."""
    layers = model._flatten_layers(include_self=True, recursive=True)
    return [g for layer in layers for g in getattr(layer, "_seed_generators", [])]


def seed_states(model: Any) -> list[list[int]]:
    """The state of each random-number generator of ``model``, as JSON-ready lists.

    Each state is a counter that every training step advances. A weights file does not
    hold it, so a run resumed from weights alone would redraw the dropout masks of the
    steps it already took and end with other weights: every place a run saves to resume
    from (the epoch backups, the end of phase 1) keeps these beside the weights.

    Example:
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dropout(0.5, seed=1)])
        >>> before = seed_states(m)
        >>> _ = m(np.ones((1, 2)), training=True)
        >>> seed_states(m) != before
        True
        >>> set_seed_states(m, before, "a test")
        True
        >>> seed_states(m) == before
        True
    """
    return [np.asarray(g.state.value).tolist() for g in _generators(model)]


def set_seed_states(model: Any, seeds: list | None, where: str) -> bool:
    """Set ``model``'s random-number generators to ``seeds`` (from :func:`seed_states`).

    A model without generators needs none. When ``where`` (a backup, a saved state) holds
    none, or not one per generator, this warns, leaves them as they are and returns False.
    """
    generators = _generators(model)
    if not generators:
        return True
    if seeds is None or len(seeds) != len(generators):
        log.warning(
            f"{where} holds no random-number state for this model's dropout layers: "
            "the resumed epochs draw other dropout masks."
        )
        return False
    for g, state in zip(generators, seeds):
        g.state.assign(np.asarray(state, dtype=g.state.dtype))
    return True


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose files are never half-written.

    Keras writes ``latest.weights.h5`` in place: a process killed during that
    write leaves a corrupt file, and when it was the first backup (no ``.bkp``
    to fall back to) every rerun fails to open it. Here each file is written to
    a temporary name and renamed into place (weights first, then the epoch
    metadata), so a backup that exists is complete. A corrupt file left by an
    older run is moved aside and training restarts from the previous state. The
    backup outlives ``fit()`` (``delete_checkpoint=False``): the run deletes it
    when everything it writes is written.
    """

    def __init__(self, backup_dir: str, stateful: Sequence[Any] = (), **kwargs):
        # Keras deletes the backup when fit() ends; a kill between that and the next
        # durable state (phase bookkeeping, evaluation) would then redo the whole
        # phase. The trainer deletes the backups once the run is complete.
        kwargs.setdefault("delete_checkpoint", False)
        super().__init__(backup_dir, **kwargs)
        #: Callbacks whose counters (:data:`CALLBACK_STATE`) the backup carries, such as
        #: EarlyStopping's epochs without improvement: placed before this callback, they
        #: reset in ``on_train_begin`` and are then set from the backup.
        self.stateful = list(stateful)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for path, prev in (
                (self._weights_path, self._prev_weights_path),
                (self._training_metadata_path, self._prev_training_metadata_path),
            ):
                if os.path.exists(path):
                    _atomic_copy(path, prev)
        tmp = self._weights_path.replace("latest.weights.h5", "latest.tmp.weights.h5")
        self.model.save_weights(filepath=tmp, overwrite=True)
        runfolder.save_lora(self.model, self._weights_path, self._current_epoch)
        os.replace(tmp, self._weights_path)
        meta = f"{self._training_metadata_path}.tmp"
        with open(meta, "w") as f:
            json.dump(
                {
                    "epoch": self._current_epoch,
                    "batch": self._last_batch_seen,
                    "seeds": seed_states(self.model),
                    "callbacks": [_callback_state(c) for c in self.stateful],
                },
                f,
            )
        os.replace(meta, self._training_metadata_path)

    def _load_model(self):
        super()._load_model()
        if not os.path.exists(self._training_metadata_path):
            return
        with open(self._training_metadata_path) as f:
            saved = json.load(f)
        runfolder.load_lora(self.model, self._weights_path, saved.get("epoch"))
        states = saved.get("callbacks") or []
        if self.stateful and len(states) != len(self.stateful):
            log.warning(
                f"the backup in {self.backup_dir} holds no early-stopping state: the resumed "
                "epochs count the epochs without improvement from zero."
            )
        for callback, state in zip(self.stateful, states):
            for key, value in state.items():
                setattr(callback, key, value)
        set_seed_states(self.model, saved.get("seeds"), f"the backup in {self.backup_dir}")

    def on_train_end(self, logs=None):
        # Keras stores the resumed epoch on the model (``model._initial_epoch``) and
        # ``fit()`` prefers it to its own ``initial_epoch`` argument; left set, the next
        # phase's fit() of the same model would start at this phase's resumed epoch.
        self.model._initial_epoch = None
        super().on_train_end(logs)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except OSError:
            for path in (self._weights_path, self._training_metadata_path):
                if os.path.exists(path):
                    os.replace(path, f"{path}.corrupt")
            log.warning(
                f"the backup in {self.backup_dir} was unreadable; moved it aside "
                "(*.corrupt) and restarting this phase from its start."
            )


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` whose file agrees with the backup after a crash.

    Placed before :class:`SafeBackupAndRestore` in the callback list, it writes the
    row of an epoch before the backup of that epoch is saved, so no backed-up epoch
    lacks its row. When a resumed ``fit()`` starts at epoch ``k`` (learnt from the
    first ``on_epoch_begin``), rows of epochs ``>= k`` left by the killed process
    (and a half-written last line) are dropped first, so no epoch is logged twice.
    """

    def __init__(self, filename: str, **kwargs):
        kwargs.setdefault("append", True)
        super().__init__(filename, **kwargs)
        self._opened = False

    def on_train_begin(self, logs=None):
        self._opened = False  # opened at the first epoch, once the start epoch is known

    def on_epoch_begin(self, epoch, logs=None):
        if not self._opened:
            self._truncate(epoch)
            super().on_train_begin(logs)
            self._opened = True

    def on_epoch_end(self, epoch, logs=None):
        if not self._opened:
            self.on_epoch_begin(epoch)
        super().on_epoch_end(epoch, logs)

    def _truncate(self, start_epoch: int) -> None:
        if not os.path.exists(self.filename):
            return
        with open(self.filename, encoding="utf-8", newline="") as f:  # keep csv's "\r\n"
            text = f.read()
        lines = text.splitlines(keepends=True)
        if not lines:
            return
        kept = [lines[0]] if lines[0].startswith("epoch") else []
        for line in lines[len(kept) :]:
            if not line.endswith("\n"):
                break  # the killed process stopped mid-line
            head = line.split(self.sep, 1)[0]
            try:
                if int(head) < start_epoch:
                    kept.append(line)
            except ValueError:
                continue
        new = "".join(kept)
        if new != text:
            atomic_write_text(self.filename, new)


class InterruptCheck(keras.callbacks.Callback):
    """Re-raise a Ctrl-C that a library swallowed, at the next step or epoch boundary."""

    def on_train_batch_end(self, batch, logs=None):
        _interrupt.check()

    def on_epoch_begin(self, epoch, logs=None):
        _interrupt.check()

    def on_epoch_end(self, epoch, logs=None):
        _interrupt.check()

    def on_train_begin(self, logs=None):
        _interrupt.check()


class OffsetEpochs(keras.callbacks.Callback):
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
