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

from kerastl.core.losses import SupervisedContrastiveLoss
from kerastl.errors import ConfigError, choice_error


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


def resolve_task(task: str, handled: dict[str, str] | None = None) -> TaskSpec:
    """Return the :class:`TaskSpec` of ``task`` (or an alias), else a clear error.

    Args:
        task: A task name or alias.
        handled: Other task spellings the caller accepts itself (spelling -> name
            to suggest, e.g. ``{"few_shot": "prototypes"}``); the error lists them too.

    Example:
        >>> resolve_task("multiclass").name
        'classification'
        >>> resolve_task("protoypes", handled={"prototypes": "prototypes"})
        Traceback (most recent call last):
        ...
        kerastl.errors.UnknownNameError: Unknown task='protoypes'. Did you mean 'prototypes'? Valid choices: 'binary', 'classification', 'embedding', 'multilabel', 'prototypes', 'regression'.
    """
    if not isinstance(task, str):
        raise ConfigError(f"task: expected a string, got {type(task).__name__} {task!r}.")
    key = TASK_ALIASES.get(task.lower(), task.lower())
    if key not in TASKS:
        canonical = {**TASK_ALIASES, **(handled or {})}
        raise choice_error("task", task, [*TASKS, *canonical], canonical=canonical)
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


def check_temperature(temperature: Any) -> None:
    """Refuse a temperature that is not a positive number (``ConfigError``)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"temperature: expected a positive number, got {temperature!r}.")
    if not temperature > 0:
        raise ConfigError(f"temperature: expected a positive number, got {temperature!r}.")


@keras.saving.register_keras_serializable(package="kerastl")
class PrototypeHead(keras.layers.Layer):
    """Cosine-similarity logits against class prototypes (no bias, float32).

    Weights: ``prototypes`` ``(num_classes, dim)`` holding ``unit prototype /
    temperature`` per row, and ``center`` ``(dim,)``, subtracted from each
    embedding before it is normalised (zeros by default; with ``center=True`` the
    mean support feature, fixed when the model is built, as in SimpleShot, Wang
    et al. 2019). ``support_sums``
    and ``support_counts`` keep the running sum of unit support embeddings and
    their count per class so that new examples move a prototype as a true mean;
    they are bookkeeping only and are not part of exported graphs.

    With ``whiten=True`` two more weights, ``shift`` ``(dim,)`` and ``whitening``
    ``(dim, dim)``, transform the unit embedding before the cosine:
    ``unit((unit(x - center) - shift) @ whitening)`` (identity until set; see
    :func:`kerastl.prototypes.whitening`). They are fixed once estimated, so
    adding a class never changes the other classes' logits.

    Args:
        num_classes: Number of classes (rows).
        temperature: Softmax temperature of the cosine similarities.
        whiten: Add the ``shift`` and ``whitening`` transform.

    Example:
        >>> import numpy as np
        >>> head = PrototypeHead(2, temperature=0.5)
        >>> _ = head(np.zeros((1, 3), "float32"))
        >>> head.set_weights([np.eye(2, 3, dtype="float32") * 2.0,
        ...                   np.eye(2, 3, dtype="float32"), np.ones(2, "float32"),
        ...                   np.zeros(3, "float32")])
        >>> np.asarray(head(np.array([[0.0, 5.0, 0.0]], "float32"))).tolist()
        [[0.0, 2.0]]
    """

    def __init__(
        self, num_classes: int, temperature: float = 0.1, whiten: bool = False, **kwargs: Any
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes: expected an integer >= 1, got {num_classes!r}.")
        check_temperature(temperature)
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.whiten = bool(whiten)

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[-1])
        shape = (self.num_classes, dim)
        self.prototypes = self.add_weight(
            name="prototypes", shape=shape, initializer="zeros", trainable=False
        )
        self.support_sums = self.add_weight(
            name="support_sums", shape=shape, initializer="zeros", trainable=False
        )
        self.support_counts = self.add_weight(
            name="support_counts", shape=(self.num_classes,), initializer="zeros", trainable=False
        )
        self.center = self.add_weight(
            name="center", shape=(dim,), initializer="zeros", trainable=False
        )
        if self.whiten:
            self.shift = self.add_weight(
                name="shift", shape=(dim,), initializer="zeros", trainable=False
            )
            self.whitening = self.add_weight(
                name="whitening", shape=(dim, dim), initializer="identity", trainable=False
            )

    def call(self, x: Any) -> Any:
        x = _unit(ops.cast(x, "float32") - self.center)
        if self.whiten:
            x = _unit(ops.matmul(x - self.shift, self.whitening))
        return ops.matmul(x, ops.transpose(self.prototypes))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*tuple(input_shape[:-1]), self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "whiten": self.whiten,
        }


def _unit(x: Any) -> Any:
    """Row-wise L2 normalisation as plain ops (rsqrt of the clipped squared norm)."""
    return x * ops.rsqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-12))


def compile_for_task(
    model: keras.Model, learning_rate: float = 1e-3, optimizer: Any = None, **kwargs: Any
) -> keras.Model:
    """Compile ``model`` with its task's default loss and metrics.

    Args:
        model: A kerastl model.
        learning_rate: Adam's rate when ``optimizer`` is not given.
        optimizer: Any Keras optimizer (for instance a discriminative one).
        **kwargs: Passed to ``model.compile`` (``jit_compile``, ``steps_per_execution``).

    Example:
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
        >>> model.kerastl_config = {"task": "classification", "num_outputs": 3}
        >>> compile_for_task(model, learning_rate=1e-4).loss.__class__.__name__
        'SparseCategoricalCrossentropy'
    """
    task = resolve_task(model.kerastl_config["task"])
    units = model.kerastl_config["num_outputs"]
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss=task.loss(),
        metrics=task.metrics(units),
        **kwargs,
    )
    return model
