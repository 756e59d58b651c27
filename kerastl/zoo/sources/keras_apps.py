"""Adapter for the keras.applications constructors (and the backbones kerastl builds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl.core.layers import ImagePreprocessing
from kerastl.errors import ConfigError, WeightsError
from kerastl.zoo.sources import native
from kerastl.zoo.sources.base import Adapter, Capabilities, image_shape, pool_feature_map
from kerastl.zoo.weights import (
    URL_SCHEMES,
    download_guard,
    fetch_weights_url,
    imagenet_class_names,
    is_checkpoint,
    load_backbone_weights,
    looks_like_weights_path,
    transfer_weights,
)


class KerasAppsAdapter(Adapter):
    """Adapter over ``keras.applications.<Constructor>``."""

    input_name = "image"
    capabilities = Capabilities(lora=False, export_split=None)

    def resolve_input_shape(self, input_shape: Any, **options: Any) -> tuple:
        spec = self.spec
        self.check_options(options)
        shape = image_shape(input_shape, spec.input_size)
        if input_shape is None:
            return shape
        if isinstance(input_shape, int):
            input_shape = shape  # messages echo the expanded shape
        if len(shape) != 3:
            raise ConfigError(
                f"input_shape: expected (height, width, channels) for an image model, "
                f"got input_shape={input_shape!r}."
            )
        h, w, c = shape
        if c not in (1, 3):
            raise ConfigError(
                f"input_shape: channels must be 3 (RGB) or 1 (grayscale), got {c} "
                f"in input_shape={input_shape!r}."
            )
        for side, v in (("height", h), ("width", w)):
            if v is None:
                continue
            if not isinstance(v, (int, np.integer)) or v < spec.min_input_size:
                raise ConfigError(
                    f"input_shape: {side} {v!r} is below the minimum of {spec.name} "
                    f"({spec.min_input_size} px); got input_shape={input_shape!r}. "
                    f"Valid: {spec.min_input_size} px or more (default {spec.input_size})."
                )
        return (h, w, c)

    def input_spec(self, input_shape: tuple) -> dict[str, Any]:
        shape = tuple(input_shape)
        return {
            "name": self.input_name,
            "shape": list(shape),
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NHWC, RGB" if shape[-1] == 3 else "NHWC, grayscale",
            "preprocessing": self.spec.preprocessing,
        }

    def make_inputs(self, input_shape: tuple) -> keras.KerasTensor:
        return keras.Input(shape=input_shape, name=self.input_name, dtype="float32")

    def preprocess(self, inputs, input_shape: tuple):
        return ImagePreprocessing(
            self.spec.preprocessing, channels=input_shape[-1], name="preprocess"
        )(inputs)

    def _construct(self, input_shape: tuple, weights: str | None) -> keras.Model:
        ctor = getattr(keras.applications, self.spec.constructor, None)
        if ctor is None:  # a backbone kerastl builds itself (EfficientNet-Lite)
            return native.construct(self.spec, input_shape, weights)
        with download_guard(self.spec.name):
            model = ctor(include_top=False, weights=weights, input_shape=input_shape)
        return model

    def classifier_weights(self, weights: Any) -> tuple[Any, Any, list[str]]:
        """The ImageNet classifier that comes with ``weights``: kernel, bias, class names.

        Example:
            >>> get_adapter = __import__("kerastl.zoo", fromlist=["x"]).get_adapter
            >>> kernel, bias, names = get_adapter("efficientnet_lite0").classifier_weights(
            ...     "imagenet")  # doctest: +SKIP
        """
        spec = self.spec
        if getattr(keras.applications, spec.constructor, None) is None:
            return native.classifier_weights(spec, weights)
        if weights not in spec.pretrained:
            raise ConfigError(
                f"pretrained_head: needs weights={spec.pretrained[0]!r} for {spec.name} "
                f"(the classifier comes with Keras' download); got weights={weights!r}."
            )
        ctor = getattr(keras.applications, spec.constructor)
        with download_guard(spec.name):
            full = ctor(include_top=True, weights=weights)
        kernel, bias = full.get_layer("predictions").get_weights()
        return kernel, bias, imagenet_class_names()

    def backbone(self, input_shape: tuple, weights: Any = None) -> keras.Model:
        spec = self.spec
        channels = input_shape[-1]
        if weights is None:
            model = self._construct(input_shape, None)
        elif isinstance(weights, str) and weights in spec.pretrained:
            if channels == 3:
                model = self._construct(input_shape, weights)
            else:
                rgb = self._construct((*input_shape[:2], 3), weights)
                model = self._construct(input_shape, None)
                transfer_weights(rgb, model, f"{spec.name} grayscale stem")
        elif isinstance(weights, (str, os.PathLike)) and looks_like_weights_path(weights):
            if str(weights).startswith(URL_SCHEMES):
                weights = fetch_weights_url(str(weights), spec.name)
            if is_checkpoint(weights):
                return keras.Model(
                    *_io(native.construct(spec, input_shape, os.fspath(weights))),
                    name="backbone",
                )
            model = self._construct(input_shape, None)
            try:
                load_backbone_weights(model, Path(weights), spec.name)
            except WeightsError:
                if channels != 1:
                    raise
                # RGB weights for a grayscale model: load them, then adapt the stem.
                rgb = self._construct((*input_shape[:2], 3), None)
                load_backbone_weights(rgb, Path(weights), spec.name)
                transfer_weights(rgb, model, f"{spec.name} grayscale stem")
        else:
            raise ConfigError(
                f"weights: got weights={weights!r}. Valid: None (random init), "
                + ", ".join(repr(w) for w in spec.pretrained)
                + ", the path of a weights file (.weights.h5, .h5), a PyTorch/safetensors "
                "checkpoint (.pth, .pt, .bin, .safetensors or a folder) or saved kerastl model "
                "(.keras), or a URL with its checksum ('https://.../w.weights.h5#sha256=...')."
            )
        return keras.Model(model.input, model.output, name="backbone")

    def pooled(self, features, pooling: str):
        return pool_feature_map(features, pooling)


def _io(model: keras.Model) -> tuple:
    return model.input, model.output
