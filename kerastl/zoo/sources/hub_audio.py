"""KerasHub audio encoders: ``"audio"`` (raw 16 kHz waveform) -> ``"preprocess"`` (Whisper
log-mel converter, or Moonshine's raw-sample front end) -> ``"backbone"`` (the
encoder half of the encoder-decoder) -> ``"pool"`` -> head.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kerastl.errors import ConfigError
from kerastl.zoo.sources.base import Capabilities, detach_rest
from kerastl.zoo.sources.keras_hub import KerasHubAdapter
from kerastl.zoo.sources.layers import HubAudioPreprocessing

#: Per front end (``spec.extra["audio"]``): the encoder's input layers, its last
#: layer, and how its input is described in the model's metadata.
ENCODERS: dict[str, dict[str, Any]] = {
    "whisper": {
        "inputs": "encoder_features",
        "output": "encoder_layer_norm",
        "preprocessing": "whisper log-mel",
    },
    "moonshine": {
        "inputs": ("encoder_input_values", "encoder_padding_mask"),
        "output": "encoder_final_layer_norm",
        "preprocessing": "raw samples",
    },
}


class HubAudioAdapter(KerasHubAdapter):
    """Adapter over a KerasHub speech encoder (Whisper or Moonshine)."""

    input_name = "audio"
    option_names = ("max_seconds", "backbone_config")

    def __init__(self, spec):
        super().__init__(spec)
        self.encoder = ENCODERS[spec.extra["audio"]]
        # Whisper's TFLite / ONNX files take log-mel features; Moonshine's the waveform.
        split = "preprocess" if spec.extra["audio"] == "whisper" else None
        self.capabilities = Capabilities(lora=False, export_split=split)

    def _resolve(self, input_shape: Any, options: dict[str, Any]) -> tuple:
        spec = self.spec
        max_seconds = options.get("max_seconds")
        if max_seconds is not None and (not isinstance(max_seconds, int) or max_seconds < 1):
            raise ConfigError(f"max_seconds: expected an integer >= 1, got {max_seconds!r}.")
        if input_shape is None:
            return (None,)
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
        if len(shape) != 1:
            raise ConfigError(
                f"input_shape: {spec.name} is an audio model taking mono waveforms of shape "
                f"(samples,) at {spec.extra['sample_rate']} Hz; got input_shape={input_shape!r}."
            )
        n = shape[0]
        if n is not None and (not isinstance(n, (int, np.integer)) or n < spec.min_input_size):
            raise ConfigError(
                f"input_shape: {spec.name} needs at least {spec.min_input_size} samples "
                f"(0.1 s at {spec.extra['sample_rate']} Hz); got input_shape={input_shape!r}."
            )
        return (None if n is None else int(n),)

    def input_spec(self, input_shape: tuple) -> dict[str, Any]:
        extra = self.spec.extra
        return {
            "name": "audio",
            "shape": list(input_shape),
            "dtype": "float32",
            "range": [-1.0, 1.0],
            "layout": f"mono waveform, {extra['sample_rate']} Hz",
            "preprocessing": self.encoder["preprocessing"],
            "sample_rate": extra["sample_rate"],
        }

    def _preprocessing_layer(self, input_shape: tuple, options: dict[str, Any]) -> keras.Layer:
        extra = self.spec.extra
        cfg = self.config(options)
        if extra["audio"] == "whisper":
            # max_encoder_sequence_length frames at 100 frames per second
            default = max(1, int(cfg.get("max_encoder_sequence_length", 3000)) // 100)
        else:
            default = extra["max_seconds"]
        return HubAudioPreprocessing(
            extra["audio"],
            extra["sample_rate"],
            options.get("max_seconds") or default,
            cfg.get("num_mels", 80),
            name="preprocess",
        )

    def _wrap(self, hub) -> keras.Model:
        """Cut the encoder out of the encoder-decoder graph (only that half is kept)."""
        names = self.encoder["inputs"]
        if isinstance(names, str):
            inputs = hub.get_layer(names).output
        else:
            inputs = {k: hub.get_layer(k).output for k in names}
        out = hub.get_layer(self.encoder["output"]).output
        return detach_rest(hub, keras.Model(inputs, out, name="backbone"))
