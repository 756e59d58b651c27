"""Validation of a large float16 TFLite file at the memory a float32 file takes.

A float16 file holds float16 weights, each read through a ``DEQUANTIZE`` operator. On a
CPU, LiteRT's XNNPACK runs it in float32: loading it, XNNPACK converts every weight to
float32, keeps that copy and packs another, so the file, the copy, the packed weights and
a transient while packing are resident at once. ConvNeXt-L's 0.39 GB float16 file takes
3.0 GB in XNNPACK; its 0.78 GB float32 file 1.83 (fresh processes). Inside an export that
also holds the model, that step alone went over issue 19's bar (3 x weights + 2 GB) for
ConvNeXt-L, ViT-L and BERT-L.

For models of at least :data:`kerastl.export.formats.tflite_parts.PARTS_MIN_BYTES`
float32 weight bytes, kerastl validates the float16 file in two steps instead:

1. the file itself is loaded in LiteRT and its tensors allocated (every operator resolves
   and prepares; it is not run: running it, even in LiteRT's builtin kernels, expands its
   weights to float32 and peaked at 2 x the float32 weights, ConvNeXt-L's file 1.98 GB);
2. its :func:`upcast` (each float16 weight written as float32 in place of its
   ``DEQUANTIZE``, an exact conversion) runs in XNNPACK on every validation input: the
   arithmetic XNNPACK runs on the float16 file on a CPU, bit for bit (ConvNeXt-L's file:
   equal outputs on two images; ``tests/test_tflite_upcast.py``), at a float32 file's
   memory (ConvNeXt-L: 1.91 GB against 2.9).

The report's ``runtime`` says so (:class:`kerastl.export.formats.tflite.UpcastFloat16Artifact`).
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.export.formats import tflite_parts


def upcast(source: Path, target: Path) -> int:
    """Write ``source`` to ``target`` with its float16 weights as float32 constants.

    Every ``DEQUANTIZE`` of a float16 constant is removed and its output tensor gets
    the float32 values (float16 -> float32 is exact); nothing else changes. The weights
    go after the flatbuffer (buffer offsets), streamed one at a time: the process holds
    one weight, not the file. Returns how many weights were converted.

    Example:
        >>> import tempfile, tensorflow as tf
        >>> from ai_edge_litert.interpreter import Interpreter
        >>> m = tf.Module()
        >>> m.w = w = tf.Variable(np.arange(4096, dtype=np.float32).reshape(64, 64) / 7)
        >>> f = tf.function(lambda x: {"y": x @ w}, input_signature=[tf.TensorSpec((1, 64))])
        >>> conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], m)
        >>> conv.optimizations = [tf.lite.Optimize.DEFAULT]
        >>> conv.target_spec.supported_types = [tf.float16]
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "f16.tflite").write_bytes(conv.convert())
        >>> upcast(d / "f16.tflite", d / "f32.tflite")
        1
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> ops = lambda p: schema.Model.GetRootAs(p.read_bytes(), 0).Subgraphs(0).OperatorsLength()
        >>> ops(d / "f16.tflite"), ops(d / "f32.tflite")  # the DEQUANTIZE is gone
        (2, 1)
        >>> x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
        >>> run = lambda p: Interpreter(model_path=str(p)).get_signature_runner()(x=x)["y"]
        >>> bool(np.array_equal(run(d / "f16.tflite"), run(d / "f32.tflite")))  # in XNNPACK
        True
    """
    from ai_edge_litert import schema_py_generated as schema

    with open(source, "rb") as f:  # the mapping outlives the file object
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    model = schema.ModelT.InitFromPackedBuf(view, 0)  # weights stay views of the mapping
    _map_outside_buffers(model, view)
    pending = _drop_dequantize(model)
    converted = len(pending)
    tail = target.with_name(target.name + ".weights")
    try:
        _write_weights(model, pending, tail)
        tflite_parts.write_with_offsets(model, target, tail)
    finally:
        tail.unlink(missing_ok=True)
    return converted


def _map_outside_buffers(model: Any, view: mmap.mmap) -> None:
    """Weights a large file keeps after its flatbuffer become views of ``view``; the
    file's ``buffer_location`` entry goes (the new file writes its own)."""
    from kerastl.export.formats.tflite_metadata import BUFFER_LOCATION

    for buf in model.buffers:
        if buf.offset > 1:
            buf.data = np.frombuffer(view, np.uint8, count=buf.size, offset=buf.offset)
            buf.offset = buf.size = 0
    model.metadata = [e for e in model.metadata or [] if e.name != BUFFER_LOCATION]


def _drop_dequantize(model: Any) -> dict[int, np.ndarray]:
    """Remove each ``DEQUANTIZE`` of a float16 constant; its output tensor reads a new
    buffer. Returns new buffer index -> the float16 bytes it is to hold."""
    from ai_edge_litert import schema_py_generated as schema

    codes = [
        max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes
    ]  # builtin codes over 127 are in builtinCode only
    pending: dict[int, np.ndarray] = {}
    for sub in model.subgraphs:
        kept, sources = [], set()
        for op in sub.operators:
            src = sub.tensors[op.inputs[0]] if op.inputs is not None and len(op.inputs) else None
            data = None if src is None else model.buffers[src.buffer].data
            if (
                codes[op.opcodeIndex] != schema.BuiltinOperator.DEQUANTIZE
                or src.type != schema.TensorType.FLOAT16
                or src.sparsity is not None
                or data is None
                or not len(data)
            ):
                kept.append(op)
                continue
            model.buffers.append(schema.BufferT())
            sub.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
            pending[len(model.buffers) - 1] = data
            sources.add(int(op.inputs[0]))
        sub.operators = kept
        read = {int(i) for op in kept for i in op.inputs if i >= 0}
        read |= {int(i) for i in ([] if sub.outputs is None else sub.outputs)}
        for i in sources - read:  # float16 copies no operator reads any more
            sub.tensors[i].buffer = 0
    return pending


def _write_weights(model: Any, pending: dict[int, np.ndarray], tail: Path) -> None:
    """Each weight a tensor still reads, appended to ``tail`` (float16 ones as float32);
    its buffer then has its place there and its size. Weights no tensor reads any more
    (the float16 copies) are left out; metadata stays in the flatbuffer."""
    from kerastl.export.formats.tflite_metadata import TAIL_ALIGN, drop_mapped_pages

    read = {t.buffer for sub in model.subgraphs for t in sub.tensors}
    metadata = {entry.buffer for entry in model.metadata or []}
    with open(tail, "wb") as f:
        for i, buf in enumerate(model.buffers):
            if i in metadata:
                continue
            data = buf.data
            if i in pending:
                data = pending.pop(i).view(np.float16).astype("<f4").view(np.uint8)
            buf.data, buf.offset, buf.size = None, 0, 0
            if i not in read or data is None or not len(data):
                continue
            f.write(bytes(-f.tell() % TAIL_ALIGN))
            buf.offset, buf.size = f.tell(), len(data)
            f.write(np.ascontiguousarray(data).data)
            drop_mapped_pages(data)
