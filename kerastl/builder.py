"""``kerastl.build`` and ``kerastl.load_model``: assemble a model, or read one back.

The module is ``builder``, not ``build``: ``kerastl.build`` is the public function,
and a submodule of that name would replace it on the package once imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
from collections.abc import Iterator
from typing import Any

import keras

from kerastl.core import model as core_model
from kerastl.core.heads import TaskSpec, attach_head, compile_for_task, output_units, resolve_task
from kerastl.core.meta import ModelMeta
from kerastl.core.model import KerastlModel
from kerastl.errors import ConfigError, WeightsError
from kerastl.freeze import apply_policy, parse_policy, resolve_train_batchnorm
from kerastl.prototypes import PROTOTYPE_ARGUMENTS, PROTOTYPE_TASKS, build_prototypes
from kerastl.zoo import custom_objects, get_adapter, get_spec


def build(
    name: str,
    task: str = "classification",
    num_classes: int | None = None,
    weights: Any = None,
    input_shape: Any = None,
    freeze: Any = "none",
    dropout: float = 0.0,
    pooling: str = "avg",
    features_only: bool = False,
    out_indices: Any = None,
    class_names: list[str] | None = None,
    train_batchnorm: bool | None = None,
    embedding_dim: int = 128,
    compile: bool = True,
    learning_rate: float = 1e-3,
    pretrained_head: bool = False,
    **adapter_kwargs: Any,
) -> keras.Model:
    """Build a transfer-learning :class:`kerastl.KerastlModel` from a registry backbone.

    The model takes raw data: 0-255 RGB images (any legal size), raw strings
    for text backbones, raw waveforms for audio backbones. The backbone's own
    preprocessing runs inside the graph, so exported artifacts take the same.

    Args:
        name: Registry name or alias (``"resnet50"``, ``"ResNet50"``).
        task: ``"classification"``, ``"binary"``, ``"multilabel"``, ``"regression"``,
            ``"embedding"`` or ``"prototypes"`` (few/zero-shot, no training, see
            :func:`kerastl.prototypes.build_prototypes`).
        num_classes: Classes (or regression outputs); else from ``class_names``.
        weights: ``None`` (random init), ``"imagenet"`` / a preset name, or a
            path to a weights file or saved kerastl model.
        input_shape: ``(height, width, channels)`` or an int side; channels 1
            adapts pretrained stem weights to grayscale.
        freeze: Freezing policy, see :func:`kerastl.freeze.parse_policy`.
        dropout: Dropout rate before the output layer.
        pooling: ``"avg"`` or ``"max"`` over the backbone's feature map.
        features_only: Return a multi-scale feature extractor instead.
        out_indices: Which feature taps to return with ``features_only``.
        class_names: Labels, stored in the model and its exports.
        train_batchnorm: BatchNorm of trainable groups trains; None: iff ``weights=None``.
        embedding_dim: Width of the ``embedding`` task's output.
        compile: Compile with the task's default loss and metrics (Adam).
        learning_rate: Adam's learning rate when ``compile`` is true.
        pretrained_head: Keep the classifier that comes with ``weights`` (ImageNet's
            1000 named classes) instead of a new head.
        **adapter_kwargs: Source-specific options (``sequence_length`` for text).

    Raises:
        ConfigError: an argument is invalid; the message lists valid choices.
        WeightsError: weights cannot be found or do not match.

    Example:
        >>> import kerastl
        >>> model = kerastl.build("mobilenet_v3_small", num_classes=5,
        ...                       input_shape=(96, 96, 3), freeze="backbone")
        >>> model.output_shape
        (None, 5)
    """
    if isinstance(task, str) and task.lower() in PROTOTYPE_TASKS:
        kw = {"class_names": class_names, "weights": weights, "input_shape": input_shape}
        kw |= {"num_classes": num_classes, "pooling": pooling, **adapter_kwargs}
        return _prototypes(name, task, **kw)
    adapter, task_spec = _adapter_and_task(name, task, adapter_kwargs)
    head = _source_classifier(adapter, task_spec, weights, num_classes) if pretrained_head else None
    if features_only:
        return _build_features(adapter, weights, input_shape, out_indices, adapter_kwargs)
    if head is not None:
        num_classes, class_names = len(head[2]), head[2]
    class_names, units = _outputs(task_spec, num_classes, class_names, embedding_dim)
    policy = parse_policy(freeze, resolve_train_batchnorm(train_batchnorm, weights, freeze))
    shape, inputs, features, whole = _graph_or_whole(adapter, input_shape, weights, adapter_kwargs)
    outputs = attach_head(adapter.pooled(features, pooling), task_spec, units, dropout)
    meta = _head_meta(adapter, shape, task_spec, units, class_names, weights, pooling, dropout)
    model = KerastlModel(inputs, outputs, name=meta.backbone + "_" + meta.task, kerastl_config=meta)
    if head is not None:
        model.get_layer("logits").set_weights(list(head[:2]))
    if whole is not None:
        _load_whole_model_weights(model, *whole)
    apply_policy(model, policy)
    return compile_for_task(model, learning_rate=learning_rate) if compile else model


def _adapter_and_task(name: str, task: str, adapter_kwargs: dict) -> tuple[Any, TaskSpec]:
    """The backbone's adapter, once every keyword argument is known, and the task."""
    adapter = get_adapter(get_spec(name))
    adapter.check_options(adapter_kwargs, own=BUILD_ARGUMENTS)
    return adapter, resolve_task(task, handled=dict.fromkeys(PROTOTYPE_TASKS, "prototypes"))


def _prototypes(name: str, task: str, **kwargs: Any) -> keras.Model:
    """``build(task="prototypes")``: the arguments checked, then :func:`build_prototypes`."""
    caller = f"kerastl.build(task={task!r})"
    own = ("task", *PROTOTYPE_ARGUMENTS)
    get_adapter(get_spec(name)).check_options(kwargs, own=own, caller=caller)
    return build_prototypes(name, **kwargs)


#: The keyword arguments of :func:`build` itself (the rest go to the backbone's adapter).
BUILD_ARGUMENTS = tuple(inspect.signature(build).parameters)[1:-1]


def _head_meta(adapter, shape, task_spec, units, class_names, weights, pooling, dropout):
    """The :class:`ModelMeta` of a backbone + head model."""
    return ModelMeta(
        backbone=adapter.spec.name,
        source=adapter.spec.source,
        modality=adapter.spec.modality,
        task=task_spec.name,
        num_outputs=units,
        class_names=class_names,
        input=adapter.input_spec(shape),
        output=task_spec.output_name,
        preprocessing=adapter.spec.preprocessing,
        weights=weights if weights is None or isinstance(weights, str) else str(weights),
        pooling=pooling,
        dropout=dropout,
    )


def _outputs(
    task_spec: TaskSpec, num_classes: int | None, class_names: Any, embedding_dim: int
) -> tuple[list[str] | None, int]:
    """Checked class names and the head's width."""
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(set(class_names)) != len(class_names):
            raise ConfigError(f"class_names: duplicate names in {class_names!r}.")
        if num_classes is None and task_spec.name in ("classification", "multilabel"):
            num_classes = len(class_names)
        if task_spec.name == "binary" and num_classes is None:
            num_classes = 1
    units = output_units(task_spec, num_classes, embedding_dim)
    if class_names is not None and task_spec.name in ("classification", "multilabel"):
        if len(class_names) != units:
            raise ConfigError(
                f"class_names: {len(class_names)} names for num_classes={units}; they must agree."
            )
    return class_names, units


def _backbone_graph(adapter: Any, input_shape: Any, weights: Any, adapter_kwargs: dict) -> tuple:
    """Input shape, input tensor and backbone features of the functional graph."""
    shape = adapter.resolve_input_shape(input_shape, **adapter_kwargs)
    inputs = adapter.make_inputs(shape)
    x = adapter.preprocess(inputs, shape)  # before backbone(): see the Adapter contract
    return shape, inputs, _backbone(adapter, shape, weights, adapter_kwargs)(x)


_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("shared", default=None)


@contextlib.contextmanager
def shared_backbones() -> Iterator[None]:
    """Builds inside reuse one backbone per (model, input shape, weights, options).

    For code that only reads a backbone, such as ``kerastl rank`` and ``advise``: a
    pretrained image model and its earlier taps, built one after the other, are then
    built and loaded once. Only the latest backbone is kept, so a long list of models
    holds one in memory. Random-init backbones (``weights=None``), and text and audio
    ones, are built anew each time. Training one of the models would change the
    others: do not train inside.

    Example:
        >>> with shared_backbones():
        ...     model = build("efficientnet_lite0", num_classes=2, input_shape=32,
        ...                   weights="imagenet", compile=False)
        ...     tap2 = build("efficientnet_lite0", features_only=True, out_indices=[2],
        ...                  input_shape=32, weights="imagenet")
        >>> model.weights[0] is tap2.weights[0]  # the same stem kernel, loaded once
        True
    """
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _backbone(adapter: Any, shape: Any, weights: Any, adapter_kwargs: dict) -> keras.Model:
    """``adapter.backbone(shape, weights)``, once per key inside :func:`shared_backbones`."""
    memo = _SHARED.get()
    # text and audio backbones also hand their tokenizer or frontend to the preprocessing
    # layer made just before (the Adapter contract): a reused one would leave it empty
    image = adapter.spec.modality == "image"
    if memo is None or not image or not isinstance(weights, (str, os.PathLike)):
        return adapter.backbone(shape, weights)
    options = repr(sorted((k, repr(v)) for k, v in adapter_kwargs.items()))
    key = (adapter.spec.name, tuple(shape), os.fspath(weights), options)
    if key not in memo:
        memo.clear()  # the previous backbone is no longer needed: free it first
        memo[key] = adapter.backbone(shape, weights)
    return memo[key]


def _graph_or_whole(adapter: Any, input_shape: Any, weights: Any, adapter_kwargs: dict) -> tuple:
    """:func:`_backbone_graph`, and ``(path, error)`` when ``weights`` may be a whole model's.

    A ``.weights.h5`` file that does not fit the backbone may be ``model.save_weights`` of a
    whole kerastl model (backbone and head): the backbone is then built at random and the
    file loaded into the finished model (:func:`_load_whole_model_weights`).
    """
    try:
        return (*_backbone_graph(adapter, input_shape, weights, adapter_kwargs), None)
    except WeightsError as exc:
        if not str(weights).endswith(".weights.h5") or not os.path.isfile(str(weights)):
            raise
        first = exc
    return (*_backbone_graph(adapter, input_shape, None, adapter_kwargs), (str(weights), first))


def _load_whole_model_weights(model: keras.Model, path: str, backbone_error: Exception) -> None:
    """Load ``model.save_weights`` output into ``model``; else say why neither fits."""
    try:
        model.load_weights(path)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/KeyError
        raise WeightsError(
            f"{backbone_error} Nor is it the weights of this whole model (backbone and a "
            f"{model.output_shape[-1]}-output head, as model.save_weights writes them): "
            f"{str(exc)[:300]}"
        ) from exc


def _source_classifier(adapter, task_spec, weights: Any, num_classes: Any) -> tuple:
    """Kernel, bias and class names of the classifier that comes with ``weights``."""
    if task_spec.name != "classification":
        raise ConfigError(
            f"pretrained_head: the pretrained classifier is a softmax over its classes; it "
            f"needs task='classification', got task={task_spec.name!r}."
        )
    kernel, bias, names = adapter.classifier_weights(weights)
    if num_classes is not None and num_classes != len(names):
        raise ConfigError(
            f"pretrained_head: the pretrained classifier has {len(names)} classes; got "
            f"num_classes={num_classes!r}. Leave num_classes unset."
        )
    return kernel, bias, names


def _build_features(adapter, weights, input_shape, out_indices, adapter_kwargs) -> keras.Model:
    shape = adapter.resolve_input_shape(input_shape, **adapter_kwargs)
    inputs = adapter.make_inputs(shape)
    x = adapter.preprocess(inputs, shape)
    extractor = adapter.feature_extractor(
        _backbone(adapter, shape, weights, adapter_kwargs), out_indices
    )
    outs = extractor(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    taps = [adapter.spec.taps[i] for i in (out_indices or range(len(adapter.spec.taps)))]
    meta = ModelMeta(
        backbone=adapter.spec.name,
        source=adapter.spec.source,
        modality=adapter.spec.modality,
        task="features",
        input=adapter.input_spec(shape),
        preprocessing=adapter.spec.preprocessing,
        feature_info=[{"layer": t.layer, "channels": t.channels, "stride": t.stride} for t in taps],
    )
    return KerastlModel(
        inputs, list(outs), name=f"{adapter.spec.name}_features", kerastl_config=meta
    )


def load_model(
    path: str | os.PathLike, safe_mode: bool = True, compile: bool = True
) -> keras.Model:
    """Load a ``.keras`` file saved from a kerastl (or plain Keras) model.

    Every kerastl class a file may name is resolved from one table (the core's
    and the zoo's, :func:`kerastl.zoo.custom_objects`), so files saved by earlier
    releases, whose configs name older module paths, load too. Runs with Keras'
    ``safe_mode``: a file holding a ``Lambda`` layer or other arbitrary code is
    refused unless ``safe_mode=False``.

    Args:
        path: The ``.keras`` file.
        safe_mode: Refuse to deserialise arbitrary code.
        compile: Restore the training configuration.

    Raises:
        ConfigError: wrong extension or no file. KerastlError: unreadable or unsafe file.

    Example:
        >>> model = kerastl.load_model("runs/exp1/model.keras")  # doctest: +SKIP
    """
    table = custom_objects(core_model.registered_names(path))
    return core_model.load_model(
        path, safe_mode=safe_mode, compile=compile, custom_objects=table, after_load=_lora_again
    )


def _lora_again(model: keras.Model) -> None:
    """A model saved with ``freeze="lora:R"`` gets its adapters back: KerasHub rebuilds the
    backbone without them and Keras keeps the kernels merged, every weight trainable. The
    adapters start fresh on the merged kernels (same outputs); only they and the head train.
    """
    from kerastl.zoo.sources.lora import lora_layers

    freeze = core_model.metadata(model).get("freeze")
    if not (isinstance(freeze, str) and freeze.startswith("lora:")) or lora_layers(model):
        return
    apply_policy(model, freeze)
    opt = getattr(model, "optimizer", None)
    if opt is not None and getattr(opt, "built", False):  # built on the weights before
        fresh = opt.__class__.from_config(opt.get_config())
        with model.distribute_strategy.scope():
            fresh.build(model.trainable_variables)
        model.optimizer = fresh
