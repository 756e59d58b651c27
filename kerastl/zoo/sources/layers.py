"""The serialisable Keras layers of kerastl's KerasHub models, and their one table.

Saved ``.keras`` files name these classes by their registered names
(``kerastl>HubTextPreprocessing``...), so a file loads once this module is
imported, whichever module path its config records (files saved before the
``zoo/sources`` layout name ``kerastl.zoo._keras_hub_adapter``).
:data:`CUSTOM_OBJECTS` lists them all.

Example:
    >>> sorted(CUSTOM_OBJECTS)[:2]
    ['kerastl>EfficientNetBackbone', 'kerastl>HubAudioPreprocessing']
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kerastl.errors import ConfigError, DataError, missing_dependency


def import_keras_hub():
    """The ``keras_hub`` module, or the error that says how to install it."""
    try:
        import keras_hub
    except ImportError:  # pragma: no cover - keras-hub is a dependency
        raise missing_dependency("keras_hub", "keras-hub", "KerasHub backbones") from None
    return keras_hub


@keras.saving.register_keras_serializable(package="kerastl")
class HubImagePreprocessing(keras.layers.Layer):
    """``x * scale + offset`` on raw 0-255 RGB, the KerasHub image converter's rescaling.

    Resizing is left to the data pipeline: the model takes the input size it
    was built with.

    Args:
        scale: Scalar or per-channel multiplier.
        offset: Scalar or per-channel offset.
    """

    def __init__(self, scale: Any = 1.0 / 255.0, offset: Any = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.offset = offset

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        scale = keras.ops.convert_to_tensor(np.asarray(self.scale, "float32"), self.compute_dtype)
        offset = keras.ops.convert_to_tensor(np.asarray(self.offset, "float32"), self.compute_dtype)
        return images * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "scale": jsonable(self.scale),
            "offset": jsonable(self.offset),
        }


@keras.saving.register_keras_serializable(package="kerastl")
class HubTextPreprocessing(keras.layers.Layer):
    """Raw strings -> token ids, padding mask (and segment ids) of fixed length.

    Wraps a KerasHub text-classifier preprocessor (tokenizer + packer). Its
    output spec is static, so the layer can sit in a functional graph before
    its tokenizer is known, and reload from a ``.keras`` file before the
    tokenizer's vocabulary assets are restored.

    Args:
        sequence_length: Tokens per example after padding/truncation.
        keys: Which preprocessor outputs the backbone takes.
        preprocessor: A ``keras_hub`` text-classifier preprocessor (or its config).
    """

    def __init__(self, sequence_length: int, keys: list[str], preprocessor: Any = None, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.keys = list(keys)
        if isinstance(preprocessor, dict):
            import_keras_hub()
            preprocessor = keras.saving.deserialize_keras_object(preprocessor)
        self.preprocessor = preprocessor
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        # string ops: XLA cannot compile them, so Keras' jit_compile="auto" (True on a GPU)
        # must not pick XLA for a model holding this layer
        self.supports_jit = False

    def build(self, input_shape):
        self.built = True  # no weights; the tokenizer comes built

    def call(self, text):
        import tensorflow as tf

        if not isinstance(text, (tf.Tensor, tf.RaggedTensor)) or text.dtype != tf.string:
            dtype = getattr(text, "dtype", type(text).__name__)
            raise DataError(
                f"text: this text model takes raw strings (a batch of str, dtype string), "
                f"got dtype {dtype} with shape {getattr(text, 'shape', '?')}. Images or "
                "token ids do not go in here; pass strings, e.g. model.predict(['a text'])."
            )
        if self.preprocessor is None:
            raise ConfigError(
                "preprocess: no tokenizer attached to this text model; build it with "
                "kerastl.build(...) so the tokenizer of its preset is loaded."
            )
        if text.shape.rank == 2 and text.shape[-1] == 1:
            text = tf.squeeze(text, -1)
        # an empty string tokenizes to the special tokens alone, as in the exported files;
        # a batch of no strings at all is refused (KerasHub's packer drops its batch axis)
        check = tf.debugging.assert_greater(
            tf.size(text),
            0,
            message="text: the batch is empty (no strings); pass at least one string, e.g. "
            "model.predict(['a text']).",
        )
        with tf.control_dependencies([check]):
            text = tf.identity(text)
        out = self.preprocessor(text)
        return {k: out[k] for k in self.keys}

    def compute_output_spec(self, text):
        batch = text.shape[0] if text.shape else None
        return {
            k: keras.KerasTensor(
                (batch, self.sequence_length), dtype="bool" if k == "padding_mask" else "int32"
            )
            for k in self.keys
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            sequence_length=self.sequence_length,
            keys=self.keys,
            preprocessor=keras.saving.serialize_keras_object(self.preprocessor),
        )
        return config


@keras.saving.register_keras_serializable(package="kerastl")
class HubAudioPreprocessing(keras.layers.Layer):
    """Raw 16 kHz mono waveforms -> the audio encoder's input features.

    ``kind="whisper"``: KerasHub's ``WhisperAudioConverter`` (pad or trim to
    ``max_seconds``, log-mel spectrogram, ``num_mels`` bins, 100 frames/s).
    ``kind="moonshine"``: Moonshine takes raw samples; this adds the channel
    axis and the all-true padding mask.

    Args:
        kind: ``"whisper"`` or ``"moonshine"``.
        sample_rate: Expected sample rate (16000).
        max_seconds: Whisper's fixed window (30 s for the released presets).
        num_mels: Whisper mel bins (80).
    """

    def __init__(
        self,
        kind: str,
        sample_rate: int = 16000,
        max_seconds: int = 30,
        num_mels: int = 80,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kind = kind
        self.sample_rate = int(sample_rate)
        self.max_seconds = int(max_seconds)
        self.num_mels = int(num_mels)
        self.converter = None
        if kind == "whisper":
            self.converter = import_keras_hub().layers.WhisperAudioConverter(
                num_mels=num_mels,
                sampling_rate=sample_rate,
                max_audio_length=max_seconds,
                name="whisper_audio_converter",
            )

    def call(self, audio):
        if not keras.backend.standardize_dtype(audio.dtype).startswith("float"):
            raise DataError(
                f"audio: this audio model takes float waveforms (batch, samples) at "
                f"{self.sample_rate} Hz, got dtype {audio.dtype}."
            )
        if len(audio.shape) != 2:
            raise DataError(
                f"audio: expected mono waveforms of shape (batch, samples), got shape "
                f"{tuple(audio.shape)}; average stereo channels first."
            )
        if self.kind == "whisper":
            return self.converter(audio)
        values = keras.ops.expand_dims(audio, -1)
        mask = keras.ops.ones_like(audio, dtype="bool")
        return {"encoder_input_values": values, "encoder_padding_mask": mask}

    def compute_output_spec(self, audio):
        batch = audio.shape[0]
        if self.kind == "whisper":
            frames = self.max_seconds * self.sample_rate // 160
            return keras.KerasTensor((batch, frames, self.num_mels), dtype="float32")
        return {
            "encoder_input_values": keras.KerasTensor((batch, audio.shape[1], 1), "float32"),
            "encoder_padding_mask": keras.KerasTensor((batch, audio.shape[1]), "bool"),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "kind": self.kind,
            "sample_rate": self.sample_rate,
            "max_seconds": self.max_seconds,
            "num_mels": self.num_mels,
        }


@keras.saving.register_keras_serializable(package="kerastl")
class SequencePooling(keras.layers.Layer):
    """Pool a ``(batch, steps, dim)`` sequence to ``(batch, dim)``.

    Modes: ``"avg"`` (mean over unmasked steps, sentence-transformers style),
    ``"max"`` (max over unmasked steps), ``"cls"`` (first step: the class token).
    """

    def __init__(self, mode: str = "avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self.supports_masking = True

    def call(self, sequence, padding_mask=None):
        x = keras.ops.cast(sequence, "float32")
        if self.mode == "cls":
            return x[:, 0, :]
        if padding_mask is None:
            return keras.ops.mean(x, 1) if self.mode == "avg" else keras.ops.max(x, 1)
        m = keras.ops.expand_dims(keras.ops.cast(padding_mask, "float32"), -1)
        if self.mode == "avg":
            return keras.ops.sum(x * m, 1) / keras.ops.maximum(keras.ops.sum(m, 1), 1.0)
        return keras.ops.max(x * m - 1e9 * (1.0 - m), 1)

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


#: ``EfficientNetBackbone`` arguments its ``get_config`` (keras-hub 0.32) leaves out.
_EFFICIENTNET_OMITTED = ("num_features", "stackwise_nores_option")


@keras.saving.register_keras_serializable(package="kerastl")
class EfficientNetBackbone(import_keras_hub().models.EfficientNetBackbone):
    """KerasHub's ``EfficientNetBackbone`` whose config keeps every argument.

    ``EfficientNetBackbone.get_config`` (keras-hub 0.32) omits ``num_features`` and
    ``stackwise_nores_option``, so a saved EfficientNetV2-rw (or width-scaled) model
    reloads with a 1280-wide top conv, and a saved EfficientNet-EdgeTPU (``es``/``em``/
    ``el``) does not reload at all (its first block gets a residual it never had). Built
    instances are switched to this subclass (same layers and weights); its config keeps
    those arguments.
    """

    def get_config(self):
        config = super().get_config()
        config.update(getattr(self, "_kerastl_kept", {}))
        return config

    @classmethod
    def from_config(cls, config):
        model = super().from_config(config)
        model._kerastl_kept = {k: config[k] for k in _EFFICIENTNET_OMITTED if k in config}
        return model


def keep_config(hub, config: dict[str, Any]) -> None:
    """Switch an EfficientNet to :class:`EfficientNetBackbone` (see there)."""
    if type(hub).__name__ != "EfficientNetBackbone":
        return
    kept = {k: config[k] for k in _EFFICIENTNET_OMITTED if k in config}
    if kept:
        hub.__class__ = EfficientNetBackbone
        hub._kerastl_kept = kept


def jsonable(v: Any) -> Any:
    """A converter's scale or offset as JSON-ready floats."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    return float(v)


#: Every kerastl layer a KerasHub model may hold, by its registered name.
CUSTOM_OBJECTS: dict[str, type] = {
    keras.saving.get_registered_name(cls): cls
    for cls in (
        HubImagePreprocessing,
        HubTextPreprocessing,
        HubAudioPreprocessing,
        SequencePooling,
        EfficientNetBackbone,
    )
}
