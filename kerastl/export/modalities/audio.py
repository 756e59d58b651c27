"""Export hooks of audio models (KerasHub Whisper / Moonshine encoders): raw waveforms.

* **SavedModel** takes ``audio``: float32 mono waveforms in [-1, 1] at the
  model's sample rate (16 kHz), shape ``(batch, samples)``; the encoder's own
  feature extraction (Whisper's log-mel spectrogram) runs inside the graph.
* **TFLite and ONNX** of Whisper models take ``log_mel`` features
  ``(batch, frames, mels)``: the log-mel front end needs ``RaggedTensorToTensor``
  (not a LiteRT builtin) and ``RFFT`` followed by a slice (which tf2onnx cannot
  map), so the files hold the encoder and head only. Their metadata records the
  converter settings, and :func:`kerastl.load_artifact` computes the features
  from waveforms with KerasHub's ``WhisperAudioConverter``, so ``predict`` still
  takes raw audio. Moonshine has no spectrogram front end: all formats take
  the waveform.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.core.meta import ModelMeta
from kerastl.errors import DataError
from kerastl.export.modalities import ModalityExporter, register_modality


def _is_whisper(meta: dict[str, Any]) -> bool:
    return "log-mel" in str((meta.get("input") or {}).get("preprocessing", ""))


def feature_model(model):
    """The part of a Whisper-based kerastl model after the log-mel front end."""
    import keras

    from kerastl.core.model import KerastlModel

    pre = model.get_layer("preprocess")
    feats = keras.Input(shape=tuple(pre.output.shape[1:]), dtype="float32", name="log_mel")
    outputs = keras.Model(pre.output, model.outputs)(feats)
    meta = json.loads(json.dumps(ModelMeta.of(model).to_dict(), default=str))
    meta["input"] = {
        "name": "log_mel",
        "shape": list(pre.output.shape[1:]),
        "dtype": "float32",
        "range": None,
        "layout": "log-mel spectrogram (frames, mels), 100 frames/s",
        "preprocessing": "keras_hub WhisperAudioConverter on the waveform",
        "audio_input": ModelMeta.of(model).input,
        "converter": {
            "num_mels": pre.num_mels,
            "sample_rate": pre.sample_rate,
            "max_seconds": pre.max_seconds,
        },
    }
    return KerastlModel(feats, outputs, name=model.name, kerastl_config=meta)


class AudioExporter(ModalityExporter):
    """``audio``: float32 ``(batch, samples)`` waveforms at ``sample_rate`` Hz.

    Example:
        >>> ex = AudioExporter({"input": {"name": "audio", "shape": [16000],
        ...                               "sample_rate": 16000}})
        >>> ex.sample_inputs(2).shape
        (2, 16000)
    """

    name = "audio"
    formats = ("saved_model", "tflite", "onnx")
    #: Formats exported from the log-mel feature sub-model (Whisper models only).
    sub_model_formats = ("tflite", "onnx")

    def splits(self, formats: list[str]) -> bool:
        """Only Whisper models split; Moonshine takes the waveform in every format."""
        return _is_whisper(self.meta) and super().splits(formats)

    def sub_model(self, model):
        return feature_model(model)

    def sub_inputs(self, sub: ModalityExporter, data: Any) -> tuple[np.ndarray, Any]:
        return sub.coerce(data, "validation_data")

    def split_note(self, name: str, paths: list[str]) -> str:
        return (
            "audio model: SavedModel takes waveforms (log-mel in the graph); TFLite/ONNX take "
            "log_mel features (RaggedTensorToTensor and RFFT+slice do not convert with builtin "
            "ops); load_artifact computes the features from waveforms"
        )

    @property
    def samples(self) -> int | None:
        shape = self.meta["input"].get("shape") or [None]
        return shape[0]

    @property
    def sample_rate(self) -> int:
        return int(self.meta["input"].get("sample_rate", 16000))

    def input_signature(self) -> list:
        import tensorflow as tf

        return [tf.TensorSpec((None, self.samples), tf.float32, name=self.input_name)]

    def sample_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        """Chirps and tones with a little noise, 1 s unless the model fixes the length."""
        rng = np.random.default_rng(seed)
        length = self.samples or self.sample_rate
        t = np.arange(length, dtype=np.float32) / self.sample_rate
        out = np.empty((n, length), np.float32)
        for i in range(n):
            f0, f1 = rng.uniform(100, 2000, 2)
            out[i] = 0.4 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / t[-1] / 2) * t)
        out += rng.normal(0, 0.01, out.shape).astype(np.float32)
        return out

    def coerce(self, data: Any, argument: str, limit: int | None = None) -> tuple[np.ndarray, Any]:
        ys = None
        if isinstance(data, tuple) and len(data) in (2, 3):
            data, ys = data[0], data[1]
        if isinstance(data, (list, tuple)) and data and all(isinstance(d, str) for d in data):
            return self.load_files(list(data)[:limit]), ys
        if hasattr(data, "as_numpy_iterator"):
            xs, yl = [], []
            for element in data.as_numpy_iterator():
                x, y = (element[0], element[1]) if isinstance(element, tuple) else (element, None)
                x = np.asarray(x, np.float32)
                xs.append(x if x.ndim == 2 else x[None])
                if y is not None:
                    yl.append(np.atleast_1d(y))
                if limit is not None and sum(len(a) for a in xs) >= limit:
                    break
            data, ys = np.concatenate(xs), (np.concatenate(yl) if yl else None)
        x = np.asarray(data)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.dtype.kind != "f" or (self.samples and x.shape[1] != self.samples):
            raise DataError(
                f"{argument}: expected float mono waveforms of shape (batch, "
                f"{self.samples or 'samples'}) at {self.sample_rate} Hz, got dtype {x.dtype} "
                f"shape {x.shape}."
            )
        if len(x) == 0:
            raise DataError(f"{argument}: no waveforms.")
        if limit is not None:
            x = x[:limit]
            ys = None if ys is None else np.asarray(ys)[:limit]
        return x.astype(np.float32), ys

    def load_files(self, paths: list[str]) -> np.ndarray:
        """Read 16-bit PCM mono WAV files at the model's sample rate (padded/trimmed)."""
        out = []
        for p in paths:
            try:
                with wave.open(str(Path(p)), "rb") as w:
                    rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
                    frames = w.readframes(w.getnframes())
            except FileNotFoundError as exc:
                raise DataError(f"inputs: no file at {p!r}.") from exc
            except (wave.Error, EOFError) as exc:
                raise DataError(f"inputs: {p!r} is not a PCM WAV file ({exc}).") from exc
            if rate != self.sample_rate or width != 2:
                raise DataError(
                    f"inputs: {p!r} is {rate} Hz / {8 * width}-bit; the model takes "
                    f"{self.sample_rate} Hz 16-bit PCM (resample it first)."
                )
            x = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
            x = x.reshape(-1, channels).mean(1)
            if self.samples:
                x = np.pad(x[: self.samples], (0, max(0, self.samples - len(x))))
            out.append(x)
        if len({len(x) for x in out}) > 1:
            raise DataError("inputs: WAV files of different lengths; the model needs one length.")
        return np.stack(out)

    def warmup_requests(self, samples: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
        import tensorflow as tf

        return [("serving_default", {self.input_name: tf.make_tensor_proto(samples[:1])})]


class LogMelExporter(ModalityExporter):
    """``log_mel`` features ``(batch, frames, mels)`` in; waveforms are converted first."""

    name = "log_mel"
    formats = ("saved_model", "tflite", "onnx")

    def input_signature(self) -> list:
        import tensorflow as tf

        return [
            tf.TensorSpec((None, *self.meta["input"]["shape"]), tf.float32, name=self.input_name)
        ]

    def features(self, waves: np.ndarray) -> np.ndarray:
        """Log-mel features of waveforms, exactly as the model's preprocessing makes them."""
        import keras_hub

        c = self.meta["input"]["converter"]
        conv = keras_hub.layers.WhisperAudioConverter(
            num_mels=c["num_mels"],
            sampling_rate=c["sample_rate"],
            max_audio_length=c["max_seconds"],
        )
        return np.asarray(conv(waves.astype(np.float32)), np.float32)

    def _audio(self) -> AudioExporter:
        return AudioExporter({"input": self.meta["input"]["audio_input"]})

    def sample_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        return self.features(self._audio().sample_inputs(n, seed))

    def coerce(self, data: Any, argument: str, limit: int | None = None) -> tuple[np.ndarray, Any]:
        probe = data[0] if isinstance(data, tuple) and len(data) in (2, 3) else data
        if isinstance(probe, np.ndarray) and probe.ndim == 3:
            ys = data[1] if probe is not data else None
            return probe[:limit].astype(np.float32), (None if ys is None else ys[:limit])
        waves, ys = self._audio().coerce(data, argument, limit)
        return self.features(waves), ys

    def load_files(self, paths: list[str]) -> np.ndarray:
        return self.features(self._audio().load_files(paths))


register_modality("audio", AudioExporter)
register_modality("log_mel", LogMelExporter)
