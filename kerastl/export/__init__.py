"""``kerastl.export``: SavedModel (TF Serving), TFLite and ONNX in one validated call.

The package face only re-exports. :func:`export` is :func:`kerastl.export.pipeline.export`:
one pipeline (stage -> write -> load back -> validate -> publish) over a closed table of
formats (:mod:`kerastl.export.formats`: ``saved_model``, ``tflite``, ``onnx``, one class
each), validation in each artifact's real runtime (:mod:`~kerastl.export.validate`), a
report (:mod:`~kerastl.export.report`) and :func:`load_artifact` to read any artifact
back. How a model's input is served and how a model splits into parts (text: strings and
token ids; audio: waveforms and log-mel features) is its modality's business
(:mod:`kerastl.export.modalities`), so a new modality plugs in without touching the formats.

Everything is built in a hidden staging folder inside ``out_dir``, validated,
and only then renamed into place; a failure publishes nothing.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from kerastl.export.artifact import Artifact, load_artifact
from kerastl.export.modalities import ModalityExporter, register_modality
from kerastl.export.pipeline import FORMATS, QUANTIZE, export

__all__ = [
    "FORMATS",
    "QUANTIZE",
    "Artifact",
    "ModalityExporter",
    "export",
    "load_artifact",
    "register_modality",
]


class _CallableModule(types.ModuleType):
    """Makes ``kerastl.export(...)`` work even after ``import kerastl.export``.

    ``kerastl.export`` is both the public function and this package. ``kerastl``
    resolves the attribute lazily to the function, but importing this package (or any
    submodule, e.g. by ``kerastl export`` or ``from kerastl.export import validate``)
    makes Python bind ``kerastl.export`` to the module itself, and only
    ``kerastl/__init__.py`` could stop that. Calling the module calls :func:`export`.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
