"""Modalities: what a model's input is, how to serve it, and how the model splits into parts.

The format classes (:mod:`kerastl.export.formats`) never look at pixels or strings
themselves. They ask the model's :class:`ModalityExporter` for the input signature,
extra serving signatures (``serving_bytes`` for images), realistic sample inputs, how
to coerce user data and how to read input files. A modality whose model cannot go to
every format whole declares it (:attr:`ModalityExporter.sub_model_formats`): text
models go to TFLite/ONNX as their token-id sub-model, Whisper audio models as their
log-mel one, and :mod:`kerastl.export.split` exports and publishes the
parts as one unit. A new modality is one module that subclasses
:class:`ModalityExporter` and either appears in :data:`MODALITY_MODULES` or calls
:func:`register_modality` itself; nothing else changes.

Which hook a model gets is decided by ``kerastl_config["input"]["name"]``
(``"image"``, ``"text"``, ...), falling back to ``kerastl_config["modality"]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.errors import ConfigError, choice_error

#: Modality -> module that registers its exporter on import (imported lazily).
MODALITY_MODULES: dict[str, str] = {
    "image": "kerastl.export.modalities.image",
    "text": "kerastl.export.modalities.text",
    "token_ids": "kerastl.export.modalities.text",
    "audio": "kerastl.export.modalities.audio",
    "log_mel": "kerastl.export.modalities.audio",
}

_REGISTRY: dict[str, type[ModalityExporter]] = {}


class ModalityExporter:
    """Contract of a modality's export hooks. Subclass and register one per modality.

    Args:
        meta: The model's kerastl metadata (``kerastl_config``), with
            ``input`` holding at least ``name``, ``shape`` and ``dtype``.

    Example:
        >>> class TextExporter(ModalityExporter):  # doctest: +SKIP
        ...     name = "text"
        ...     formats = ("saved_model",)
        >>> register_modality("text", TextExporter)  # doctest: +SKIP
    """

    #: Modality name, equal to the model input's name (``"image"``).
    name = "base"
    #: Formats this modality can be exported to.
    formats: tuple[str, ...] = ("saved_model", "tflite", "onnx")
    #: Formats exported from a sub-model (:meth:`sub_model`) instead of the model itself,
    #: e.g. text: TFLite and ONNX take token ids. Empty: the model goes whole to every format.
    sub_model_formats: tuple[str, ...] = ()

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta

    @property
    def input_name(self) -> str:
        """Name of the raw input tensor in every artifact."""
        return self.meta["input"]["name"]

    def check_input(
        self, model_name: str, formats: Sequence[str] = (), validation_data: bool = False
    ) -> None:
        """Refuse a model input this export cannot serve, before any work starts.

        ``formats`` are the formats asked for; ``validation_data`` whether the caller gave
        real inputs (synthetic ones are made for the modality's usual input).

        Raises:
            ConfigError: naming the model, its input and the inputs kerastl exports.
        """

    def input_signature(self) -> list:
        """``tf.TensorSpec`` list of the raw input, batch axis ``None``."""
        raise NotImplementedError

    def extra_signatures(self, serve_fn: Any) -> dict[str, tuple[Any, list]]:
        """SavedModel-only signatures: name -> (python function, input signature).

        ``serve_fn`` maps the raw input to the output dict (the concrete function of the
        traced inference function: call it with one tensor of the input signature's dtype
        and shape); extra signatures wrap it (decode bytes, tokenize strings...).
        """
        return {}

    def sample_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` realistic raw inputs, used when the user gives no validation data."""
        raise NotImplementedError

    def coerce(self, data: Any, argument: str, limit: int | None = None) -> tuple[np.ndarray, Any]:
        """Turn user data (arrays, ``(x, y)``, ``tf.data``) into ``(inputs, labels or None)``."""
        raise NotImplementedError

    def load_files(self, paths: list[str]) -> np.ndarray:
        """Read input files (images, text files...) into a raw input batch."""
        raise NotImplementedError

    def warmup_requests(self, samples: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
        """TF Serving warm-up requests: (signature name, {input name: TensorProto})."""
        return []

    def rest_examples(self, samples: np.ndarray) -> dict[str, Any]:
        """File name -> JSON body of sample TF Serving REST requests."""
        return {}

    # -- multi-part exports (only for a non-empty ``sub_model_formats``) --------------------

    def splits(self, formats: list[str]) -> bool:
        """Whether exporting ``formats`` takes two parts: the model and its sub-model.

        Example:
            >>> ModalityExporter({}).splits(["tflite"])
            False
        """
        return any(f in self.sub_model_formats for f in formats)

    def sub_model(self, model: Any) -> Any:
        """The part of ``model`` that :attr:`sub_model_formats` are exported from."""
        raise NotImplementedError

    def sub_inputs(self, sub: ModalityExporter, data: Any) -> tuple[np.ndarray, Any]:
        """User data of the whole model as ``(inputs, labels or None)`` of the sub-model.

        ``sub`` is the sub-model's modality (its tokenizer, feature converter...).
        """
        raise NotImplementedError

    def write_beside(self, model: Any, staging: Path, name: str) -> dict[str, tuple[str, list]]:
        """Folders the sub-model's files need beside them, written into ``staging``.

        Returns report key -> (folder name, files written), e.g. the text tokenizer.
        """
        return {}

    def split_note(self, name: str, paths: list[str]) -> str:
        """The report's note on which part takes which input (``paths``: the files published)."""
        return ""


def register_modality(name: str, exporter: type[ModalityExporter]) -> None:
    """Register the export hooks of a modality (``"text"``, ``"audio"``...).

    Args:
        name: The model input's name in ``kerastl_config["input"]["name"]``.
        exporter: A :class:`ModalityExporter` subclass.

    Raises:
        ConfigError: ``name`` is already registered with another class.

    Example:
        >>> register_modality("image", get_modality_class("image"))
    """
    if not (isinstance(exporter, type) and issubclass(exporter, ModalityExporter)):
        raise ConfigError(f"exporter: expected a ModalityExporter subclass, got {exporter!r}.")
    if name in _REGISTRY and _REGISTRY[name] is not exporter:
        raise ConfigError(f"Modality {name!r} is already registered ({_REGISTRY[name]!r}).")
    _REGISTRY[name] = exporter


def get_modality_class(name: str) -> type[ModalityExporter]:
    """The registered exporter class of modality ``name`` (imports its module)."""
    if name not in _REGISTRY and name in MODALITY_MODULES:
        importlib.import_module(MODALITY_MODULES[name])
    if name not in _REGISTRY:
        raise choice_error(
            "modality", name, sorted(set(_REGISTRY) | set(MODALITY_MODULES)), what="modality"
        )
    return _REGISTRY[name]


def get_modality(meta: dict[str, Any]) -> ModalityExporter:
    """The exporter hooks for a model's metadata.

    Example:
        >>> get_modality({"input": {"name": "image", "shape": [32, 32, 3]}}).name
        'image'
    """
    name = (meta.get("input") or {}).get("name") or meta.get("modality") or "image"
    return get_modality_class(name)(meta)
