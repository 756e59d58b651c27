"""Export formats: one class per format, one module each, listed once in :data:`FORMATS`.

Every format implements :class:`~kerastl.export.formats.base.Format`; the pipeline
(:mod:`kerastl.export.pipeline`) looks formats up here by name and never branches on
a format's name itself.

Example:
    >>> list(FORMATS)
    ['saved_model', 'tflite', 'onnx']
    >>> FORMATS["tflite"].versioned
    False
"""

from __future__ import annotations

from kerastl.export.formats.base import Format, Job, NotWritten, Options, Staged
from kerastl.export.formats.onnx import OnnxFormat
from kerastl.export.formats.saved_model import SavedModelFormat
from kerastl.export.formats.tflite import TFLiteFormat

#: Format name -> format, in the order artifacts are written (TFLite reads the SavedModel).
FORMATS: dict[str, Format] = {f.name: f for f in (SavedModelFormat(), TFLiteFormat(), OnnxFormat())}

__all__ = ["FORMATS", "Format", "Job", "NotWritten", "Options", "Staged"]
