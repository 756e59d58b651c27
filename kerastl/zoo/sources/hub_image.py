"""KerasHub image backbones: ``"image"`` (raw 0-255 RGB) -> ``"preprocess"`` (the
preset's image converter: scale and offset) -> ``"backbone"`` -> ``"pool"`` -> head.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kerastl.errors import ConfigError
from kerastl.zoo._keras_hub_family import side_multiple
from kerastl.zoo.sources.base import Capabilities, detach_rest, image_shape, tap_indices
from kerastl.zoo.sources.keras_hub import KerasHubAdapter, hub_backbone_of, init_args
from kerastl.zoo.sources.layers import (
    HubImagePreprocessing,
    import_keras_hub,
    jsonable,
    keep_config,
)

#: Families whose pretrained position embeddings interpolate to any input size,
#: though their registry entry is marked ``fixed_size`` (the preset's own size).
INTERPOLATES_POSITIONS = frozenset({"dinov2"})


def _side_multiple_error(spec, cfg: dict[str, Any], multiple: int, input_shape) -> ConfigError:
    why = f"cuts images into {cfg.get('patch_size')}x{cfg.get('patch_size')} patches"
    if multiple != cfg.get("patch_size"):
        why += (
            f" and attends in {cfg['window_size']}x{cfg['window_size']} windows at "
            f"each of {len(cfg['depths'])} stages"
        )
    return ConfigError(
        f"input_shape: {spec.name} {why}; the sides must be multiples of {multiple}, "
        f"got input_shape={input_shape!r}."
    )


class HubImageAdapter(KerasHubAdapter):
    """Adapter over a KerasHub image backbone (CNN stages or ViT patches)."""

    input_name = "image"
    capabilities = Capabilities(lora=False, export_split=None)

    def _resolve(self, input_shape: Any, options: dict[str, Any]) -> tuple:
        spec = self.spec
        shape = image_shape(input_shape, spec.input_size)
        if input_shape is None:
            return shape
        if isinstance(input_shape, int):
            input_shape = shape  # messages echo the expanded shape
        if len(shape) != 3 or shape[-1] != 3:
            raise ConfigError(
                f"input_shape: {spec.name} takes RGB images (height, width, 3); got "
                f"input_shape={input_shape!r}."
            )
        for side in shape[:2]:
            if not isinstance(side, (int, np.integer)) or side < spec.min_input_size:
                raise ConfigError(
                    f"input_shape: {spec.name} needs sides of at least {spec.min_input_size} "
                    f"px (default {spec.input_size}); got input_shape={input_shape!r}."
                )
        cfg = self.config(options)
        multiple = side_multiple(cfg)
        if multiple > 1 and (shape[0] % multiple or shape[1] % multiple):
            raise _side_multiple_error(spec, cfg, multiple, input_shape)
        return tuple(int(s) for s in shape)

    def input_spec(self, input_shape: tuple) -> dict[str, Any]:
        return {
            "name": "image",
            "shape": list(input_shape),
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NHWC, RGB",
            "preprocessing": "keras_hub image converter (scale, offset)",
        }

    def _preprocessing_layer(self, input_shape: tuple, options: dict[str, Any]) -> keras.Layer:
        conv = self.spec.extra.get("converter") or {}
        return HubImagePreprocessing(
            conv.get("scale", 1 / 255.0), conv.get("offset", 0.0), name="preprocess"
        )

    # -- backbone --------------------------------------------------------------------
    def _random_config(self, cls, input_shape: tuple, options: dict[str, Any]) -> dict:
        cfg = self.config(options)
        if "image_shape" in init_args(cls):
            cfg["image_shape"] = tuple(input_shape)
        return cfg

    def _preset_kwargs(self, cls, input_shape: tuple) -> dict[str, Any]:
        spec = self.spec
        if "image_shape" not in init_args(cls):
            return {}
        fixed = spec.extra.get("fixed_size") and spec.family not in INTERPOLATES_POSITIONS
        if fixed and tuple(input_shape[:2]) != (spec.input_size, spec.input_size):
            raise ConfigError(
                f"input_shape: the pretrained position embeddings of {spec.name} "
                f"fix its input at {spec.input_size}x{spec.input_size}; got "
                f"{input_shape}. Resize images in the data pipeline, or use "
                "weights=None."
            )
        return {"image_shape": tuple(input_shape)}

    def _attach(self, layer, preset: str | None, hub, options: dict[str, Any]) -> None:
        if preset is not None:
            conv = self._preset_converter(preset)
            if conv is not None:
                layer.scale, layer.offset = conv

    @staticmethod
    def _preset_converter(preset: str):
        """Scale/offset of the preset's own image converter, when it ships one."""
        try:
            conv = import_keras_hub().layers.ImageConverter.from_preset(preset)
        except Exception:  # noqa: BLE001 - a preset folder without a converter
            return None
        if conv is None or getattr(conv, "scale", None) is None:
            return None
        return jsonable(conv.scale), jsonable(conv.offset if conv.offset is not None else 0.0)

    def _finish(self, hub, preset: str | None, options: dict[str, Any]):
        # A preset loads from its own config.json, which is this entry's architecture.
        keep_config(
            hub, self.config(options) if preset is None else self.spec.extra.get("config") or {}
        )
        return hub

    def _wrap(self, hub) -> keras.Model:
        """Nest the KerasHub backbone whole (KerasHub serialises its own classes)."""
        hub_in = keras.tree.flatten(hub.input)[0]  # DINOv2 names its one input in a dict
        inp = keras.Input(shape=hub_in.shape[1:], name="images")
        out = hub({hub_in.name: inp} if isinstance(hub.input, dict) else inp)
        if isinstance(out, dict):
            out = out["sequence_output"] if "sequence_output" in out else list(out.values())[-1]
        return keras.Model(inp, out, name="backbone")

    # -- features --------------------------------------------------------------------
    def pyramid(self, backbone: keras.Model) -> list[tuple[str, Any]]:
        """The KerasHub backbone's pyramid outputs, for a feature-map backbone."""
        hub = hub_backbone_of(backbone)
        levels = getattr(hub, "pyramid_outputs", None) or {}
        if isinstance(hub.output, dict):  # HGNetV2: one output per stage
            levels = {k: v for k, v in hub.output.items() if k != "stem"}
        if levels and len(backbone.output.shape) == 4:
            return list(levels.items())
        return []

    def feature_extractor(self, backbone: keras.Model, out_indices: Any = None) -> keras.Model:
        spec = self.spec
        levels = self.pyramid(backbone)
        if not levels:
            return super().feature_extractor(backbone, out_indices)
        what = f"{len(levels)} pyramid levels ({[k for k, _ in levels]})"
        chosen = [levels[i][1] for i in tap_indices(out_indices, len(levels), spec.name, what)]
        hub_in = keras.tree.flatten(hub_backbone_of(backbone).input)[0]
        pyramid = keras.Model(hub_in, chosen, name="pyramid")
        features = keras.Model(backbone.inputs, pyramid(backbone.inputs[0]), name="features")
        return detach_rest(backbone, features)
