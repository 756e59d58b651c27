"""Optimizers, learning-rate schedules and the callbacks of a run."""

from __future__ import annotations

import math
import os
from typing import Any

import keras
import numpy as np

from kerastl._errors import choice_error
from kerastl.train._config import OPTIMIZERS, SCHEDULES


def make_schedule(learning_rate: float, schedule: str, steps_per_epoch: int, epochs: int,
                  warmup_epochs: float = 0.0) -> Any:
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
            0.0, decay_steps=total - warmup, warmup_target=float(learning_rate),
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
        save: Write the file (False on non-chief workers is not needed: they
            get a temporary path instead).
    """

    def __init__(self, path: str, target: keras.Model | None = None, monitor: str = "val_loss",
                 mode: str = "auto", best: float | None = None, verbose: int = 1):
        super().__init__()
        self.path = str(path)
        self.target = target
        self.monitor = monitor
        if mode == "auto":
            mode = "max" if any(s in monitor for s in ("acc", "auc", "f1", "precision",
                                                        "recall")) else "min"
        self.mode = mode
        self.best = best if best is not None else (-math.inf if mode == "max" else math.inf)
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.verbose = verbose

    def _better(self, value: float) -> bool:
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self._better(float(value)):
            model = self.target or self.model
            if self.verbose:
                print(f"\n[kerastl] epoch {epoch + 1}: {self.monitor} improved to "
                      f"{float(value):.4f}; saving {self.path}")
            self.best = float(value)
            self.best_epoch = epoch
            self.best_weights = model.get_weights()
            tmp = self.path + ".tmp.keras"
            model.save(tmp)
            os.replace(tmp, self.path)  # never leave a half-written best model

    def restore(self) -> bool:
        """Load the best weights back into the target; False if none were seen."""
        if self.best_weights is None:
            return False
        (self.target or self.model).set_weights(self.best_weights)
        return True
