"""Losses and regularisers kerastl models may carry (serialisable, float32)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="kerastl")
class SupervisedContrastiveLoss(keras.losses.Loss):
    """Supervised contrastive loss (Khosla et al. 2020) over L2-normalised embeddings.

    ``y_true`` holds integer class ids; examples with the same id are pulled
    together, others pushed apart. Used by the ``embedding`` task.

    Args:
        temperature: Softmax temperature of the cosine similarities.
    """

    def __init__(self, temperature: float = 0.1, name: str = "supcon", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        z = ops.cast(y_pred, "float32")
        n = ops.shape(z)[0]
        logits = ops.matmul(z, ops.transpose(z)) / self.temperature
        not_self = 1.0 - ops.eye(n, dtype="float32")
        logits = logits - 1e9 * (1.0 - not_self)
        same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32") * not_self
        log_prob = logits - ops.logsumexp(logits, axis=1, keepdims=True)
        pos = ops.sum(same, axis=1)
        per_example = -ops.sum(same * log_prob, axis=1) / ops.maximum(pos, 1.0)
        # Examples without a positive in the batch carry no signal.
        return per_example * ops.cast(pos > 0, "float32")

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="kerastl")
class L2SP(keras.regularizers.Regularizer):
    """``alpha/2 * ||w - w0||^2``: keep a fine-tuned weight near its start ``w0``.

    Li et al. 2018, "Explicit inductive bias for transfer learning". Attached
    to variables by :func:`apply_l2sp`.

    A training-time regulariser only: it is not saved. Keras does not serialise
    regularisers attached to variables, and the starting point (a copy of every
    backbone kernel) does not belong in a model file, so a saved and reloaded
    model predicts the same but carries no penalty (``model.losses`` is empty).
    To continue fine-tuning with L2-SP, call :func:`apply_l2sp` again after
    loading (the pull is then towards the loaded weights) or keep the original
    starting weights and load them first.
    """

    def __init__(self, start: Any, alpha: float = 1e-2):
        self.start = keras.ops.convert_to_tensor(np.asarray(start))
        self.alpha = float(alpha)

    def __call__(self, x):
        d = keras.ops.cast(x, "float32") - keras.ops.cast(self.start, "float32")
        return 0.5 * self.alpha * keras.ops.sum(keras.ops.square(d))

    def get_config(self):
        return {"alpha": self.alpha, "start": None}

    @classmethod
    def from_config(cls, config):
        # The start values are not stored (see the class docstring): no penalty.
        return keras.regularizers.L2(0.0)
