"""Adapter for KerasHub backbones: image, text and audio through one contract.

The model graph is the same as for keras.applications entries:

* image: ``"image"`` (raw 0-255 RGB) -> ``"preprocess"`` (the preset's image
  converter: scale and offset) -> ``"backbone"`` -> ``"pool"`` -> head;
* text: ``"text"`` (raw strings) -> ``"preprocess"`` (the KerasHub tokenizer and
  text-classifier preprocessor: padding and truncation to ``sequence_length``)
  -> ``"backbone"`` -> ``"pool"`` (masked mean, first token or BERT pooler) -> head;
* audio: ``"audio"`` (raw 16 kHz waveform) -> ``"preprocess"`` (Whisper log-mel
  converter, or Moonshine's raw-sample front end) -> ``"backbone"`` (encoder only)
  -> ``"pool"`` -> head.

Weights: ``None`` builds the architecture stored in the registry with random
weights (offline); a KerasHub preset name downloads it through KerasHub; a
local folder in KerasHub or Hugging Face format loads offline.

The contract builds preprocessing before the backbone, and only the backbone
sees ``weights``; preprocessing layers are therefore created first with their
static output spec and receive the preset's tokenizer or converter once the
backbone's weights are known.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl._errors import (
    ConfigError,
    DataError,
    WeightsError,
    choice_error,
    missing_dependency,
)
from kerastl.zoo._keras_hub_family import group_names_for, side_multiple
from kerastl.zoo.adapter import Adapter

_IMAGE_POOLINGS = ("avg", "max")
_TOKEN_POOLINGS = ("avg", "max", "cls")
_TEXT_POOLINGS = ("avg", "max", "cls", "pooler")
_OPTIONS = {
    "image": ("backbone_config",),
    "text": ("sequence_length", "tokenizer", "backbone_config"),
    "audio": ("max_seconds", "backbone_config"),
}
#: Layers that receive LoRA adapters (KerasHub's own default targets).
LORA_TARGETS = ("query_dense", "value_dense", "query", "value")


def _keras_hub():
    try:
        import keras_hub
    except ImportError:  # pragma: no cover - keras-hub is a dependency
        raise missing_dependency("keras_hub", "keras-hub", "KerasHub backbones") from None
    return keras_hub


# -- layers ----------------------------------------------------------------------------


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
            "scale": _jsonable(self.scale),
            "offset": _jsonable(self.offset),
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
            _keras_hub()
            preprocessor = keras.saving.deserialize_keras_object(preprocessor)
        self.preprocessor = preprocessor
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

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
        longest = tf.reduce_max(tf.concat([tf.strings.length(tf.strings.strip(text)), [0]], 0))
        check = tf.debugging.assert_greater(
            longest,
            0,
            message="text: the batch is empty or every string in it is empty; "
            "a text model needs at least one non-empty string per batch (check the text "
            "column of your data).",
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
            self.converter = _keras_hub().layers.WhisperAudioConverter(
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
class EfficientNetBackbone(_keras_hub().models.EfficientNetBackbone):
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


def _keep_config(hub, config: dict[str, Any]) -> None:
    """Switch an EfficientNet to :class:`EfficientNetBackbone` (see there)."""
    if type(hub).__name__ != "EfficientNetBackbone":
        return
    kept = {k: config[k] for k in _EFFICIENTNET_OMITTED if k in config}
    if kept:
        hub.__class__ = EfficientNetBackbone
        hub._kerastl_kept = kept


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    return float(v)


# -- weights ---------------------------------------------------------------------------


def _is_path(weights: Any) -> bool:
    if isinstance(weights, os.PathLike):
        return True
    s = str(weights)
    return os.sep in s or s.startswith((".", "~")) or os.path.exists(s)


def _is_archive(path: Path) -> bool:
    import tarfile
    import zipfile

    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def extract_preset(archive: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """Unpack a preset archive (``.zip`` / ``.tar[.gz]``) once, safely; return its folder.

    Members that would land outside the target (``..``, absolute paths, links) are
    refused before anything is written (:func:`kerastl._safety.safe_extract`). The
    folder is keyed by the archive's SHA-256 and appears by an atomic rename, so a
    killed extraction never leaves a half preset. An archive holding one top-level
    folder yields that folder.

    Example:
        >>> extract_preset(Path("minilm.tar.gz"))  # doctest: +SKIP
        PosixPath('/root/.cache/kerastl/presets/3f2a.../model')
    """
    import hashlib
    import shutil
    import tempfile

    from kerastl._safety import safe_extract

    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    root = Path(cache_dir or os.path.expanduser("~/.cache/kerastl/presets"))
    target = root / digest.hexdigest()[:24]
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
        try:
            safe_extract(archive, staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


#: Weight files of a Hugging Face / timm folder that KerasHub cannot read itself.
_TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def torch_folder_as_safetensors(path: Path) -> Path:
    """A Hugging Face / timm folder holding PyTorch weights, as one KerasHub can load.

    KerasHub's converters (timm, transformers) read ``model.safetensors``. A folder
    with ``config.json`` and only PyTorch weights (``pytorch_model.bin``, shards, a
    ``.pth``) is converted once, without torch (:mod:`kerastl.zoo.checkpoint`), into
    a cached copy: the folder's other files plus ``model.safetensors``. Any other
    path is returned as it is.

    Example:
        >>> torch_folder_as_safetensors(Path("/no/such/folder"))
        PosixPath('/no/such/folder')
    """
    if not path.is_dir() or not (path / "config.json").is_file():
        return path
    names = {p.name for p in path.iterdir()}
    if any(n.endswith(".safetensors") for n in names) or not names & set(_TORCH_WEIGHTS):
        return path
    import hashlib
    import shutil

    from safetensors.numpy import save_file

    from kerastl.zoo._keras_apps_adapter import keras_cache_dir
    from kerastl.zoo.checkpoint import read_state_dict

    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in path.iterdir())
    key = hashlib.sha256(f"{path.resolve()}|{stamp}".encode()).hexdigest()[:16]
    target = keras_cache_dir() / "kerastl" / "converted" / f"{path.name}-{key}"
    if (target / "model.safetensors").is_file():
        return target
    staging = target.with_name(target.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for p in path.iterdir():
        if p.is_file() and p.name not in _TORCH_WEIGHTS and not p.name.endswith(".bin"):
            shutil.copy2(p, staging / p.name)
    state = read_state_dict(path)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, staging / "model.safetensors")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def check_preset_dir(path: Path, name: str) -> str:
    """Check ``path`` is a KerasHub or Hugging Face preset folder; return its format.

    Raises:
        WeightsError: missing folder, or a folder that is not a preset.
    """
    if not path.exists():
        raise WeightsError(
            f"weights: no folder at {str(path)!r} (for {name}). Pass a KerasHub preset "
            "folder (config.json with a KerasHub class, model.weights.h5) or a Hugging Face "
            "checkpoint folder (config.json, model.safetensors)."
        )
    if not path.is_dir():
        raise WeightsError(
            f"weights: {str(path)!r} is a file; {name} loads a preset folder in KerasHub "
            "format (config.json, model.weights.h5, tokenizer.json, assets/) or Hugging "
            "Face format (config.json, model.safetensors, vocab.txt/tokenizer.json)."
        )
    files = sorted(p.name for p in path.iterdir())
    if "config.json" in files and any(
        f.endswith((".weights.h5", ".safetensors")) or f == "model.safetensors.index.json"
        for f in files
    ):
        return "keras" if "metadata.json" in files or "model.weights.h5" in files else "hf"
    raise WeightsError(
        f"weights: {str(path)!r} is not a KerasHub or Hugging Face preset folder (it holds "
        f"{files[:12] or 'nothing'}). Expected config.json plus model.weights.h5 (KerasHub, "
        f"written by backbone.save_to_preset) or model.safetensors (Hugging Face)."
    )


def _offline_message(spec, preset: str, exc: Exception) -> WeightsError:
    cache = os.environ.get("KAGGLEHUB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kagglehub"
    )
    return WeightsError(
        f"Could not get the KerasHub preset {preset!r} for {spec.name} ({type(exc).__name__}: "
        f"{str(exc)[:300]}). KerasHub downloads presets from Kaggle into {cache!r} "
        "(KAGGLEHUB_CACHE). Offline: on a connected machine run "
        f"`keras_hub.models.Backbone.from_preset({preset!r}).save_to_preset('DIR')` (and the "
        "tokenizer's save_to_preset('DIR') for text), copy DIR here and pass weights='DIR'; a "
        "Hugging Face checkpoint folder (config.json + model.safetensors) works too. "
        "weights=None builds the architecture with random weights."
    )


# -- the adapter -----------------------------------------------------------------------


class KerasHubAdapter(Adapter):
    """Adapter over ``keras_hub.models.<Family>Backbone`` (image, text or audio).

    Example:
        >>> import kerastl
        >>> m = kerastl.build("bert_tiny_en_uncased", num_classes=2, weights="path/to/preset",
        ...                   sequence_length=64)  # doctest: +SKIP
    """

    def __init__(self, spec):
        super().__init__(spec)
        self.input_name = {"image": "image", "text": "text", "audio": "audio"}[spec.modality]
        self.options: dict[str, Any] = {}
        self._pre_layer = None
        self._pyramid: list[Any] = []
        self._hub = None
        self._has_pooler = False

    # -- input -----------------------------------------------------------------------
    def resolve_input_shape(self, input_shape: Any, **options: Any) -> tuple:
        spec = self.spec
        valid = _OPTIONS[spec.modality]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"{spec.name} is a {spec.modality} backbone and takes no option "
                f"{unknown}; valid options: {', '.join(valid)}."
            )
        bc = options.get("backbone_config")
        if bc is not None and not isinstance(bc, dict):
            raise ConfigError(
                f"backbone_config: expected a dict of {spec.extra['backbone_class']} "
                f"constructor arguments, got {bc!r}."
            )
        self.options = dict(options)
        if spec.modality == "text":
            return self._resolve_text(input_shape, options.get("sequence_length"))
        if spec.modality == "audio":
            return self._resolve_audio(input_shape, options.get("max_seconds"))
        return self._resolve_image(input_shape)

    def _max_len(self) -> int:
        cfg = self._config()
        return int(cfg.get("max_sequence_length", self.spec.extra.get("max_sequence_length", 512)))

    def _resolve_text(self, input_shape, sequence_length) -> tuple:
        spec = self.spec
        if input_shape is not None and sequence_length is not None:
            raise ConfigError(
                f"{spec.name}: give the text length once, as sequence_length="
                f"{sequence_length!r} (input_shape={input_shape!r} was also given)."
            )
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
            if len(shape) != 1:
                raise ConfigError(
                    f"input_shape: {spec.name} is a text model (raw strings in); it takes "
                    f"sequence_length=N (tokens), not an image shape: got "
                    f"input_shape={input_shape!r}."
                )
            sequence_length = shape[0]
        if sequence_length is None:
            sequence_length = min(spec.input_size, self._max_len())
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)):
            raise ConfigError(
                f"sequence_length: expected a whole number of tokens, got {sequence_length!r}."
            )
        max_len = self._max_len()
        if not spec.min_input_size <= sequence_length <= max_len:
            raise ConfigError(
                f"sequence_length: {spec.name} takes {spec.min_input_size} to {max_len} tokens "
                f"(its position embeddings stop at max_sequence_length={max_len}); got "
                f"sequence_length={sequence_length}."
            )
        return (int(sequence_length),)

    def _resolve_audio(self, input_shape, max_seconds) -> tuple:
        spec = self.spec
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

    def _resolve_image(self, input_shape) -> tuple:
        spec = self.spec
        if input_shape is None:
            return (spec.input_size, spec.input_size, 3)
        if isinstance(input_shape, int):
            input_shape = (input_shape, input_shape, 3)
        shape = tuple(input_shape)
        if len(shape) == 2:
            shape = (*shape, 3)
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
        cfg = self._config()
        multiple = side_multiple(cfg)
        if multiple > 1 and (shape[0] % multiple or shape[1] % multiple):
            why = f"cuts images into {cfg.get('patch_size')}x{cfg.get('patch_size')} patches"
            if multiple != cfg.get("patch_size"):
                why += (
                    f" and attends in {cfg['window_size']}x{cfg['window_size']} windows at "
                    f"each of {len(cfg['depths'])} stages"
                )
            raise ConfigError(
                f"input_shape: {spec.name} {why}; the sides must be multiples of {multiple}, "
                f"got input_shape={input_shape!r}."
            )
        return tuple(int(s) for s in shape)

    def input_spec(self, input_shape: tuple) -> dict[str, Any]:
        spec = self.spec
        if spec.modality == "text":
            return {
                "name": "text",
                "shape": [],
                "dtype": "string",
                "range": None,
                "layout": "one UTF-8 string per example",
                "preprocessing": "keras_hub tokenizer: " + str(spec.extra.get("tokenizer")),
                "sequence_length": int(input_shape[0]),
                "max_sequence_length": self._max_len(),
            }
        if spec.modality == "audio":
            return {
                "name": "audio",
                "shape": list(input_shape),
                "dtype": "float32",
                "range": [-1.0, 1.0],
                "layout": f"mono waveform, {spec.extra['sample_rate']} Hz",
                "preprocessing": "whisper log-mel"
                if spec.extra["audio"] == "whisper"
                else "raw samples",
                "sample_rate": spec.extra["sample_rate"],
            }
        return {
            "name": "image",
            "shape": list(input_shape),
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NHWC, RGB",
            "preprocessing": "keras_hub image converter (scale, offset)",
        }

    def make_inputs(self, input_shape: tuple) -> keras.KerasTensor:
        if self.spec.modality == "text":
            return keras.Input(shape=(), dtype="string", name="text")
        return keras.Input(shape=input_shape, dtype="float32", name=self.input_name)

    def preprocess(self, inputs, input_shape: tuple):
        spec = self.spec
        if spec.modality == "text":
            keys = ["token_ids", "padding_mask"]
            if "segment" in self._segment_hint():
                keys.append("segment_ids")
            self._pre_layer = HubTextPreprocessing(input_shape[0], keys, name="preprocess")
        elif spec.modality == "audio":
            cfg = self._config()
            seconds = self.options.get("max_seconds") or self._audio_seconds(cfg)
            self._pre_layer = HubAudioPreprocessing(
                spec.extra["audio"],
                spec.extra["sample_rate"],
                seconds,
                cfg.get("num_mels", 80),
                name="preprocess",
            )
        else:
            conv = spec.extra.get("converter") or {}
            self._pre_layer = HubImagePreprocessing(
                conv.get("scale", 1 / 255.0), conv.get("offset", 0.0), name="preprocess"
            )
        return self._pre_layer(inputs)

    def _segment_hint(self) -> str:
        return (
            "segment"
            if self.spec.extra["backbone_class"]
            in ("BertBackbone", "AlbertBackbone", "ElectraBackbone")
            else ""
        )

    def _audio_seconds(self, cfg) -> int:
        if self.spec.extra["audio"] == "whisper":
            # max_encoder_sequence_length frames at 100 frames per second
            return max(1, int(cfg.get("max_encoder_sequence_length", 3000)) // 100)
        return self.spec.extra["max_seconds"]

    # -- backbone --------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        cfg = copy.deepcopy(self.spec.extra["config"])
        cfg.update(copy.deepcopy(self.options.get("backbone_config") or {}))
        for k, v in list(cfg.items()):
            if isinstance(v, list) and k == "image_shape" or k == "position_embedding_shape":
                cfg[k] = tuple(v)
        return cfg

    def _backbone_cls(self):
        return getattr(_keras_hub().models, self.spec.extra["backbone_class"])

    def backbone(self, input_shape: tuple, weights: Any = None) -> keras.Model:
        spec = self.spec
        cls = self._backbone_cls()
        preset = None
        if weights is None:
            cfg = self._config()
            if spec.modality == "image" and "image_shape" in _init_args(cls):
                cfg["image_shape"] = tuple(input_shape)
            if spec.modality == "text" and input_shape[0] > int(
                cfg.get("max_sequence_length", 512)
            ):
                raise ConfigError(
                    f"sequence_length: {input_shape[0]} is above the backbone's "
                    f"max_sequence_length={cfg.get('max_sequence_length')}."
                )
            try:
                hub = cls(**cfg)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"backbone_config: {spec.extra['backbone_class']} rejected the "
                    f"configuration {cfg!r}: {exc}"
                ) from exc
        else:
            preset = self._resolve_preset(weights)
            kwargs = {}
            if spec.modality == "image" and "image_shape" in _init_args(cls):
                if spec.extra.get("fixed_size") and spec.family != "dinov2":
                    if tuple(input_shape[:2]) != (spec.input_size, spec.input_size):
                        raise ConfigError(
                            f"input_shape: the pretrained position embeddings of {spec.name} "
                            f"fix its input at {spec.input_size}x{spec.input_size}; got "
                            f"{input_shape}. Resize images in the data pipeline, or use "
                            "weights=None."
                        )
                kwargs["image_shape"] = tuple(input_shape)
            hub = self._from_preset(cls, preset, **kwargs)
            if spec.modality == "text":
                max_len = int(hub.get_config().get("max_sequence_length", 512))
                if input_shape[0] > max_len:
                    raise ConfigError(
                        f"sequence_length: {input_shape[0]} is above the maximum of this "
                        f"preset ({max_len} tokens)."
                    )
        self._attach_preprocessing(preset, hub)
        # A preset loads from its own config.json, which is this entry's architecture.
        _keep_config(hub, cfg if preset is None else spec.extra.get("config") or {})
        return self._wrap(hub)

    def _resolve_preset(self, weights: Any) -> str:
        spec = self.spec
        if isinstance(weights, (str, os.PathLike)) and _is_path(weights):
            path = Path(os.path.expanduser(os.fspath(weights)))
            if path.is_file() and _is_archive(path):
                path = extract_preset(path)
            path = torch_folder_as_safetensors(path)
            check_preset_dir(path, spec.name)
            return str(path)
        if isinstance(weights, str):
            known = sorted(getattr(self._backbone_cls(), "presets", {}) or {})
            if weights in spec.pretrained or weights in known:
                return weights
            raise choice_error(
                "weights",
                weights,
                [*spec.pretrained, *known],
                what=f"KerasHub preset for {spec.name}",
                cls=WeightsError,
            )
        raise ConfigError(
            f"weights: got {weights!r}. Valid: None (random init), the KerasHub preset "
            f"{spec.pretrained[0]!r}, or the path of a local preset folder (KerasHub or "
            "Hugging Face format)."
        )

    def _from_preset(self, cls, preset: str, **kwargs):
        try:
            return cls.from_preset(preset, **kwargs)
        except (WeightsError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - kagglehub/HF/h5 raise many kinds
            if os.path.isdir(preset):
                raise WeightsError(
                    f"weights: could not load the preset folder {preset!r} as a "
                    f"{self.spec.extra['backbone_class']} ({type(exc).__name__}: "
                    f"{str(exc)[:400]})."
                ) from exc
            raise _offline_message(self.spec, preset, exc) from exc

    def _attach_preprocessing(self, preset: str | None, hub) -> None:
        layer = self._pre_layer
        if layer is None:
            return
        spec = self.spec
        if spec.modality == "text":
            pre = self._text_preprocessor(preset, layer.sequence_length, hub)
            locked = layer._tracker.locked  # built by its symbolic call: track the new sublayer
            layer._tracker.unlock()
            layer.preprocessor = pre
            if locked:
                layer._tracker.lock()
        elif spec.modality == "image" and preset is not None:
            conv = self._preset_converter(preset)
            if conv is not None:
                layer.scale, layer.offset = conv

    def _preset_converter(self, preset: str):
        """Scale/offset of the preset's own image converter, when it ships one."""
        hub = _keras_hub()
        try:
            conv = hub.layers.ImageConverter.from_preset(preset)
        except Exception:  # noqa: BLE001 - a preset folder without a converter
            return None
        if conv is None or getattr(conv, "scale", None) is None:
            return None
        return _jsonable(conv.scale), _jsonable(conv.offset if conv.offset is not None else 0.0)

    def _text_preprocessor(self, preset: str | None, sequence_length: int, hub_backbone):
        spec = self.spec
        hub = _keras_hub()
        tok_cls = getattr(hub.models, spec.extra["tokenizer"])
        pre_cls = getattr(hub.models, spec.extra["preprocessor"])
        source = self.options.get("tokenizer")
        if source is None:
            source = preset
        if source is None:
            source = spec.extra["preset"]
        if isinstance(source, hub.tokenizers.Tokenizer):
            tokenizer = source
        elif isinstance(source, dict):
            try:
                tokenizer = tok_cls(**source)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(
                    f"tokenizer: {spec.extra['tokenizer']} rejected {sorted(source)}: {exc}"
                ) from exc
        elif isinstance(source, (str, os.PathLike)):
            source = os.fspath(source)
            if _is_path(source):
                check_preset_dir(Path(source), spec.name)
            try:
                tokenizer = tok_cls.from_preset(source)
            except Exception as exc:  # noqa: BLE001
                if os.path.isdir(source):
                    raise WeightsError(
                        f"tokenizer: could not load a {spec.extra['tokenizer']} from "
                        f"{source!r}: {exc}"
                    ) from exc
                err = _offline_message(spec, source, exc)
                raise WeightsError(
                    str(err) + " With weights=None, pass tokenizer='local/preset/folder' (or a "
                    "keras_hub tokenizer) to get the vocabulary without downloading."
                ) from exc
        else:
            raise ConfigError(
                f"tokenizer: expected a preset name, a folder, a keras_hub Tokenizer or a "
                f"dict of {spec.extra['tokenizer']} arguments, got {source!r}."
            )
        vocab = tokenizer.vocabulary_size()
        emb = int(
            hub_backbone.get_config().get(
                "vocabulary_size", hub_backbone.get_config().get("vocab_size", vocab)
            )
        )
        if vocab > emb:
            raise ConfigError(
                f"tokenizer: its vocabulary has {vocab} tokens but the backbone embeds only "
                f"{emb}; use the tokenizer of the same preset, or set backbone_config="
                f"{{'vocabulary_size': {vocab}}} for random init."
            )
        return pre_cls(
            tokenizer=tokenizer, sequence_length=sequence_length, name=f"{spec.family}_preprocessor"
        )

    def _wrap(self, hub) -> keras.Model:
        """Wrap the KerasHub backbone as the functional ``"backbone"`` kerastl expects.

        Image and text backbones are nested whole (KerasHub serialises and
        reloads its own classes); audio encoders are cut out of the
        encoder-decoder graph (only the encoder half is kept).
        """
        spec = self.spec
        self._pyramid = []
        self._hub = hub
        if spec.modality == "text":
            inputs = {
                t.name: keras.Input(shape=(None,), dtype=t.dtype, name=t.name)
                for t in keras.tree.flatten(hub.input)
            }
            out = hub(inputs)
            # The mask goes out too, for masked pooling (an input cannot be an output).
            mask = keras.layers.Identity(name="padding_mask_out")(inputs["padding_mask"])
            outputs = {
                "sequence_output": out["sequence_output"] if isinstance(out, dict) else out,
                "padding_mask": mask,
            }
            self._has_pooler = isinstance(out, dict) and "pooled_output" in out
            if self._has_pooler:
                outputs["pooled_output"] = out["pooled_output"]
            return keras.Model(inputs, outputs, name="backbone")
        if spec.modality == "audio":
            if spec.extra["audio"] == "whisper":
                inp = hub.get_layer("encoder_features").output
                return keras.Model(inp, hub.get_layer("encoder_layer_norm").output, name="backbone")
            inputs = {
                k: hub.get_layer(k).output for k in ("encoder_input_values", "encoder_padding_mask")
            }
            return keras.Model(
                inputs, hub.get_layer("encoder_final_layer_norm").output, name="backbone"
            )
        hub_in = keras.tree.flatten(hub.input)[0]  # DINOv2 names its one input in a dict
        inp = keras.Input(shape=hub_in.shape[1:], name="images")
        out = hub({hub_in.name: inp} if isinstance(hub.input, dict) else inp)
        hub_out = hub.output
        pyramid = getattr(hub, "pyramid_outputs", None) or {}
        if isinstance(hub_out, dict):  # HGNetV2: one output per stage
            pyramid = {k: v for k, v in hub_out.items() if k != "stem"}
        if isinstance(out, dict):
            out = out["sequence_output"] if "sequence_output" in out else list(out.values())[-1]
        if pyramid and len(out.shape) == 4:
            self._pyramid = list(pyramid.items())
        return keras.Model(inp, out, name="backbone")

    def pooled(self, features, pooling: str):
        spec = self.spec
        if spec.modality == "text":
            if pooling not in _TEXT_POOLINGS:
                raise choice_error("pooling", pooling, _TEXT_POOLINGS)
            if pooling == "pooler":
                if not self._has_pooler:
                    raise ConfigError(
                        f"pooling: {spec.name} has no pooler layer; use 'avg' (masked mean), "
                        "'max' or 'cls' (first token)."
                    )
                return keras.layers.Identity(name="pool")(features["pooled_output"])
            return SequencePooling(pooling, name="pool")(
                features["sequence_output"], features["padding_mask"]
            )
        if len(features.shape) == 3:
            if pooling not in _TOKEN_POOLINGS:
                raise choice_error("pooling", pooling, _TOKEN_POOLINGS)
            return SequencePooling(pooling, name="pool")(features)
        if pooling not in _IMAGE_POOLINGS:
            raise choice_error("pooling", pooling, _IMAGE_POOLINGS)
        layer = (
            keras.layers.GlobalAveragePooling2D(name="pool")
            if pooling == "avg"
            else keras.layers.GlobalMaxPooling2D(name="pool")
        )
        return layer(features)

    # -- groups, features, LoRA --------------------------------------------------------
    def layer_groups(self, backbone: keras.Model) -> OrderedDict[str, list[keras.Layer]]:
        """Transformer / stage groups of the backbone, from the family's group rule.

        The nested KerasHub model and the layers named in the rule's ``expand``
        are replaced by their sublayers; weightless input layers are left out.
        """
        rule = self.spec.extra["group_rule"]
        expand = set(rule.get("expand") or ())
        hub = _keras_hub()

        def flat(layer):
            if isinstance(layer, hub.models.Backbone) or layer.name in expand:
                for sub in layer._flatten_layers(include_self=False, recursive=False):
                    yield from flat(sub)
            elif not isinstance(layer, keras.layers.InputLayer):
                yield layer

        layers = [sub for layer in backbone.layers for sub in flat(layer)]
        if self.spec.modality == "text":  # the wrapper's own mask pass-through
            layers = [lyr for lyr in layers if lyr.name != "padding_mask_out"]
        groups: OrderedDict[str, list[keras.Layer]] = OrderedDict()
        for layer, g in zip(layers, group_names_for([lyr.name for lyr in layers], rule)):
            groups.setdefault(g, []).append(layer)
        return groups

    def feature_extractor(self, backbone: keras.Model, out_indices: Any = None) -> keras.Model:
        spec = self.spec
        if not self._pyramid:
            raise ConfigError(
                f"features_only: {spec.name} exposes no feature pyramid; pooled features "
                "come from kerastl.build(..., task='embedding') or the 'pool' layer."
            )
        n = len(self._pyramid)
        idx = range(n) if out_indices is None else out_indices
        chosen = []
        for i in idx:
            if not isinstance(i, int) or not -n <= i < n:
                raise ConfigError(
                    f"out_indices: got {i!r}; {spec.name} has {n} pyramid levels "
                    f"({[k for k, _ in self._pyramid]}), valid indices 0..{n - 1}."
                )
            chosen.append(self._pyramid[i][1])
        hub_in = keras.tree.flatten(self._hub.input)[0]
        pyramid = keras.Model(hub_in, chosen, name="pyramid")
        return keras.Model(backbone.inputs, pyramid(backbone.inputs[0]), name="features")

    def enable_lora(self, backbone: keras.Model, rank: int) -> int:
        """Add rank-``rank`` LoRA adapters to the attention query/value projections.

        Every other backbone weight is frozen (variable by variable), so only
        the LoRA factors train. Returns the number of adapted layers.
        """
        if self.spec.modality != "text":
            raise ConfigError(
                f"freeze: LoRA is offered for KerasHub text backbones; {self.spec.name} is "
                f"a {self.spec.modality} backbone. Use 'backbone', 'last:N' or 'up_to:GROUP'."
            )
        backbone.trainable = True
        adapted = 0
        lora_ids = set()
        for layer in backbone._flatten_layers(include_self=False):
            if layer.name in LORA_TARGETS and hasattr(layer, "enable_lora"):
                if getattr(layer, "lora_enabled", False):
                    if layer.lora_rank != rank:
                        raise ConfigError(
                            f"freeze: LoRA of rank {layer.lora_rank} is already on; cannot "
                            f"switch to rank {rank} (rebuild the model)."
                        )
                else:
                    layer.enable_lora(rank)
                lora_ids.update(id(v) for v in (layer.lora_kernel_a, layer.lora_kernel_b))
                adapted += 1
        if not adapted:
            raise ConfigError(f"freeze: {self.spec.name} has no attention layer to adapt.")
        for v in backbone.weights:
            v.trainable = id(v) in lora_ids
        return adapted


def _init_args(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def keras_hub_adapter(spec) -> KerasHubAdapter:
    """The adapter for a KerasHub registry entry."""
    return KerasHubAdapter(spec)
