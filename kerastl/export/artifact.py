"""Load any exported artifact back, with its metadata, and run it in its real runtime.

* SavedModel folder -> ``tf.saved_model.load`` and its ``serving_default`` signature;
* ``.tflite`` -> the ``ai-edge-litert`` interpreter's signature runner
  (``tf.lite.Interpreter`` only for files with Flex ops);
* ``.onnx`` -> ``onnxruntime`` (CPU);
* ``.keras`` -> :func:`kerastl.load_model`, called in inference mode.

Inputs are raw (0-255 pixels for images) arrays or input files; quantized
TFLite inputs and outputs are (de)quantized for you.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.errors import ConfigError, check_positive_int, choice_error
from kerastl.export.formats import FORMATS
from kerastl.export.formats.base import Artifact

#: Artifact kinds :func:`load_artifact` reads.
ARTIFACT_FORMATS = (*FORMATS, "keras")
#: Artifact kinds whose runtime takes a thread count of its own (TensorFlow sets its
#: thread pools once per process: ``tf.config.threading``).
THREADED_FORMATS = ("tflite", "onnx")
#: File suffix -> artifact kind (a folder is a SavedModel).
_SUFFIXES = {**{f.suffix: f.name for f in FORMATS.values() if f.suffix}, ".keras": "keras"}
_FOLDER = next(f.name for f in FORMATS.values() if f.suffix is None)

__all__ = ["ARTIFACT_FORMATS", "THREADED_FORMATS", "Artifact", "KerasArtifact", "load_artifact"]


class KerasArtifact(Artifact):
    format = "keras"
    runtime = "keras (inference mode)"

    def __init__(self, path: Path):
        from kerastl.export._trace import load_keras, prepare

        self._prepared = prepare(load_keras(path))
        super().__init__(path, self._prepared.meta)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The model on ``x``, cast to its modality's input dtype (strings for text)."""
        spec = self._prepared.modality.input_signature()[0]
        return self._prepared.predict(np.asarray(x, spec.dtype.as_numpy_dtype))

    @classmethod
    def from_model(cls, model: Any, label: str) -> KerasArtifact:
        """Wrap an in-memory kerastl model (``kerastl predict MODEL_NAME`` uses it)."""
        from kerastl.export._trace import prepare

        self = cls.__new__(cls)
        self._prepared = prepare(model)
        Artifact.__init__(self, Path(label), self._prepared.meta)
        return self


def artifacts_in(folder: str | os.PathLike) -> list[str]:
    """Paths (relative to ``folder``) of the artifacts :func:`load_artifact` reads there.

    Files with an artifact suffix and ``saved_model/<name>`` folders, sorted.

    Example:
        >>> artifacts_in("out")  # doctest: +SKIP
        ['model.onnx', 'model.tflite', 'saved_model/model']
    """
    folder = Path(folder)
    found = [p.name for p in _entries(folder) if p.suffix in _SUFFIXES and _probe(p.is_file)]
    for sub in (folder / "saved_model", folder):
        found += [str(p.relative_to(folder)) for p in _entries(sub) if _is_saved_model_dir(p)]
    return sorted(set(found))


def _probe(check: Any) -> bool:
    """``check()`` (``path.is_file``, ``path.is_dir``), False where the system refuses it."""
    try:
        return bool(check())
    except OSError:
        return False


def _entries(folder: Path) -> list[Path]:
    """What ``folder`` holds; nothing if it is no folder or cannot be read (no permission)."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _is_saved_model_dir(path: Path) -> bool:
    """A SavedModel folder: ``saved_model.pb`` in it or in a numbered version under it.

    A folder that cannot be read is none (skipped, not an error).
    """
    if not _probe(path.is_dir):
        return False
    if _probe((path / "saved_model.pb").is_file):
        return True
    return any(v.name.isdigit() and _probe((v / "saved_model.pb").is_file) for v in _entries(path))


def missing_artifact_error(path: Path) -> ConfigError:
    """The error for a ``path`` with nothing at it: the artifacts of its folder, close first."""
    import difflib

    folder = path.parent
    msg = f"path: nothing at {str(path)!r}."
    if not folder.is_dir():
        return ConfigError(msg + f" There is no folder {str(folder)!r} either.")
    found = artifacts_in(folder)
    if not found:
        return ConfigError(msg + f" Its folder {str(folder)!r} holds no artifact.")
    same_kind = [f for f in found if Path(f).suffix == path.suffix]
    close = difflib.get_close_matches(path.name, found, n=3, cutoff=0.5)
    close = list(dict.fromkeys(close + (same_kind if len(same_kind) == 1 else [])))
    if close:
        msg += " Did you mean " + " or ".join(repr(str(folder / c)) for c in close) + "?"
    return ConfigError(msg + f" Artifacts in {str(folder)!r}: {', '.join(found)}.")


def load_artifact(
    path: str | os.PathLike, format: str | None = None, num_threads: int | None = None
) -> Artifact:
    """Load an exported artifact (or a ``.keras`` model) in its runtime.

    Args:
        path: A SavedModel folder (``saved_model/<name>/<version>``, or
            ``saved_model/<name>`` for its latest version), a ``.tflite`` or
            ``.onnx`` file, or a ``.keras`` file.
        format: Force the kind instead of guessing it from ``path``
            (one of :data:`ARTIFACT_FORMATS`).
        num_threads: Threads of the runtime, for the kinds in :data:`THREADED_FORMATS`
            (``None``: every core this process may use).

    Returns:
        An :class:`Artifact`: ``.metadata``, ``.run(x)``, ``.predict(inputs)``.

    Raises:
        ConfigError: unknown format, nothing loadable at ``path``, or ``num_threads``
            not a positive integer or given for a kind that does not take it.

    Example:
        >>> art = kerastl.load_artifact("out/saved_model/flowers")  # doctest: +SKIP
        >>> art.metadata["class_names"]  # doctest: +SKIP
        ['daisy', 'rose']
    """
    path = Path(path)
    if format is not None and format not in ARTIFACT_FORMATS:
        raise choice_error("format", format, ARTIFACT_FORMATS)
    if not path.exists():
        raise missing_artifact_error(path)
    if format is None:
        if path.is_dir():
            format = _FOLDER
        else:
            format = _SUFFIXES.get(path.suffix)
            if format is None:
                raise ConfigError(
                    f"path: cannot tell the format of {str(path)!r} from its suffix "
                    f"{path.suffix!r}; expected a SavedModel folder, .tflite, .onnx or .keras "
                    "(or pass format=...)."
                )
    if num_threads is not None:
        check_positive_int("num_threads", num_threads)
        if format not in THREADED_FORMATS:
            raise ConfigError(
                f"num_threads: a {format} artifact runs in TensorFlow, whose threads are set "
                "once per process (tf.config.threading); num_threads applies to "
                f"{' and '.join(THREADED_FORMATS)} files."
            )
        return FORMATS[format].load(path, num_threads=num_threads)
    if format in FORMATS:
        return FORMATS[format].load(path)
    return KerasArtifact(path)
