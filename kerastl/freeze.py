"""Freezing policies as data over named layer groups, and the fine-tuning tools.

A :class:`FreezePolicy` says which backbone groups train. BatchNorm layers are
frozen by setting ``trainable=False`` on the layers themselves, which in
Keras 3 both stops their weight updates and keeps them in inference mode (the
``training=False`` call argument alone is overridden by ``fit`` once the base
is unfrozen: keras issue 20285).

The BatchNorm rule (:func:`resolve_train_batchnorm`, applied by
:func:`kerastl.build` and so by ``kerastl train``): ``train_batchnorm=None``, the
default, means *train BatchNorm when the backbone starts from random weights*
(``weights=None``) and *keep it frozen when it starts from pretrained weights*.
BatchNorm that trains uses batch statistics in ``fit`` and updates its moving
statistics, scale and offset; it does so only in the groups the policy trains
(a frozen group's BatchNorm always stays in inference mode). An explicit
``train_batchnorm=False`` is honoured, with a warning for a random-init backbone:
its BatchNorm then normalises with the initial statistics (mean 0, variance 1), and
the activations shrink layer after layer until the features are ~0.

Also here: :class:`GradualUnfreezing` (a callback), :func:`discriminative_optimizer`
(layer-wise learning-rate decay on ``keras.optimizers.MultiOptimizer``) and
:func:`apply_l2sp` (pull fine-tuned weights towards their starting values).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

import keras

from kerastl.core.losses import L2SP  # noqa: F401 - public here since 0.1
from kerastl.core.meta import ModelMeta
from kerastl.core.model import OPTIMIZER_VARIABLES, KerastlModel
from kerastl.core.optimizers import GroupRatesOptimizer, VariableGroups
from kerastl.core.policy import POLICY_KINDS, FreezePolicy, parse_policy  # noqa: F401
from kerastl.errors import ConfigError, choice_error

log = logging.getLogger(__name__)


def _backbone_and_groups(model: keras.Model):
    backbone, adapter, groups, _ = _backbone_groups_and_idle(model)
    return backbone, adapter, groups


def _backbone_groups_and_idle(model: keras.Model):
    """The backbone, its adapter, its groups, and the layers of the groups no gradient
    reaches (:meth:`Adapter.idle_groups`), which are left out of the groups."""
    from kerastl.zoo import get_adapter

    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise ConfigError(
            "model: freezing policies act on a kerastl model (one built by kerastl.build), "
            "which has a layer named 'backbone'; this model has none."
        ) from None
    name = ModelMeta.of(model).backbone
    if not name:
        raise ConfigError("model: no kerastl metadata; build it with kerastl.build().")
    adapter = get_adapter(name)
    groups = adapter.layer_groups(backbone)
    idle = [groups.pop(g, ()) for g in adapter.idle_groups(ModelMeta.of(model).pooling)]
    return backbone, adapter, groups, [s for layers in idle for x in layers for s in _all_layers(x)]


def _all_layers(layer: keras.Layer) -> list[keras.Layer]:
    return list(layer._flatten_layers(include_self=True, recursive=True))


def resolve_train_batchnorm(train_batchnorm: bool | None, weights: Any, freeze: Any = None) -> bool:
    """Whether BatchNorm layers of trainable groups train (the rule in the module docstring).

    Args:
        train_batchnorm: ``True``/``False`` as asked, or ``None`` (the default): ``True``
            for a random-init backbone (``weights=None``), ``False`` for pretrained weights.
        weights: The ``weights`` argument of :func:`kerastl.build`.
        freeze: The freezing policy, to warn when a random-init backbone has frozen groups.

    Returns:
        The resolved flag.

    Example:
        >>> resolve_train_batchnorm(None, None), resolve_train_batchnorm(None, "imagenet")
        (True, False)
    """
    random_init = weights is None
    resolved = random_init if train_batchnorm is None else bool(train_batchnorm)
    if random_init and not resolved:
        warnings.warn(
            "train_batchnorm=False with weights=None (random init): the BatchNorm layers "
            "keep their initial statistics, so the backbone's features collapse to ~0 and "
            "the model cannot learn. Leave train_batchnorm unset (it trains BatchNorm for a "
            "random-init backbone) or start from pretrained weights.",
            stacklevel=3,
        )
    elif random_init and freeze is not None and parse_policy(freeze).kind != "none":
        warnings.warn(
            f"freeze={parse_policy(freeze).to_string()!r} with weights=None (random init): "
            "frozen groups keep random weights and their BatchNorm its initial statistics, "
            "so their features are collapsed. Use freeze='none' to train from scratch.",
            stacklevel=3,
        )
    return resolved


def apply_policy(model: keras.Model, freeze: Any, train_batchnorm: bool | None = None) -> dict:
    """Set ``trainable`` on the backbone of ``model`` according to a policy.

    Layers outside the backbone (the head) always train. A group the head never reads
    (a text encoder's pooler under ``pooling="avg"``) stays frozen and is not counted by
    ``last:N``. Recompile the model afterwards if it was already compiled (``build`` and
    the trainer do this).

    Args:
        model: A model from :func:`kerastl.build`.
        freeze: A policy (see :func:`parse_policy`).
        train_batchnorm: Overrides the policy's ``train_batchnorm``.

    Returns:
        ``{group name: True if it trains}`` for the backbone groups.

    Example:
        >>> import kerastl
        >>> m = kerastl.build("resnet50", num_classes=2, input_shape=(32, 32, 3))
        >>> apply_policy(m, "last:1")["stage4"]
        True
    """
    policy = parse_policy(freeze)
    if train_batchnorm is not None:
        policy = FreezePolicy(policy.kind, policy.value, train_batchnorm)
    check_policy(model, policy)
    backbone, adapter, groups, idle = _backbone_groups_and_idle(model)
    names = list(groups)
    if policy.kind in ("backbone", "lora"):
        trains = dict.fromkeys(names, False)
    elif policy.kind == "none" or policy.kind == "regex":
        trains = dict.fromkeys(names, True)
    elif policy.kind == "up_to":
        cut = names.index(policy.value)
        trains = {g: i > cut for i, g in enumerate(names)}
    else:  # last
        trains = {g: i >= len(names) - policy.value for i, g in enumerate(names)}

    backbone.trainable = True  # propagates down; per-layer flags follow
    pattern = re.compile(policy.value) if policy.kind == "regex" else None
    for gname, layers in groups.items():
        for layer in layers:
            trainable = trains[gname]
            if pattern is not None and pattern.search(layer.name):
                trainable = False
            for sub in _all_layers(layer):
                sub.trainable = trainable
    for sub in idle:  # no gradient reaches them: Keras warns
        sub.trainable = False
    if not policy.train_batchnorm:
        for sub in _all_layers(backbone):
            if adapter.is_batchnorm(sub):
                sub.trainable = False
    if policy.kind == "backbone" and not policy.train_batchnorm:
        backbone.trainable = False
    if policy.kind == "lora":
        adapter.enable_lora(backbone, policy.value)
    meta = ModelMeta.of(model)
    meta = dataclasses.replace(
        meta, freeze=policy.to_string(), train_batchnorm=policy.train_batchnorm
    )
    model.kerastl_config = meta.to_dict()
    return trains


def check_policy(model: keras.Model, freeze: Any) -> None:
    """Raise the ConfigError :func:`apply_policy` would raise for ``freeze`` on ``model``.

    A run checks its fine-tuning policy with it when the model is built, before phase 1
    trains: a policy that fits no group or layer fails then, not after the first phase.

    Example:
        >>> import kerastl
        >>> m = kerastl.build("mobilenet_v3_small", num_classes=2, weights=None,
        ...                   input_shape=(32, 32, 3))  # doctest: +SKIP
        >>> check_policy(m, "last:99")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: freeze: 'last:99' asks for more groups than ...
    """
    policy = freeze if isinstance(freeze, FreezePolicy) else parse_policy(freeze)
    _, adapter, groups = _backbone_and_groups(model)
    names = list(groups)
    if policy.kind == "lora" and not adapter.capabilities.lora:
        raise ConfigError(
            f"freeze: 'lora:{policy.value}' is for KerasHub text backbones; "
            f"{adapter.spec.name} has no LoRA support."
        )
    if policy.kind == "up_to" and policy.value not in groups:
        raise choice_error("freeze", f"up_to:{policy.value}", [f"up_to:{g}" for g in names])
    if policy.kind == "last" and policy.value > len(names):
        raise ConfigError(
            f"freeze: 'last:{policy.value}' asks for more groups than {adapter.spec.name} "
            f"has ({len(names)}: {names})."
        )
    if policy.kind == "regex":
        _check_regex_matches(re.compile(policy.value), groups, adapter.spec.name)


def _check_regex_matches(pattern: re.Pattern, groups: dict, backbone: str) -> None:
    """Refuse a ``regex:`` policy that names no layer (it would freeze nothing)."""
    names = [layer.name for layers in groups.values() for layer in layers]
    if any(pattern.search(n) for n in names):
        return
    # The first layer with weights of each group: names a pattern can aim at.
    firsts = [next((x.name for x in layers if x.weights), None) for layers in groups.values()]
    examples = ", ".join(f"{g}: {n!r}" for g, n in zip(groups, firsts) if n)
    raise ConfigError(
        f"freeze: 'regex:{pattern.pattern}' matches no layer of {backbone}'s backbone, so it "
        f"would freeze nothing (re.search over the names of its {len(names)} layers). The "
        f"first layer of each group: {examples}."
    )


def trainable_groups(model: keras.Model) -> dict[str, bool]:
    """``{group: True if any weight in it trains}`` for a kerastl model."""
    _, _, groups = _backbone_and_groups(model)
    return {g: any(layer.trainable_weights for layer in layers) for g, layers in groups.items()}


def _variables_by_group(model: keras.Model) -> tuple[list[str], dict[str, int]]:
    """Map every backbone variable path to its group index; the head is last."""
    _, _, groups = _backbone_and_groups(model)
    names = list(groups)
    index: dict[str, int] = {}
    for i, layers in enumerate(groups.values()):
        for layer in layers:
            for v in layer.weights:
                index[v.path] = i
    return names, index


class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreeze backbone groups from the head down, one every ``every`` epochs.

    Epochs ``0..every-1`` train what the current policy leaves trainable
    (usually the head only), then the last backbone group joins, and so on.
    Create it before the first ``fit``: it prepares the optimizer for the
    weights it will unfreeze (Keras optimizers only update weights they were
    built with).

    Args:
        model: The kerastl model (compiled).
        every: Epochs between two unfreezing steps.
        max_groups: Stop after this many groups (default: all).
        verbose: Print each step.

    Example:
        >>> cb = GradualUnfreezing(model, every=2)  # doctest: +SKIP
        >>> model.fit(ds, epochs=8, callbacks=[cb])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: keras.Model,
        every: int = 1,
        max_groups: int | None = None,
        verbose: bool = True,
    ):
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"every: expected an integer >= 1, got {every!r}.")
        self._target = model
        self.every = every
        self.verbose = verbose
        _, _, groups = _backbone_and_groups(model)
        self.group_names = list(groups)
        self.max_groups = len(groups) if max_groups is None else max_groups
        self.train_batchnorm = bool(ModelMeta.of(model).train_batchnorm)
        self.unfrozen = 0
        self._prebuild_optimizer(model, groups)

    def _prebuild_optimizer(self, model, groups) -> None:
        opt = getattr(model, "optimizer", None)
        if opt is None or opt.built:
            return
        candidates = list(model.trainable_variables)
        seen = {id(v) for v in candidates}
        for layers in groups.values():
            for layer in layers:
                for sub in _all_layers(layer):
                    if not self.train_batchnorm and isinstance(
                        sub, keras.layers.BatchNormalization
                    ):
                        continue
                    for v in (
                        sub._trainable_variables if hasattr(sub, "_trainable_variables") else []
                    ):
                        if id(v) not in seen:
                            seen.add(id(v))
                            candidates.append(v)
        with model.distribute_strategy.scope():
            opt.build(candidates)
        if isinstance(model, KerastlModel):  # so that load_model restores the state on them
            paths = [v.path for v in candidates]
            model.kerastl_config = {**model.kerastl_config, OPTIMIZER_VARIABLES: paths}

    def on_epoch_begin(self, epoch, logs=None):
        want = min(epoch // self.every, self.max_groups)
        if want == self.unfrozen:
            return
        self.unfrozen = want
        apply_policy(self.model, f"last:{want}", train_batchnorm=self.train_batchnorm)
        self.model.make_train_function(force=True)
        if self.verbose:
            names = self.group_names[len(self.group_names) - want :]
            log.info(f"epoch {epoch}: training backbone groups {names}")


def discriminative_optimizer(
    model: keras.Model,
    learning_rate: float = 1e-3,
    decay: float = 0.5,
    optimizer: str = "adam",
    factory: Callable[[float], keras.optimizers.Optimizer] | None = None,
    **optimizer_kwargs,
) -> keras.optimizers.MultiOptimizer:
    """Layer-wise learning-rate decay: one optimizer per backbone group.

    Combines with :class:`GradualUnfreezing` (each group joins at its own rate).

    The head trains at ``learning_rate``; backbone group ``k`` from the top at
    ``learning_rate * decay**k`` (ULMFiT's discriminative fine-tuning, BEiT's
    layer decay). Built on ``keras.optimizers.MultiOptimizer``.

    Args:
        model: A kerastl model.
        learning_rate: Rate of the head.
        decay: Factor per group going down, in (0, 1].
        optimizer: Any name ``keras.optimizers.get`` knows.
        factory: ``rate -> optimizer`` building each group's optimizer (e.g. with a
            learning-rate schedule that starts from ``rate``, warm-up and weight decay);
            replaces ``optimizer`` and ``optimizer_kwargs``. Each group's schedule counts
            that group's own steps.
        **optimizer_kwargs: Passed to each optimizer.

    Returns:
        The optimizer to pass to ``model.compile``.

    Example:
        >>> opt = discriminative_optimizer(model, 1e-3, decay=0.5)  # doctest: +SKIP
        >>> model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")  # doctest: +SKIP
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"decay: expected a factor in (0, 1], got decay={decay!r}.")
    names, index = _variables_by_group(model)
    n = len(names)

    def make(lr: float) -> keras.optimizers.Optimizer:
        if factory is not None:
            return factory(lr)
        opt = keras.optimizers.get(optimizer)
        cfg = opt.get_config()
        cfg.update(optimizer_kwargs)
        cfg["learning_rate"] = lr
        return opt.__class__.from_config(cfg)

    rates = {"head": learning_rate} | {
        g: learning_rate * decay ** (n - i) for i, g in enumerate(names)
    }
    groups = {g: make(rate) for g, rate in rates.items()}
    assignment = {path: names[i] for path, i in index.items()}
    multi = GroupRatesOptimizer(VariableGroups(groups, assignment, "head", rates))
    return multi


def apply_l2sp(model: keras.Model, alpha: float = 1e-2, head_l2: float = 0.0) -> int:
    """Add an L2-SP penalty to every trainable backbone weight (and L2 to the head).

    Call after freezing and before ``compile``/``fit``. The penalty appears in
    ``model.losses`` and therefore in the training loss. It is not saved with the
    model (see :class:`L2SP`): apply it again after loading to keep using it.

    Args:
        model: A kerastl model whose backbone holds the starting (pretrained) weights.
        alpha: Strength of the pull towards the starting weights.
        head_l2: Plain L2 on the head's kernels (the "beta" term of the paper).

    Returns:
        The number of variables that received the penalty.
    """
    if alpha < 0 or head_l2 < 0:
        raise ConfigError(f"alpha and head_l2 must be >= 0, got alpha={alpha}, head_l2={head_l2}.")
    backbone = model.get_layer("backbone")
    count = 0
    for v in backbone.trainable_variables:
        if len(v.shape) >= 2:  # kernels, not biases / norm scales
            v.regularizer = L2SP(keras.ops.convert_to_numpy(v), alpha)
            count += 1
    if head_l2:
        backbone_ids = {id(v) for v in backbone.weights}
        for v in model.trainable_variables:
            if id(v) not in backbone_ids and len(v.shape) >= 2:
                v.regularizer = keras.regularizers.L2(head_l2)
    return count
