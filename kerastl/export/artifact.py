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

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from kerastl._errors import ConfigError, missing_dependency

#: Artifact kinds :func:`load_artifact` reads.
ARTIFACT_FORMATS = ("saved_model", "tflite", "onnx", "keras")


class Artifact:
    """An exported model loaded in its runtime.

    Attributes:
        path: File or folder loaded.
        format: One of :data:`ARTIFACT_FORMATS`.
        metadata: kerastl's metadata (labels, task, input spec...).
        runtime: Which runtime executes it.

    Example:
        >>> art = kerastl.load_artifact("out/model.tflite")  # doctest: +SKIP
        >>> art.predict(["cat.jpg"])["labels"]  # doctest: +SKIP
        ['cat']
    """

    format = "base"
    runtime = "?"

    def __init__(self, path: Path, metadata: dict[str, Any]):
        self.path = path
        self.metadata = metadata

    @property
    def input_name(self) -> str:
        return (self.metadata.get("input") or {}).get("name", "image")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw runtime call on a batch of raw inputs; returns numpy outputs by name."""
        raise NotImplementedError

    def run_batched(self, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        """:meth:`run` over ``x`` in chunks of ``batch_size``, outputs concatenated."""
        parts: dict[str, list] = {}
        for i in range(0, len(x), batch_size):
            for k, v in self.run(x[i : i + batch_size]).items():
                parts.setdefault(k, []).append(np.asarray(v))
        return {k: np.concatenate(v) for k, v in parts.items()}

    def predict(self, inputs: Any, batch_size: int = 32) -> dict[str, Any]:
        """Outputs for raw inputs or input files, with class labels when known.

        Args:
            inputs: An array of raw inputs, or a list of file paths.
            batch_size: Inputs per runtime call.

        Returns:
            Output name -> array, plus ``"labels"`` (list of names) for classifiers.
        """
        from kerastl.export.modalities import get_modality

        spec = self.metadata.get("input") or {}
        is_files = isinstance(inputs, (list, tuple)) and all(
            isinstance(p, (str, os.PathLike)) for p in inputs
        )
        if is_files and len(inputs) > 1 and spec.get("name") == "image":
            if None in list(spec.get("shape") or [])[:2]:  # any size: files one by one
                return _merge([self.predict([p], batch_size) for p in inputs])
        modality = get_modality(self.metadata)
        x, _ = modality.coerce(inputs, "inputs")
        out = self.run_batched(x, batch_size)
        names = self.metadata.get("class_names")
        if names and "class_id" in out:
            out["labels"] = [names[int(i)] for i in out["class_id"]]
        elif names and "probabilities" in out:  # e.g. the MediaPipe file: scores only
            out["labels"] = [names[int(i)] for i in np.argmax(out["probabilities"], axis=-1)]
        return out

    def latency_ms(self, x: np.ndarray, runs: int = 10, warmup: int = 2) -> float:
        """Median wall time of one call on ``x`` (use a batch of one), in milliseconds."""
        for _ in range(warmup):
            self.run(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.run(x)
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000.0)


def _merge(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in outputs[0].items():
        parts = [o[key] for o in outputs]
        merged[key] = sum(parts, []) if isinstance(value, list) else np.concatenate(parts)
    return merged


class SavedModelArtifact(Artifact):
    format = "saved_model"
    runtime = "tensorflow SavedModel signature 'serving_default'"

    def __init__(self, path: Path, signature: str = "serving_default"):
        import tensorflow as tf

        meta_file = path / "assets" / "kerastl_metadata.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        super().__init__(path, meta)
        self._loaded = tf.saved_model.load(str(path))
        if signature not in self._loaded.signatures:
            from kerastl._errors import choice_error

            raise choice_error("signature", signature, list(self._loaded.signatures))
        self._fn = self._loaded.signatures[signature]
        self.signature = signature
        self.runtime = f"tensorflow SavedModel signature {signature!r}"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self._fn(**{self.input_name: tf.constant(x)})
        return {k: v.numpy() for k, v in out.items()}


class TFLiteArtifact(Artifact):
    format = "tflite"

    def __init__(self, path: Path):
        from kerastl.export.formats import tflite as tfl

        content = path.read_bytes()
        super().__init__(path, tfl.read_metadata(content))
        self.ops, self.custom_ops = tfl.list_ops(content)
        if any(op.startswith("Flex") for op in self.custom_ops):
            import tensorflow as tf  # its interpreter links the Flex delegate

            self._interp = tf.lite.Interpreter(model_content=content)
            self.runtime = "tf.lite.Interpreter (Flex delegate)"
        else:
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError as exc:
                raise missing_dependency("ai_edge_litert", "ai-edge-litert", "TFLite") from exc
            self._interp = Interpreter(model_content=content)
            self.runtime = "ai_edge_litert.Interpreter"
        self._runner = self._interp.get_signature_runner("serving_default")
        self._inputs = self._runner.get_input_details()
        self._outputs = self._runner.get_output_details()

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._inputs[self.input_name]["dtype"]).name

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        detail = self._inputs[self.input_name]
        dtype = np.dtype(detail["dtype"])
        scale, zero = detail["quantization"]
        if dtype.kind in "iu" and scale:  # quantized input (not token ids)
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        out = self._runner(**{self.input_name: np.ascontiguousarray(x, dtype=dtype)})
        result = {}
        for name, value in out.items():
            scale, zero = self._outputs[name]["quantization"]
            if scale and np.dtype(value.dtype).kind in "iu":
                value = (value.astype(np.float32) - zero) * scale
            result[name] = np.array(value)
        return result


class OnnxArtifact(Artifact):
    format = "onnx"
    runtime = "onnxruntime (CPUExecutionProvider)"

    def __init__(self, path: Path):
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_dependency("onnxruntime", "onnx onnxruntime", "ONNX") from exc
        from kerastl.export.formats import onnx as kx_onnx

        proto = onnx.load(str(path), load_external_data=False)
        super().__init__(path, kx_onnx.read_metadata(proto))
        self.opset = max(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._out_names = [o.name for o in self._session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        kind = self._session.get_inputs()[0].type  # "tensor(float)", "tensor(int32)"...
        dtype = np.int32 if "int32" in kind else np.int64 if "int64" in kind else np.float32
        values = self._session.run(None, {self.input_name: np.asarray(x, dtype)})
        return dict(zip(self._out_names, values))


class KerasArtifact(Artifact):
    format = "keras"
    runtime = "keras (inference mode)"

    def __init__(self, path: Path):
        from kerastl.export._trace import load_keras, prepare

        self._prepared = prepare(load_keras(path))
        super().__init__(path, self._prepared.meta)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._prepared.predict(np.asarray(x, np.float32))

    @classmethod
    def from_model(cls, model: Any, label: str) -> KerasArtifact:
        """Wrap an in-memory kerastl model (``kerastl predict MODEL_NAME`` uses it)."""
        from kerastl.export._trace import prepare

        self = cls.__new__(cls)
        self._prepared = prepare(model)
        Artifact.__init__(self, Path(label), self._prepared.meta)
        return self


def _saved_model_root(path: Path) -> Path:
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((p for p in path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if versions and (versions[-1] / "saved_model.pb").is_file():
        return versions[-1]
    children = [p for p in path.iterdir() if p.is_dir()]
    if path.name == "saved_model" and len(children) == 1:
        return _saved_model_root(children[0])
    raise ConfigError(
        f"path: {str(path)!r} is a folder without saved_model.pb or numeric version "
        "folders; pass an export's saved_model/<name>/<version> folder."
    )


def load_artifact(path: str | os.PathLike, format: str | None = None) -> Artifact:
    """Load an exported artifact (or a ``.keras`` model) in its runtime.

    Args:
        path: A SavedModel folder (``saved_model/<name>/<version>``, or
            ``saved_model/<name>`` for its latest version), a ``.tflite`` or
            ``.onnx`` file, or a ``.keras`` file.
        format: Force the kind instead of guessing it from ``path``
            (one of :data:`ARTIFACT_FORMATS`).

    Returns:
        An :class:`Artifact`: ``.metadata``, ``.run(x)``, ``.predict(inputs)``.

    Raises:
        ConfigError: unknown format or nothing loadable at ``path``.

    Example:
        >>> art = kerastl.load_artifact("out/saved_model/flowers")  # doctest: +SKIP
        >>> art.metadata["class_names"]  # doctest: +SKIP
        ['daisy', 'rose']
    """
    from kerastl._errors import choice_error

    path = Path(path)
    if format is not None and format not in ARTIFACT_FORMATS:
        raise choice_error("format", format, ARTIFACT_FORMATS)
    if not path.exists():
        raise ConfigError(f"path: nothing at {str(path)!r}.")
    if format is None:
        if path.is_dir():
            format = "saved_model"
        else:
            format = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras"}.get(path.suffix)
            if format is None:
                raise ConfigError(
                    f"path: cannot tell the format of {str(path)!r} from its suffix "
                    f"{path.suffix!r}; expected a SavedModel folder, .tflite, .onnx or .keras "
                    "(or pass format=...)."
                )
    if format == "saved_model":
        return SavedModelArtifact(_saved_model_root(path))
    if format == "tflite":
        return TFLiteArtifact(path)
    if format == "onnx":
        return OnnxArtifact(path)
    return KerasArtifact(path)
