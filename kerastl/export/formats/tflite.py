"""TFLite (LiteRT) files: float32, float16, dynamic-range and full-integer int8.

Converted by ``tf.lite.TFLiteConverter`` from the traced inference function with its
variables frozen (:func:`convert_function`), or, where that path fails, from the
``serving_default`` signature of the inference SavedModel (:func:`convert`, the path Keras'
own ``format="litert"`` takes); with **builtin ops only** unless ``allow_flex=True``:
Keras allows Flex (select TF) ops, whose files then fail in the ``ai-edge-litert``
interpreter. kerastl's metadata JSON is embedded in the file's ``metadata`` table under
:data:`METADATA_NAME`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.core.patching import patched
from kerastl.errors import (
    ConfigError,
    ExportError,
    check_positive_int,
    choice_error,
    missing_dependency,
    one_line,
)
from kerastl.export.formats import tflite_metadata
from kerastl.export.formats.base import (
    Artifact,
    Format,
    Job,
    NotWritten,
    Options,
    Staged,
)

log = logging.getLogger("kerastl.export")

#: Precisions kerastl writes (``quantize=`` choices).
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
#: Input/output types of full-integer files.
INT8_IO = ("float32", "int8", "uint8")
#: Name of the metadata entry that holds kerastl's JSON.
METADATA_NAME = "kerastl_metadata"
#: Below this many calibration samples, int8 ranges are unreliable: warn.
MIN_CALIBRATION_SAMPLES = 300


def file_name(name: str, quantization: str) -> str:
    """``name.tflite`` for float32, ``name_<quantization>.tflite`` otherwise."""
    return f"{name}.tflite" if quantization == "float32" else f"{name}_{quantization}.tflite"


def convert(
    saved_model_dir: Path,
    quantization: str,
    input_name: str,
    calibration: np.ndarray | None = None,
    int8_io: str = "float32",
    allow_flex: bool = False,
) -> bytes | bytearray:
    """Convert the ``serving_default`` signature of a SavedModel to a TFLite flatbuffer.

    The flatbuffer comes back as a ``bytearray`` when kerastl's lean repacking wrote it
    last (no final copy into ``bytes``); LiteRT's ``Interpreter(model_content=...)``
    takes ``bytes`` only: pass it ``bytes(flatbuffer)``, or write the file and load that.

    Args:
        saved_model_dir: SavedModel written by :mod:`kerastl.export.formats.saved_model`.
        quantization: One of :data:`QUANTIZATIONS`.
        input_name: Name of the signature's input, for the calibration feed.
        calibration: Raw inputs for ``int8`` calibration.
        int8_io: Input/output type of ``int8`` files (:data:`INT8_IO`).
        allow_flex: Allow Flex (select TensorFlow) ops.

    Raises:
        ExportError: the graph needs ops LiteRT has no builtin for.
    """
    import tensorflow as tf

    with _signatures_only_load():
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model_dir), signature_keys=["serving_default"]
        )
    settings = _Settings(quantization, calibration, int8_io, allow_flex)
    return _run(converter, settings, lambda x: {input_name: x})


def convert_function(
    concrete: Any,
    quantization: str,
    calibration: np.ndarray | None = None,
    int8_io: str = "float32",
    allow_flex: bool = False,
) -> bytes | bytearray:
    """Convert a traced function of one input that returns a dict, its variables frozen.

    TensorFlow's frozen-graph path: no SavedModel is written and read back (Lite0 at
    64 px, float32: trace, freeze and conversion took about 3 s, the SavedModel's write
    and conversion about 12). The converter gives that path no
    SignatureDef; the file gets the ``serving_default`` one the SavedModel path gives
    (the input's name, then the outputs by name, in the order of their sorted keys,
    which is the order of the function's outputs). Arguments as :func:`convert`.

    Example:
        >>> import tensorflow as tf
        >>> w = tf.Variable([[2.0]])
        >>> f = tf.function(lambda x: {"y": x @ w}, input_signature=[tf.TensorSpec((None, 1), name="x")])
        >>> from ai_edge_litert.interpreter import Interpreter
        >>> flat = convert_function(f.get_concrete_function(), "float32")
        >>> Interpreter(model_content=bytes(flat)).get_signature_runner()(x=np.ones((1, 1), "float32"))
        {'y': array([[2.]], dtype=float32)}

    Raises:
        ExportError: as :func:`convert`; ValueError: not one input, or outputs not a dict.
    """
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    from kerastl.core.tf_log import quiet_tensorflow

    specs = tf.nest.flatten(concrete.structured_input_signature)
    outputs = concrete.structured_outputs
    if len(specs) != 1 or not isinstance(outputs, dict):
        raise ValueError("convert_function takes a function of one input that returns a dict")
    with quiet_tensorflow("deprecated conversion path"):  # the frozen-graph path
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    settings = _Settings(quantization, calibration, int8_io, allow_flex)
    content = _run(converter, settings, lambda x: [x])
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    main = model.subgraphs[0]
    named = dict(zip(sorted(outputs), main.outputs, strict=True))
    tflite_metadata.serving_signature(model, {specs[0].name: main.inputs[0]}, named)
    return tflite_metadata.repack(model, content)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """kerastl's converter settings for one precision (arguments of :func:`convert`)."""

    quantization: str
    calibration: np.ndarray | None = None
    int8_io: str = "float32"
    allow_flex: bool = False


def _run(
    converter: Any, settings: _Settings, feed: Callable[[np.ndarray], Any]
) -> bytes | bytearray:
    """Set ``converter`` up for the precision and convert; ``feed`` makes one calibration
    sample (a batch of 1) into what the converter's representative dataset yields."""
    import tensorflow as tf

    quantization, int8_io = settings.quantization, settings.int8_io
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "int8":
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io == "float32":  # float in/out needs the float QUANTIZE/DEQUANTIZE builtins
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    if settings.allow_flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if quantization in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        data = np.asarray(settings.calibration)  # pixels / waveforms float, token ids int32
        data = data.astype(np.float32 if data.dtype.kind == "f" else np.int32)
        converter.representative_dataset = lambda: (feed(data[i : i + 1]) for i in range(len(data)))
        # TensorFlow's flatbuffer quantizer (the one it keeps for 16x8 activations) writes
        # the same int8 graph from the same calibration without the MLIR quantizer's
        # copies: ConvNeXt-B peaks at 2.74 GB instead of 3.72 (bench/export_memory.py).
        converter.experimental_new_quantizer = False
        if int8_io != "float32":
            converter.inference_input_type = getattr(tf, int8_io)
            converter.inference_output_type = getattr(tf, int8_io)
    try:
        lean_int8 = _lean_calibration() if quantization == "int8" else contextlib.nullcontext()
        with _signatures_only_load(), _lean_packing(), lean_int8:
            return _convert(converter)
    except Exception as exc:  # noqa: BLE001 - ConverterError and friends
        text = str(exc)
        flex = "Select TF" in text or "flex" in text.lower() or "not supported" in text
        hint = (
            " The graph needs ops that are not LiteRT builtins; pass allow_flex=True "
            "(CLI --allow-flex) to use select TensorFlow ops (the app then needs the "
            "Flex delegate)."
            if flex and not settings.allow_flex
            else ""
        )
        raise ExportError(
            f"TFLite conversion ({quantization}) failed: {_first_lines(text)}{hint}"
        ) from exc


def _convert(converter: Any) -> bytes | bytearray:
    """``converter.convert()``; an int8 graph the flatbuffer quantizer refuses goes
    through TensorFlow's default (MLIR) quantizer instead. A conversion that failed
    before quantizing (unsupported ops...) fails as it is: it would fail again."""
    if converter.experimental_new_quantizer:
        return converter.convert()
    from tensorflow.lite.python.optimize import calibrator

    reached = []
    quantize = calibrator.Calibrator.calibrate_and_quantize

    def noted(self: Any, *args: Any, **kwargs: Any) -> bytes:
        reached.append(True)
        return quantize(self, *args, **kwargs)

    try:
        with patched((calibrator.Calibrator, "calibrate_and_quantize", noted)):
            return converter.convert()
    except Exception as exc:  # noqa: BLE001 - whatever the legacy quantizer raises
        if not reached:
            raise
        log.info("  int8: the flatbuffer quantizer failed (%s); using the MLIR quantizer", exc)
        converter.experimental_new_quantizer = True
        return converter.convert()


@contextlib.contextmanager
def _signatures_only_load() -> Iterator[None]:
    """While the TFLite converter runs, it reads the SavedModel's protos, not its weights.

    The converter's MLIR importer reads the SavedModel directory itself. Before that,
    ``from_saved_model`` and ``convert()`` each load the whole SavedModel into Python
    (``tf.saved_model.load``: every variable restored) only to list its signatures and
    read its debug info. Here that load parses ``saved_model.pb`` and the debug info
    file and restores nothing. With :func:`_lean_packing`, ConvNeXt-L's float32
    conversion in a fresh process peaks at 4.01 GB instead of 6.05 for the converter
    called directly, in 18 s instead of 31, and writes the same bytes
    (``python -m bench.convert_memory``).
    """
    import types

    from tensorflow.lite.python import lite
    from tensorflow.python.saved_model import loader_impl

    def protos_only(export_dir: str, tags: Any = None, options: Any = None) -> Any:
        saved_model, debug_info = loader_impl.parse_saved_model_with_debug_info(export_dir)
        wanted = set(tags or ["serve"])
        signatures = {
            key: None
            for graph in saved_model.meta_graphs
            if wanted <= set(graph.meta_info_def.tags)
            for key in graph.signature_def
            if not key.startswith("__")  # ``__saved_model_init_op``: not a signature
        }
        return types.SimpleNamespace(signatures=signatures, graph_debug_info=debug_info)

    with patched((lite, "_load", protos_only)):
        yield


@contextlib.contextmanager
def _lean_packing() -> Iterator[None]:
    """While the TFLite converter runs, its flatbuffer rewrites make fewer copies.

    After converting, the converter unpacks the file into Python objects and packs it
    again twice: to merge identical weight buffers and to add its conversion metadata.
    Each pack grew a ``flatbuffers.Builder`` from 1 KB by doubling, then copied its
    output twice (ConvNeXt-B: +1.2 GB for 350 MB of weights, each time). Here a pack
    starts at the weights' size and copies once (:func:`tflite_metadata.pack`), and the
    merge is skipped when no two weight buffers are equal (its result would be the same
    model). Both functions are put back when the block ends.
    """
    from tensorflow.lite.python import lite
    from tensorflow.lite.tools import flatbuffer_utils

    dedup = lite._deduplicate_readonly_buffers

    def lean_to_bytes(model_object: Any, extra_buffer: bytes = b"") -> bytes | bytearray:
        weights = sum(getattr(b.data, "nbytes", 0) for b in model_object.buffers or [])
        packed = tflite_metadata.pack(model_object, weights)
        return packed + extra_buffer if extra_buffer else packed

    def lean_dedup(flatbuffer: bytes) -> bytes | bytearray:
        return dedup(flatbuffer) if has_equal_buffers(flatbuffer) else flatbuffer

    with patched(
        (flatbuffer_utils, "convert_object_to_bytearray", lean_to_bytes),
        (lite, "_deduplicate_readonly_buffers", lean_dedup),
    ):
        yield


#: Op names whose int8 calibration needs the intermediate tensors TFLite adds first.
_NEEDS_INTERMEDIATES = ("LSTM", "RNN")


def needs_intermediate_tensors(flatbuffer: bytes) -> bool:
    """Whether int8 calibration must first add intermediate tensors to this file.

    Only recurrent (LSTM) ops get them. For any other graph, TFLite's
    ``add_intermediate_tensors`` unpacks the model and packs it again unchanged, which
    costs about 4 copies of the weights at once. Files with custom ops are left to that
    repack too (TensorFlow adds nothing for them; the rule stays simple).

    Example:
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> m = schema.ModelT(); code = schema.OperatorCodeT()
        >>> code.builtinCode = schema.BuiltinOperator.CONV_2D; m.operatorCodes = [code]
        >>> needs_intermediate_tensors(tflite_metadata.pack(m, 0))
        False
        >>> code.builtinCode = schema.BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM
        >>> needs_intermediate_tensors(tflite_metadata.pack(m, 0))
        True
    """
    ops, custom = list_ops(flatbuffer)  # read in place: no copy of the weights
    return bool(custom) or any(key in op for op in ops for key in _NEEDS_INTERMEDIATES)


@contextlib.contextmanager
def _lean_calibration() -> Iterator[None]:
    """While the TFLite converter quantizes to int8, it holds fewer copies of the model.

    The converter adds intermediate tensors (a repack, skipped when
    :func:`needs_intermediate_tensors` says the result would be the same model), then
    calibrates and quantizes. Before calibrating and before quantizing, the copies the
    previous stage dropped are handed back to the OS (:func:`~.base.release_memory`).
    The int8 file is byte for byte the one the converter writes without this
    (``tests/test_tflite_metadata.py::test_lean_calibration_writes_the_same_int8_file``).
    """
    from tensorflow.lite.python import lite
    from tensorflow.lite.python.optimize import calibrator

    from kerastl.export.formats.base import release_memory

    add, quantize, calibrate, calibrate_and_quantize = (
        calibrator.add_intermediate_tensors,
        lite._mlir_quantize,
        calibrator.Calibrator.calibrate,
        calibrator.Calibrator.calibrate_and_quantize,
    )

    def lean_add(model: bytes) -> bytes:
        if not needs_intermediate_tensors(model):
            return model
        release_memory()
        return add(model)

    def lean_calibrate(self: Any, dataset_gen: Any) -> bytes:
        release_memory()
        return calibrate(self, dataset_gen)

    def lean_quantize(*args: Any, **kwargs: Any) -> bytes:
        release_memory()
        return quantize(*args, **kwargs)

    def lean_calibrate_and_quantize(self: Any, *args: Any, **kwargs: Any) -> bytes:
        release_memory()
        return calibrate_and_quantize(self, *args, **kwargs)

    with (
        patched(
            (calibrator, "add_intermediate_tensors", lean_add),
            (calibrator.Calibrator, "calibrate", lean_calibrate),
            (lite, "_mlir_quantize", lean_quantize),
            (calibrator.Calibrator, "calibrate_and_quantize", lean_calibrate_and_quantize),
        ),
        warnings.catch_warnings(),
    ):
        # the calibrator reads the signature through tf.lite.Interpreter, which warns that it
        # is deprecated on every int8 export; kerastl's own runs use ai_edge_litert
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        yield


def has_equal_buffers(flatbuffer: bytes) -> bool:
    """Whether two non-empty buffers of the TFLite file hold the same bytes (read in place).

    Example:
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> m = schema.ModelT(); m.buffers = []
        >>> for data in ([1, 2], [3], [1, 2]):
        ...     b = schema.BufferT(); b.data = np.array(data, np.uint8); m.buffers.append(b)
        >>> has_equal_buffers(tflite_metadata.pack(m, 0))
        True
        >>> m.buffers = m.buffers[:2]
        >>> has_equal_buffers(tflite_metadata.pack(m, 0))
        False
    """
    import hashlib

    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    seen: set[tuple[int, bytes]] = set()
    for i in range(model.BuffersLength()):
        data = model.Buffers(i).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:  # no data (0), or empty
            continue
        key = (data.size, hashlib.md5(data, usedforsecurity=False).digest())
        if key in seen:
            return True
        seen.add(key)
    return False


def _first_lines(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[:n])[:800]


def embed_metadata(flatbuffer: bytes, meta: dict[str, Any]) -> bytes | bytearray:
    """Add kerastl's metadata JSON to the file's ``metadata`` table."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    tflite_metadata.add_entry(model, METADATA_NAME, metadata_json(meta))
    return tflite_metadata.repack(model, flatbuffer)


def metadata_json(meta: dict[str, Any]) -> bytes:
    """kerastl's metadata as the JSON bytes stored in the file."""
    return json.dumps(meta, default=str).encode()


def read_metadata(flatbuffer: bytes) -> dict[str, Any]:
    """kerastl's metadata embedded in a ``.tflite`` file (``{}`` if absent)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return {}


def list_ops(flatbuffer: bytes) -> tuple[list[str], list[str]]:
    """(all op names, non-builtin op names) used by the file."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(flatbuffer, 0)
    ops, custom = set(), set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = (code.CustomCode() or b"?").decode()
            custom.add(name)
            ops.add(name)
        else:
            ops.add(names.get(builtin, str(builtin)))
    return sorted(ops), sorted(custom)


def check_calibration(n: int) -> None:
    """Warn when too few samples calibrate an int8 file."""
    if n < MIN_CALIBRATION_SAMPLES:
        warnings.warn(
            f"calibration_data: {n} samples calibrate the int8 ranges; use at least "
            f"{MIN_CALIBRATION_SAMPLES} representative inputs for a reliable int8 file.",
            stacklevel=6,  # kerastl.export's caller: <- _inputs <- _export_one <- run <- export
        )


def precisions(quantize: list[str]) -> list[str]:
    """The files written: float32 always, then the extra ``quantize`` precisions.

    Example:
        >>> precisions(["int8", "float32", "float16"])
        ['float32', 'int8', 'float16']
    """
    return ["float32", *[q for q in quantize if q != "float32"]]


class TFLiteFormat(Format):
    """``<name>.tflite`` and ``<name>_<quantization>.tflite``, converted from the SavedModel.

    Options: ``quantize``, ``calibration_data`` (int8), ``int8_io``, ``allow_flex``; a
    ``<name>_mediapipe.tflite`` is derived for image classifiers, WordPiece text
    classifiers and waveform audio classifiers when MediaPipe is installed (:func:`tflite_metadata.unsupported_reason`).
    """

    name = "tflite"
    suffix = ".tflite"
    reads_saved_model = True  # the fallback conversion and MediaPipe's text file read one

    def check_options(self, options: Options, formats: list[str]) -> None:
        quantize, int8_io = options.quantize, options.int8_io
        for q in quantize:
            if q not in QUANTIZATIONS:
                raise choice_error("quantize", q, QUANTIZATIONS)
        if quantize and set(quantize) != {"float32"} and self.name not in formats:
            raise ConfigError(
                f"quantize={quantize!r} applies to TFLite files only, and formats={formats!r} "
                "has no 'tflite'. Add 'tflite' to formats or drop quantize."
            )
        if "int8" in quantize and options.calibration_data is None:
            raise ConfigError(
                "quantize: 'int8' needs calibration_data (a few hundred representative raw "
                "inputs) to set the integer ranges."
            )
        if int8_io not in INT8_IO:
            raise choice_error("int8_io", int8_io, INT8_IO)
        if int8_io != "float32" and "int8" not in quantize:
            raise ConfigError(
                f"int8_io={int8_io!r} sets the input/output type of int8 TFLite files; add "
                "'int8' to quantize or leave int8_io='float32'."
            )
        if options.allow_flex and self.name not in formats:
            raise ConfigError("allow_flex=True applies to TFLite only; add 'tflite' to formats.")

    def require(self) -> None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as exc:
            raise missing_dependency(
                "ai_edge_litert", "ai-edge-litert", "TFLite export (validation)"
            ) from exc

    def optional_files(self, out: Path, name: str) -> list[Path]:
        # every precision: a file of another precision left beside this export's files
        # would come from another model
        kinds = (*QUANTIZATIONS, tflite_metadata.MEDIAPIPE_SUFFIX)
        return [out / file_name(name, q) for q in kinds]

    def targets(self, out: Path, name: str, options: Options, meta: dict) -> dict[str, Path]:
        paths = {q: out / file_name(name, q) for q in precisions(options.quantize)}
        if tflite_metadata.supports(meta) and tflite_metadata.available():
            mp = tflite_metadata.MEDIAPIPE_SUFFIX
            paths[mp] = out / file_name(name, mp)
        return paths

    def artifacts(self, job: Job) -> Iterator[Staged]:
        make = _in_parts(job) or _whole_converter(job)
        for q in precisions(job.options.quantize):
            path = job.staging / file_name(job.name, q)
            yield Staged(q, path, partial(self._write, job, make, q, path), load=_loader(job, q))
        _release(make)  # every precision is written: free the source's disk now
        if (self.name, tflite_metadata.MEDIAPIPE_SUFFIX) in job.targets:
            yield self._mediapipe(job)

    @staticmethod
    def _write(job: Job, make: Converter, q: str, path: Path) -> dict[str, Any]:
        details = make(job, q, path)
        with _mapped(path) as content:  # read in place, not copied
            if tflite_metadata.uses_buffer_offsets(content):
                details["weights"] = "after the flatbuffer (buffer offsets: a large model)"
            ops, _custom = list_ops(content)
        details["ops"] = len(ops)
        if q == "int8":
            details["io_type"] = job.options.int8_io
        return details

    def notes(self, name: str, options: Options, meta: dict) -> list[str]:
        """Why a classifier (image, text, audio) gets no ``<name>_mediapipe.tflite``."""
        kind = tflite_metadata.KINDS.get((meta.get("input") or {}).get("name"))
        if kind is None:
            return []
        if meta.get("task") not in ("classification", "binary", "multilabel"):
            return []
        reason = tflite_metadata.unsupported_reason(meta)
        if reason is None and not tflite_metadata.available():
            reason = "the mediapipe package is not installed (pip install mediapipe)"
        mp = file_name(name, tflite_metadata.MEDIAPIPE_SUFFIX)
        return [] if reason is None else [f"no {mp} (MediaPipe {kind}): {reason}"]

    def _mediapipe(self, job: Job) -> Staged:
        """``<name>_mediapipe.tflite``: image/audio copy of the float32 file, or text conversion."""
        mp = tflite_metadata.MEDIAPIPE_SUFFIX
        path = job.staging / file_name(job.name, mp)
        scores = tflite_metadata.SCORES_OUTPUT
        kind = tflite_metadata.KINDS[job.prepared.meta["input"]["name"]]

        def write_mediapipe() -> dict[str, Any]:
            checked: dict[str, Any] = {}
            if kind == "TextClassifier":
                path.write_bytes(_mediapipe_text(job))
                checked = _check_in_mediapipe(job, path)
                kind_note = "TextClassifier, BertTokenizer with vocab.txt"
            elif kind == "AudioClassifier":
                path.write_bytes(_mediapipe_copy(job, kind))
                checked = _check_audio_in_mediapipe(job, path)
                rate = job.prepared.meta["input"].get("sample_rate", 16000)
                kind_note = f"AudioClassifier, AudioProperties {rate} Hz mono"
            else:
                path.write_bytes(_mediapipe_copy(job, kind))
                kind_note = kind
            return {
                "metadata": f"TFLite Metadata (MediaPipe {kind_note})",
                "outputs": [scores],
            } | checked

        return Staged(mp, path, write_mediapipe, reference={scores: job.reference[scores]})

    def load(self, path: Path, num_threads: int | None = None) -> Artifact:
        return TFLiteArtifact(path, num_threads)


#: Why a large model's file gets no MediaPipe copy.
OVER_LIMIT = (
    "the model is too large for one flatbuffer (2 GiB): the converter stored its weights "
    "after it, which MediaPipe's metadata writer does not carry"
)


#: The staging sub-folder of the graph traced for TFLite alone (removed once converted).
TFLITE_SOURCE = "tflite_source"

#: Float32 weight bytes from which whole conversion goes through a SavedModel instead of
#: the frozen function, which holds about ten copies of the weights at once: ResNet-50's
#: (98 MB) TFLite export peaked at 2.80 GB frozen against 1.82 through a SavedModel, over
#: its bar of 2.28, though in 40 s instead of 56 (``python -m bench.export_memory``).
FROZEN_MAX_BYTES = 32 * 2**20

#: ``make(job, precision, path) -> report details``: writes one precision's file.
Converter = Callable[[Job, str, Path], dict[str, Any]]


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[Any]:
    """The file's bytes, mapped read-only (readers of the flatbuffer's tables copy nothing)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        yield view


def _large_depthwise(job: Job) -> contextlib.AbstractContextManager:
    """Trace depthwise convolutions of more than 25 taps (ConvNeXt's 7x7) split into parts
    LiteRT's XNNPACK runs in one pass (:func:`kerastl.core.convs.split_depthwise`;
    ConvNeXt-T int8 354 -> 45 ms, float32 120 -> 80 ms at batch 1,
    ``python -m bench.int8_latency``); nothing for other models."""
    from kerastl.core.convs import has_large_depthwise, large_depthwise_split

    return (
        large_depthwise_split()
        if has_large_depthwise(job.prepared.model)
        else (contextlib.nullcontext())
    )


def _for_tracing(job: Job) -> Any:
    """``job.prepared``, whose trace the Keras reference outputs came from, or for a model
    with large depthwise convolutions a copy that traces anew (split inside
    :func:`_large_depthwise`)."""
    from kerastl.core.convs import has_large_depthwise

    split = has_large_depthwise(job.prepared.model)
    return dataclasses.replace(job.prepared, _fn=None) if split else job.prepared


def _convert_args(job: Job, q: str) -> dict[str, Any]:
    int8_io = job.options.int8_io if q == "int8" else "float32"
    return {"calibration": job.x_cal, "int8_io": int8_io, "allow_flex": job.options.allow_flex}


def _whole_converter(job: Job) -> Converter:
    """Each precision converted whole by TensorFlow's converter, from the traced inference
    function with its variables frozen (:func:`convert_function`; the function the Keras
    reference outputs came from, unless the model has large depthwise convolutions
    (:func:`_large_depthwise`): those are traced again). A precision that path fails is
    converted from a SavedModel (:func:`_saved_model_converter`), as are the rest; so are
    models of :data:`FROZEN_MAX_BYTES` of weights or more.
    """
    if _weight_bytes(job) >= FROZEN_MAX_BYTES:
        return _saved_model_converter(job)
    with _large_depthwise(job):
        concrete = _for_tracing(job).tf_function().get_concrete_function()
    fallback: list[tuple[Converter, str]] = []

    def make(job: Job, q: str, path: Path) -> dict[str, Any]:
        if not fallback:
            try:
                content = convert_function(concrete, q, **_convert_args(job, q))
                path.write_bytes(embed_metadata(content, job.prepared.meta))
                return {}
            except Exception as exc:  # noqa: BLE001 - any failure: the SavedModel path
                why = f"the frozen function's conversion failed: {one_line(exc, 300)}"
                log.info("  tflite %s: converting from a SavedModel (%s)", q, why)
                fallback.append((_saved_model_converter(job), why))
        convert_saved, why = fallback[0]
        return convert_saved(job, q, path) | {"conversion": f"from a SavedModel ({why})"}

    make.release = lambda: [_release(f) for f, _ in fallback]  # type: ignore[attr-defined]
    return make


def _saved_model_converter(job: Job) -> Converter:
    """Each precision converted whole from a SavedModel: the staged one when there is
    one, unless the model has large depthwise convolutions, which are traced again."""
    from kerastl.export.formats.saved_model import write_graph

    source = job.staging / "saved_model"
    prepared = _for_tracing(job)
    if prepared is not job.prepared or not (source / "saved_model.pb").exists():
        source = job.staging / TFLITE_SOURCE  # (or no passing SavedModel staged)
        with _large_depthwise(job):
            write_graph(prepared, source, extras=False)

    def make(job: Job, q: str, path: Path) -> dict[str, Any]:
        content = convert(source, q, job.prepared.modality.input_name, **_convert_args(job, q))
        path.write_bytes(embed_metadata(content, job.prepared.meta))
        return {}

    if source.name == TFLITE_SOURCE:
        make.release = partial(shutil.rmtree, source, ignore_errors=True)  # type: ignore[attr-defined]
    return make


def _release(make: Converter) -> None:
    """Delete the SavedModel a whole converter traced for TFLite alone (if it made one)."""
    release = getattr(make, "release", None)
    if release is not None:
        release()


def _whole(job: Job, q: str, path: Path, why: str) -> dict[str, Any]:
    """One precision converted whole, where conversion in parts could not make it."""
    log.warning("  tflite %s: converting the model whole (%s)", q, why)
    make = _whole_converter(job)
    try:
        details = make(job, q, path)
    finally:
        _release(make)
    return details | {"conversion": f"whole: {why}"}


def _int8_from_joined(job: Job, path: Path) -> None:
    """The int8 file, calibrated and quantized from the staged float32 file of the parts.

    Raises:
        ExportError: no float32 file is staged, it keeps its weights after the flatbuffer
            (TensorFlow's calibrator drops those), or the calibrator failed.
    """
    from kerastl.export.formats import tflite_parts

    done = job.staging / file_name(job.name, "float32")
    if not done.exists():
        raise ExportError("int8 is calibrated from the float32 file, which was not written")
    with _mapped(done) as content:
        if tflite_metadata.uses_buffer_offsets(content):
            raise ExportError(
                "the float32 file keeps its weights after the flatbuffer (over 2 GiB), "
                "which TensorFlow's calibrator drops"
            )
    try:
        content = tflite_parts.quantize_int8(done, job.x_cal, job.options.int8_io)
    except Exception as exc:  # noqa: BLE001 - the calibrator raises RuntimeError/ValueError
        raise ExportError(f"int8 quantization of the joined file failed: {exc}") from exc
    path.write_bytes(content)  # with the float32 file's metadata, kerastl's included


def _weight_bytes(job: Job) -> int:
    """The model's float32 weight bytes."""
    return sum(int(np.prod(w.shape)) * 4 for w in job.prepared.model.weights)


def _loader(job: Job, q: str) -> Callable[[], Artifact] | None:
    """How a large model's float16 file is loaded for validation (:mod:`.tflite_upcast`);
    ``None`` (the file itself in XNNPACK) for other files."""
    from kerastl.export.formats import tflite_parts

    if q != "float16" or _weight_bytes(job) < tflite_parts.PARTS_MIN_BYTES:
        return None
    return partial(UpcastFloat16Artifact, job.staging / file_name(job.name, q))


def _in_parts(job: Job) -> Converter | None:
    """For models of at least :data:`tflite_parts.PARTS_MIN_BYTES` of weights: each
    precision converted a part at a time and joined (:mod:`.tflite_parts`), int8 quantized
    from the float32 file; ``None`` (convert whole) for smaller models or graphs without
    a cut."""
    from kerastl.export.formats import tflite_parts

    weights = _weight_bytes(job)
    if weights < tflite_parts.PARTS_MIN_BYTES:
        return None
    try:
        prepared = dataclasses.replace(job.prepared, _fn=None)
        with _large_depthwise(job):
            concrete = prepared.tf_function().get_concrete_function()
        graph = tflite_parts.freeze_light(concrete)
        parts = tflite_parts.plan(graph, -(-weights // tflite_parts.PART_BYTES))
    except Exception as exc:  # noqa: BLE001 - a graph the parts cannot take: convert whole
        log.warning("  tflite: no conversion in parts (%s); converting the model whole", exc)
        return None
    if not parts:
        log.info("  tflite: no cut in the graph; converting it whole")
        return None
    note = {"conversion": f"in {len(parts)} parts, joined (large model)"}
    entries = {METADATA_NAME: metadata_json(job.prepared.meta)}
    flex = job.options.allow_flex

    def make(job: Job, q: str, path: Path) -> dict[str, Any]:
        try:
            if q == "int8":
                _int8_from_joined(job, path)
                return note | {"quantized": "from the joined float32 file"}
            tflite_parts.write(graph, parts, q, path, entries, flex)
            return dict(note)
        except Exception as exc:  # noqa: BLE001 - any failure of the parts: convert whole
            return _whole(job, q, path, f"in parts: {exc}")

    return make


def _mediapipe_copy(job: Job, kind: str) -> bytes:
    """The staged float32 file with only ``probabilities`` and image or audio metadata."""
    meta = job.prepared.meta
    content = (job.staging / file_name(job.name, "float32")).read_bytes()
    if tflite_metadata.uses_buffer_offsets(content):
        raise NotWritten(OVER_LIMIT)
    head = f"kerastl {meta.get('backbone')} classifier, {len(meta['class_names'])} classes; "
    if kind == "AudioClassifier":
        rate = int(meta["input"].get("sample_rate", 16000))
        samples = meta["input"]["shape"][0]
        description = f"{head}mono waveform in [-1, 1], {samples} samples at {rate} Hz."
        return tflite_metadata.mediapipe_audio_classifier(
            content, meta["class_names"], description, rate
        )
    description = f"{head}raw 0-255 RGB in (preprocessing in the graph)."
    return tflite_metadata.mediapipe_classifier(content, meta["class_names"], description)


def _check_audio_in_mediapipe(job: Job, path: Path) -> dict[str, Any]:
    """Run MediaPipe's ``AudioClassifier`` (its own audio pipeline) on the validation audio.

    The staged validation feeds the file directly; this feeds MediaPipe the waveforms
    (plus a few chirps) as ``AudioData`` at the model's sample rate. A clip MediaPipe
    scores differently from Keras leaves the file out (:class:`NotWritten`).
    """
    modality = job.prepared.modality
    waves = np.concatenate([np.asarray(job.x_val, np.float32), modality.sample_inputs(4, seed=7)])
    scores = tflite_metadata.SCORES_OUTPUT
    want = np.asarray(job.prepared.predict(waves)[scores], np.float32)
    try:
        got = tflite_metadata.mediapipe_audio_scores(path, waves, modality.sample_rate)
    except Exception as exc:  # noqa: BLE001 - MediaPipe raises ValueError/RuntimeError
        raise NotWritten(f"MediaPipe's AudioClassifier could not run the file: {exc}") from exc
    return _agrees_with_keras(
        job, got, want, lambda i: f"MediaPipe's AudioClassifier scores waveform {i}"
    )


def _agrees_with_keras(
    job: Job, got: np.ndarray, want: np.ndarray, scored: Callable[[int], str], why: str = ""
) -> dict[str, Any]:
    """MediaPipe's scores ``got`` vs Keras' ``want`` (one row per input), or :class:`NotWritten`.

    ``scored(i)`` names input ``i`` in the message; ``why`` is appended to it.
    """
    from kerastl.export.validate import tolerance_for

    diff = np.abs(got - want).max(axis=1)
    limit = tolerance_for("tflite/mediapipe", job.options.tolerances).max_rel_err
    bad = np.flatnonzero((diff > limit) | (got.argmax(1) != want.argmax(1)))
    if bad.size:
        i = int(bad[0])
        raise NotWritten(
            f"{scored(i)} differently from Keras (max abs diff {diff[i]:.2g}, top-1 "
            f"{int(got[i].argmax())} vs {int(want[i].argmax())}){why}"
        )
    return {"mediapipe_checked": len(got), "mediapipe_max_abs_diff": float(diff.max())}


def _check_in_mediapipe(job: Job, path: Path) -> dict[str, Any]:
    """Run MediaPipe's ``TextClassifier`` (its own tokenizer) on raw sentences vs Keras.

    The staged validation feeds kerastl's token ids; this feeds MediaPipe the strings.
    A sentence MediaPipe scores differently leaves the file out (:class:`NotWritten`).
    """
    from kerastl.export.modalities.text import PROBE_SENTENCES

    texts = job.options.source_inputs
    if texts is None:
        texts = job.prepared.modality.sample_texts(16)
    texts = np.asarray([*texts, *PROBE_SENTENCES], dtype=object)
    scores = tflite_metadata.SCORES_OUTPUT
    want = np.asarray(job.prepared.predict(job.prepared.modality.tokenize(texts))[scores])
    got = tflite_metadata.mediapipe_text_scores(path, list(texts))
    return _agrees_with_keras(
        job,
        got,
        want,
        lambda i: f"MediaPipe's own tokenizer scores {str(texts[i])[:80]!r}",
        "; MediaPipe's WordPiece skips Unicode normalisation",
    )


def _mediapipe_text(job: Job) -> bytes:
    """The text classifier on MediaPipe's three BERT inputs, converted, with metadata."""
    from kerastl.export.modalities.text import BERT_INPUTS_LAYER

    meta = job.prepared.meta
    source = job.staging / "mediapipe_source"
    write_bert_graph(job.prepared.modality.model.get_layer(BERT_INPUTS_LAYER), source)
    content = convert(source, "float32", "ids", allow_flex=job.options.allow_flex)
    if tflite_metadata.uses_buffer_offsets(content):
        raise NotWritten(OVER_LIMIT)
    content = embed_metadata(content, meta)
    tokenizer = meta["tokenizer"]
    description = (
        f"kerastl {meta.get('backbone')} text classifier, {len(meta['class_names'])} classes; "
        f"{tokenizer['class_name']} (WordPiece, lowercased), {tokenizer['sequence_length']} "
        "tokens with [CLS] and [SEP]."
    )
    return tflite_metadata.mediapipe_text_classifier(
        content, meta["class_names"], description, tokenizer["vocabulary"]
    )


def write_bert_graph(model: Any, path: Path) -> None:
    """SavedModel of a three-input text model (``ids``, ``mask``, ``segment_ids``)."""
    import tensorflow as tf

    from kerastl.export._trace import builtin_ops
    from kerastl.export.formats.saved_model import write_archive

    length = model.inputs[0].shape[1]

    def serve(ids, mask, segment_ids):
        with builtin_ops():
            out = model([ids, mask, segment_ids], training=False)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return {tflite_metadata.SCORES_OUTPUT: tf.cast(out, tf.float32)}

    spec = [tf.TensorSpec((None, length), tf.int32, name=n) for n in tflite_metadata.TEXT_INPUTS]
    write_archive(model, {"serving_default": (serve, spec)}, path)


def cpu_threads() -> int:
    """CPU cores this process may run on: the TFLite interpreter's thread count.

    LiteRT's own default is one thread; TensorFlow and ONNX Runtime use every core, and so
    does kerastl's interpreter, so validation and the latency of each format are measured
    alike (ConvNeXt-B at batch 1 on 2 cores: 465 ms on one thread, 232 ms on two).

    Example:
        >>> cpu_threads() >= 1
        True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _kernels(kinds: Any, xnnpack: bool) -> Any:
    """The interpreter's op resolver: LiteRT's default (XNNPACK applied) or builtin only."""
    return kinds.AUTO if xnnpack else kinds.BUILTIN_WITHOUT_DEFAULT_DELEGATES


class TFLiteArtifact(Artifact):
    """A ``.tflite`` file in LiteRT's interpreter (TensorFlow's, for Flex ops).

    Args:
        path: The file.
        num_threads: Interpreter threads; ``None`` takes :func:`cpu_threads`.
        xnnpack: ``False`` runs LiteRT's builtin kernels only (no default delegate).
        mapped: LiteRT maps the file instead of reading it into memory (weights after
            the flatbuffer are then not resident twice while XNNPACK packs them).

    Raises:
        ConfigError: ``num_threads`` is not a positive integer.
    """

    format = "tflite"

    def __init__(
        self, path: Path, num_threads: int | None = None, xnnpack: bool = True, mapped: bool = False
    ):
        with _mapped(path) as view:
            self.ops, self.custom_ops = list_ops(view)
            meta = read_metadata(view)
        super().__init__(path, meta, self.custom_ops)
        # mapped: LiteRT maps the file; else it runs from a copy in memory, and the file
        # can be moved (publishing replaces it) or deleted while this artifact lives
        source = {"model_path": str(path)} if mapped else {"model_content": path.read_bytes()}
        check_positive_int("num_threads", num_threads, none_means=f"every core: {cpu_threads()}")
        self.num_threads = num_threads or cpu_threads()
        if any(op.startswith("Flex") for op in self.custom_ops):
            import tensorflow as tf  # its interpreter links the Flex delegate

            kernels = tf.lite.experimental.OpResolverType
            self._interp = tf.lite.Interpreter(
                **source,
                num_threads=self.num_threads,
                experimental_op_resolver_type=_kernels(kernels, xnnpack),
            )
            self.runtime = "tf.lite.Interpreter (Flex delegate)"
        else:
            try:
                from ai_edge_litert.interpreter import Interpreter, OpResolverType
            except ImportError as exc:
                raise missing_dependency("ai_edge_litert", "ai-edge-litert", "TFLite") from exc
            self._interp = Interpreter(
                **source,
                num_threads=self.num_threads,
                experimental_op_resolver_type=_kernels(OpResolverType, xnnpack),
            )
            self.runtime = "ai_edge_litert.Interpreter"
        if not xnnpack:
            self.runtime += " (builtin kernels, no XNNPACK)"
        self.runtime += f", {self.num_threads} thread{'s' if self.num_threads > 1 else ''}"
        self._interp.allocate_tensors()  # every operator prepares now: a bad file fails here
        self._runner = self._interp.get_signature_runner("serving_default")
        self._inputs = self._runner.get_input_details()
        self._outputs = self._runner.get_output_details()
        # MediaPipe's text file: token ids in, mask and segment ids made here as MediaPipe does
        self._bert = set(self._inputs) == set(tflite_metadata.TEXT_INPUTS)
        self._feed_name = "ids" if self._bert else self.input_name
        if self._feed_name not in self._inputs and len(self._inputs) == 1:
            # No kerastl metadata (a file made elsewhere): its one input is the feed.
            self._feed_name = next(iter(self._inputs))

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._inputs[self._feed_name]["dtype"]).name

    def _bert_feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.ascontiguousarray(x, dtype=np.int32)
        pad = int((self.metadata.get("tokenizer") or {}).get("pad_token_id", 0))
        mask = (ids != pad).astype(np.int32)
        return {"ids": ids, "mask": mask, "segment_ids": np.zeros_like(ids)}

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._bert:
            return {k: np.array(v) for k, v in self._runner(**self._bert_feed(x)).items()}
        detail = self._inputs[self._feed_name]
        dtype = np.dtype(detail["dtype"])
        scale, zero = detail["quantization"]
        if dtype.kind in "iu" and scale:  # quantized input (not token ids)
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        out = self._runner(**{self._feed_name: np.ascontiguousarray(x, dtype=dtype)})
        result = {}
        for name, value in out.items():
            scale, zero = self._outputs[name]["quantization"]
            if scale and np.dtype(value.dtype).kind in "iu":
                value = (value.astype(np.float32) - zero) * scale
            result[name] = np.array(value)
        return result


class UpcastFloat16Artifact(TFLiteArtifact):
    """A large float16 file as validation loads it (:mod:`.tflite_upcast`): the file itself
    loaded and its tensors allocated in LiteRT (its operators resolve; nothing is run, so
    its weights are not expanded), then its float32 upcast in XNNPACK, which computes what
    XNNPACK computes on the file (bit for bit), at a float32 file's memory.

    Args:
        path: The float16 file.
        num_threads: Interpreter threads; ``None`` takes every core.
    """

    def __init__(self, path: Path, num_threads: int | None = None):
        from kerastl.export.formats.tflite_upcast import upcast

        itself = TFLiteArtifact(path, num_threads, xnnpack=False, mapped=True)
        del itself
        upcast_path = path.with_name(path.stem + "_as_float32.tflite")
        try:
            converted = upcast(path, upcast_path)
            super().__init__(upcast_path, num_threads, mapped=True)
        finally:
            with contextlib.suppress(OSError):  # mapped (Windows): the staging folder goes
                upcast_path.unlink(missing_ok=True)
        self.path = path
        self.runtime += (
            f", on the file's float32 upcast ({converted} float16 weights converted exactly, "
            "their DEQUANTIZE removed: XNNPACK's arithmetic on the file, bit for bit, at a "
            "float32 file's memory); the file itself loaded and allocated in LiteRT, not run"
        )
