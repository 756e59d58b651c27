"""Task heads, written once for every backbone.

A head maps the pooled feature vector to the task output. Its last layers are
float32 even under a mixed-precision policy, so logits and losses stay stable.
Each task also declares its default loss and metrics, used by ``build``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from kerastl._errors import ConfigError, choice_error


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


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs: output activation, units rule, default loss and metrics."""

    name: str
    activation: str | None
    output_name: str
    loss: Callable[[], Any]
    metrics: Callable[[int], list]
    description: str


def _cls_metrics(n: int) -> list:
    m: list = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if n > 5:
        m.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"))
    return m


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "classification",
            "softmax",
            "probabilities",
            lambda: keras.losses.SparseCategoricalCrossentropy(),
            _cls_metrics,
            "multi-class, one integer label per example, softmax probabilities",
        ),
        TaskSpec(
            "binary",
            "sigmoid",
            "probabilities",
            lambda: keras.losses.BinaryCrossentropy(),
            lambda n: [
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.AUC(name="auc"),
            ],
            "two classes, label 0/1, one sigmoid probability",
        ),
        TaskSpec(
            "multilabel",
            "sigmoid",
            "probabilities",
            lambda: keras.losses.BinaryCrossentropy(),
            lambda n: [
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.AUC(multi_label=True, num_labels=n, name="auc"),
            ],
            "any number of labels per example (multi-hot), sigmoid per class",
        ),
        TaskSpec(
            "regression",
            None,
            "predictions",
            lambda: keras.losses.MeanSquaredError(),
            lambda n: [
                keras.metrics.MeanAbsoluteError(name="mae"),
                keras.metrics.RootMeanSquaredError(name="rmse"),
            ],
            "real-valued targets (num_classes = number of outputs, default 1)",
        ),
        TaskSpec(
            "embedding",
            None,
            "embedding",
            lambda: SupervisedContrastiveLoss(),
            lambda n: [],
            "L2-normalised vector (embedding_dim), trained with a supervised contrastive loss",
        ),
    )
}
#: Spellings users reach for.
TASK_ALIASES = {
    "multiclass": "classification",
    "multi_class": "classification",
    "multi-class": "classification",
    "multi_label": "multilabel",
    "multi-label": "multilabel",
    "text_classification": "classification",
    "audio_classification": "classification",
    "image_classification": "classification",
}


def resolve_task(task: str) -> TaskSpec:
    """Return the :class:`TaskSpec` of ``task`` (or an alias), else a clear error."""
    if not isinstance(task, str):
        raise ConfigError(f"task: expected a string, got {type(task).__name__} {task!r}.")
    key = TASK_ALIASES.get(task.lower(), task.lower())
    if key not in TASKS:
        raise choice_error("task", task, list(TASKS) + list(TASK_ALIASES), canonical=TASK_ALIASES)
    return TASKS[key]


def output_units(task: TaskSpec, num_classes: int | None, embedding_dim: int) -> int:
    """Validate ``num_classes`` for ``task`` and return the head's width."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int)
    ):
        raise ConfigError(
            f"num_classes: expected a positive integer, got {type(num_classes).__name__} "
            f"{num_classes!r}."
        )
    if task.name == "embedding":
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ConfigError(f"embedding_dim: expected an integer >= 1, got {embedding_dim!r}.")
        return embedding_dim
    if task.name == "regression":
        n = 1 if num_classes is None else num_classes
        if n < 1:
            raise ConfigError(f"num_classes: regression needs >= 1 output, got num_classes={n}.")
        return n
    if task.name == "binary":
        if num_classes not in (None, 1, 2):
            raise ConfigError(
                f"num_classes: task='binary' has one sigmoid output (num_classes 1 or 2), "
                f"got num_classes={num_classes}. For {num_classes} classes use "
                "task='classification' (one label each) or task='multilabel'."
            )
        return 1
    if num_classes is None:
        raise ConfigError(f"num_classes: task={task.name!r} needs num_classes, got None.")
    if task.name == "classification" and num_classes < 2:
        raise ConfigError(
            f"num_classes: task='classification' needs num_classes >= 2, got "
            f"num_classes={num_classes}. For one yes/no output use task='binary'."
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes: expected >= 1, got num_classes={num_classes}.")
    return num_classes


def attach_head(features, task: TaskSpec, units: int, dropout: float = 0.0):
    """Add dropout, the float32 output layer and its activation to ``features``.

    Example:
        >>> import keras
        >>> x = keras.Input((16,))
        >>> y = attach_head(x, resolve_task("classification"), 3)
        >>> tuple(y.shape)
        (None, 3)
    """
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout: expected a rate in [0, 1), got dropout={dropout!r}.")
    x = features
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    name = "logits" if task.activation else task.output_name
    x = keras.layers.Dense(
        units, dtype="float32", name=name if task.name != "embedding" else "projection"
    )(x)
    if task.activation:
        x = keras.layers.Activation(task.activation, dtype="float32", name=task.output_name)(x)
    if task.name == "embedding":
        x = keras.layers.UnitNormalization(dtype="float32", name="embedding")(x)
    return x
