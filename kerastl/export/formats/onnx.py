"""ONNX files through tf2onnx, with the fixes Keras' own ``format="onnx"`` lacks.

Keras 3.15 calls ``tf2onnx.convert.from_function`` on the model's traced call.
Measured failures and what this module does instead:

* **Leftover ``StatefulPartitionedCall``** (ConvNeXt): Keras runs grouped
  convolutions inside ``tf.function(jit_compile=True)``, which grappler will not
  inline. We freeze the graph ourselves and drop the XLA attributes so the
  calls inline into plain ``Conv2D`` nodes.
* **``Erfc`` from exact GELU** (ConvNeXt): no ONNX mapping; rewritten as
  ``1 - Erf(x)`` in the TensorFlow graph before conversion.
* **Variables left as graph inputs** (EfficientNet's ``Normalization`` mean and
  variance): every captured variable and tensor is frozen to a constant with
  ``convert_variables_to_constants_v2``; a graph whose only input is not the
  model input is refused.
* **Transpose optimiser crash** (MobileNetV3: ``max() arg is an empty sequence``
  on a scalar ``Add``): a patched optimiser leaves those adds alone, so the
  other transposes are still removed.
* tf2onnx keeps unknown ops silently (``continue_on_error``); here any op
  outside the standard ONNX domains fails the export.

The batch axis is named ``batch`` on every input and output; kerastl's
metadata goes into ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerastl.core.patching import patched
from kerastl.errors import ConfigError, ExportError, check_positive_int, missing_dependency
from kerastl.export._freeze import freeze
from kerastl.export.formats.base import (
    Artifact,
    Format,
    Job,
    NotWritten,
    Options,
    Staged,
    objects_alive_now_uncollected,
    release_memory,
)
from kerastl.export.formats.onnx_strings import STRINGS_SUFFIX

if TYPE_CHECKING:
    from kerastl.export._trace import Prepared

log = logging.getLogger("kerastl.export")
#: Precision key of the strings-input file (``<name>_strings.onnx``, text models).

#: Opsets kerastl tests and accepts; tf2onnx 1.17 writes up to 18.
OPSETS = tuple(range(13, 19))
#: Opset used when none is asked for.
DEFAULT_OPSET = 17
#: Prefix of ``metadata_props`` keys; the full metadata JSON is under ``kerastl``.
METADATA_KEY = "kerastl"
#: ONNX domains whose ops every runtime knows.
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
#: Most tensor bytes kept inside the ``.onnx`` file itself. protobuf cannot serialise a
#: message of 2 GiB or more, so a bigger graph keeps its weights in ``<file>.data``
#: beside it (ONNX external data; onnxruntime and onnx.checker read it from the path).
SINGLE_FILE_LIMIT = 2**31 - 2**26


def tensor_bytes(model_proto) -> int:
    """Bytes of the graph's initializers and constant-node tensors."""
    total = sum(t.ByteSize() for t in model_proto.graph.initializer)
    for node in model_proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                total += attr.t.ByteSize()
    return total


def data_file(path: Path) -> Path:
    """Where the weights of a graph too big for one file go: ``<name>.onnx.data``."""
    return path.with_name(path.name + ".data")


def replace_file(source: Path, target: Path) -> None:
    """Move an exported file over ``target``, with its ``<name>.data`` weights if any.

    The weights move first, so the new graph never points at a missing file; a
    stale ``.data`` of a large file this one replaced is removed.
    """
    data, target_data = data_file(source), data_file(target)
    has_data = data.exists()
    if has_data:
        os.replace(data, target_data)
    os.replace(source, target)
    if source.suffix == ".onnx" and not has_data and target_data.exists():
        target_data.unlink()


def save(model_proto, path: Path) -> list[Path]:
    """Write ``model_proto`` to ``path``, with its weights beside it if it is over 2 GiB.

    Returns the files written. Over :data:`SINGLE_FILE_LIMIT` the tensors move out of
    ``model_proto`` into :func:`data_file` (the proto is left without them).

    Example:
        >>> import onnx
        >>> from onnx import helper, TensorProto
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Identity", ["x"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        >>> import tempfile; d = tempfile.mkdtemp()
        >>> [p.name for p in save(helper.make_model(graph), Path(d) / "m.onnx")]
        ['m.onnx']
    """
    import onnx

    path = Path(path)
    if tensor_bytes(model_proto) <= SINGLE_FILE_LIMIT:
        write_in_parts(model_proto, path)
        return [path]
    data = data_file(path)
    onnx.save_model(
        model_proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return [path, data]


def write_in_parts(model_proto, path: Path) -> None:
    """Write ``model_proto`` as ``onnx.save`` does, one initializer at a time.

    ``onnx.save`` serialises the whole model into one bytes object first, a copy of every
    weight (twice, while protobuf hands its buffer to Python): ConvNeXt-B +0.9 GB. The
    protobuf wire format of a message is its fields' encodings one after another, in
    any order, so the graph is written as its other fields, then each initializer as a
    field of its own; a reader parses the same message.

    Example:
        >>> import onnx, tempfile
        >>> from onnx import helper, numpy_helper
        >>> w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
        >>> graph = helper.make_graph(
        ...     [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        ...     [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])], [w])
        >>> model = helper.make_model(graph)
        >>> path = Path(tempfile.mkdtemp()) / "m.onnx"
        >>> write_in_parts(model, path)
        >>> onnx.load(str(path)) == model
        True
    """
    import onnx

    graph = model_proto.graph
    model_head, graph_head = onnx.ModelProto(), onnx.GraphProto()
    _copy_fields(model_proto, model_head, skip="graph")
    _copy_fields(graph, graph_head, skip="initializer")
    graph_field = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    init_field = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    sizes = [t.ByteSize() for t in graph.initializer]
    graph_size = graph_head.ByteSize() + sum(
        len(_key(init_field)) + len(_varint(n)) + n for n in sizes
    )
    with open(path, "wb") as fh:
        fh.write(model_head.SerializeToString())
        fh.write(_key(graph_field) + _varint(graph_size))
        fh.write(graph_head.SerializeToString())
        for tensor, size in zip(graph.initializer, sizes):
            fh.write(_key(init_field) + _varint(size))
            fh.write(tensor.SerializeToString())


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of protobuf message ``source`` into ``target`` but ``skip``."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field (protobuf 5 and 6 alike)
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _key(field_number: int) -> bytes:
    """Protobuf key of a length-delimited field (wire type 2)."""
    return _varint(field_number << 3 | 2)


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative ``n``."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def check_opset(opset: int | None) -> int:
    """Validate ``opset`` against :data:`OPSETS`; ``None`` gives :data:`DEFAULT_OPSET`.

    Example:
        >>> check_opset(None)
        17
    """
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ConfigError(
            f"opset: got opset={opset!r}; kerastl exports ONNX opsets "
            f"{OPSETS[0]}..{OPSETS[-1]} (default {DEFAULT_OPSET}): older opsets lack ops "
            "the backbones need, newer ones tf2onnx 1.17 cannot write."
        )
    return opset


def require() -> None:
    """Raise :class:`MissingDependencyError` when the ONNX toolchain is missing."""
    for module, pip in (("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
        try:
            __import__(module)
        except ImportError as exc:
            raise missing_dependency(module, pip, "ONNX export") from exc


def _frozen_graph_def(prepared: Prepared):
    """Frozen, XLA-free, Erfc-free GraphDef of the inference function, and its names."""
    import tensorflow as tf

    concrete = prepared.tf_function().get_concrete_function()
    graph_def, converted = freeze(concrete)
    captured = {id(concrete.graph.internal_captures[i]) for i in converted}
    input_names = [
        t.name for t in concrete.inputs if id(t) not in captured and t.dtype != tf.resource
    ]
    output_names = [t.name for t in concrete.outputs]
    if len(input_names) != 1:
        raise ExportError(
            f"ONNX export: the frozen graph has inputs {input_names}; expected only the model "
            "input. A variable or captured tensor was not frozen."
        )
    _strip_xla(graph_def)
    _rewrite_erfc(graph_def)
    return concrete, graph_def, input_names, output_names


def merge_duplicate_constants(graph_def) -> int:
    """Make nodes that read identical ``Const`` tensors read one of them; returns how many went.

    A weight can reach the frozen graph as several equal constants (ALBERT-base's 16 weight
    tensors held one duplicate), and tf2onnx copies the graph at every optimiser pass and
    merges equal constants only at the end. Identical nodes computed from one constant are
    :func:`merge_constant_expressions`'s part.

    Example:
        >>> import tensorflow as tf
        >>> g = tf.Graph()
        >>> with g.as_default():
        ...     a, b = tf.constant([1.0, 2.0], name="a"), tf.constant([1.0, 2.0], name="b")
        ...     _ = tf.add(a, b, name="sum")
        >>> gd = g.as_graph_def()
        >>> merge_duplicate_constants(gd), [list(n.input) for n in gd.node if n.name == "sum"]
        (1, [['a', 'a']])
    """
    import hashlib

    first: dict[tuple[int, bytes], str] = {}
    rename: dict[str, str] = {}
    for node in graph_def.node:
        if node.op == "Const" and not node.input:
            tensor = node.attr["value"].tensor.SerializeToString(deterministic=True)
            key = (node.attr["dtype"].type, hashlib.sha256(tensor).digest())
            if key in first:
                rename[node.name] = first[key]
            else:
                first[key] = node.name
    return _replace_nodes(graph_def, rename)


def _node_of(name: str) -> str:
    """The node an input names: ``^n`` (control input), ``n:1`` and ``n`` all name ``n``."""
    return name[1:] if name.startswith("^") else name.split(":")[0]


def _renamed(name: str, rename: dict[str, str]) -> str:
    """The input ``name`` with its node replaced by ``rename[node]``, port or ``^`` kept."""
    node = _node_of(name)
    if node not in rename:
        return name
    control = name.startswith("^")
    return ("^" if control else "") + rename[node] + name[len(node) + control :]


def _replace_nodes(graph_def, rename: dict[str, str]) -> int:
    """Point every input at ``rename``'s targets, then delete the renamed nodes; how many went."""
    for node in graph_def.node:
        inputs = [_renamed(i, rename) for i in node.input]
        seen: set[str] = set()
        inputs = [i for i in inputs if not i.startswith("^") or not (i in seen or seen.add(i))]
        if inputs != list(node.input):
            del node.input[:]
            node.input.extend(inputs)
    gone = [i for i, n in enumerate(graph_def.node) if n.name in rename]
    for index in reversed(gone):  # in place: no copy of the remaining weights
        del graph_def.node[index]
    return len(gone)


def bypass_constant_identities(graph_def, keep=()) -> int:
    """Make readers of ``Identity(Const)`` read the constant; returns how many went.

    Freezing turns every variable read into an ``Identity`` of a constant, and tf2onnx's
    constant folding (``compute_const_folding_using_tf``) computes each of those in
    TensorFlow: a second copy of every weight, held until folding ends (ConvNeXt-B:
    138 tensors, 350 MB). Nodes named in ``keep`` (the outputs) stay.

    Example:
        >>> import tensorflow as tf
        >>> g = tf.Graph()
        >>> with g.as_default():
        ...     a = tf.constant([1.0, 2.0], name="a")
        ...     x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        ...     _ = tf.add(x, tf.identity(tf.identity(a, name="i1"), name="i2"), name="out")
        >>> gd = g.as_graph_def()
        >>> bypass_constant_identities(gd), [list(n.input) for n in gd.node if n.name == "out"]
        (2, [['x', 'a']])
        >>> with g.as_default():  # an output that is a constant's Identity stays
        ...     _ = tf.identity(a, name="const_out")
        >>> gd = g.as_graph_def()
        >>> bypass_constant_identities(gd, keep=["const_out:0"]), "const_out" in {n.name for n in gd.node}
        (2, True)
    """
    keep = {_node_of(k) for k in keep}  # tensor names ("out:0") name their node
    constant = {n.name for n in graph_def.node if n.op == "Const" and not n.input}
    rename: dict[str, str] = {}
    progress = True
    while progress:  # chains of Identity, in any node order
        progress = False
        for node in graph_def.node:
            if node.op != "Identity" or len(node.input) != 1 or node.name in rename:
                continue
            source = _renamed(node.input[0], rename)
            if node.name not in keep and source.split(":")[0] in constant:
                rename[node.name] = source.split(":")[0]
                progress = True
    return _replace_nodes(graph_def, rename)


def merge_constant_expressions(graph_def, keep=()) -> int:
    """Make identical nodes computed from constants alone one node; returns how many went.

    ALBERT reads its one shared layer's weights in every layer through a per-layer
    ``Identity`` (and ``Reshape``) of the same constant. tf2onnx folds each such node into
    a constant of its own (``compute_const_folding_using_tf``): on ALBERT-base 16 weight
    tensors (47 MB) came out as 74 large ONNX constants (356 MB, 8 distinct values), and
    every optimiser pass copies them. Run after :func:`merge_duplicate_constants`, this
    merges deterministic nodes with the same op, attributes and (constant) inputs, so each
    transform of a shared weight is folded once. Nodes named in ``keep`` stay.

    Example:
        >>> import tensorflow as tf
        >>> g = tf.Graph()
        >>> with g.as_default():
        ...     a = tf.constant([1.0, 2.0], name="a")
        ...     x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        ...     i1, i2 = tf.identity(a, name="i1"), tf.identity(a, name="i2")
        ...     _ = tf.add(x * i1, i2, name="out")
        >>> gd = g.as_graph_def()
        >>> merge_constant_expressions(gd), [list(n.input) for n in gd.node if n.name == "out"]
        (1, [['mul', 'i1']])
    """
    from tensorflow.python.framework import op_def_registry

    constant = {n.name for n in graph_def.node if n.op == "Const" and not n.input}
    keep = {_node_of(k) for k in keep}
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    progress = True
    while progress:  # GraphDef order is not topological: repeat until nothing is added
        progress = False
        for node in graph_def.node:
            if node.name in constant or node.name in rename or not node.input:
                continue
            inputs = tuple(_renamed(i, rename) for i in node.input)
            if any(i.startswith("^") or _node_of(i) not in constant for i in inputs):
                continue
            op_def = op_def_registry.get(node.op)
            if op_def is None or op_def.is_stateful:
                continue
            attrs = tuple(
                (k, node.attr[k].SerializeToString(deterministic=True)) for k in sorted(node.attr)
            )
            key = (node.op, node.device, inputs, attrs)
            progress = True
            if key in first and node.name not in keep:
                rename[node.name] = first[key]
            else:
                first.setdefault(key, node.name)
                constant.add(node.name)
    return _replace_nodes(graph_def, rename)


def _has_calls(graph_def) -> bool:
    """Whether function calls survived the freeze's inlining (XLA-marked functions do)."""
    return any(n.op in ("StatefulPartitionedCall", "PartitionedCall") for n in graph_def.node)


def _inline_calls(graph_def, input_names: list[str], output_names: list[str]):
    """Grappler's function inlining alone, on a GraphDef whose weights are held apart.

    Only for graphs that still call functions once their XLA marks are gone (e.g.
    ConvNeXt's grouped convolutions). tf2onnx runs Grappler with constant folding too,
    which needs the weights in the graph: on ConvNeXt-Base that step peaked at 5.7 GB
    for 0.35 GB of weights. Inlining does not read a constant's value, so it runs on
    the compressed graph (large constants emptied, :func:`convert`) and keeps the
    caller's node names, by which the weights are put back; tf2onnx folds what is
    left to fold.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    config = config_pb2.ConfigProto()
    config.graph_options.infer_shapes = True
    config.graph_options.rewrite_options.optimizers[:] = ["function"]
    # Grappler only needs a graph context for its MetaGraph; importing the GraphDef into
    # it would hold one more copy of the graph.
    with tf.device("/cpu:0"), tf.Graph().as_default():
        meta = tf.compat.v1.train.export_meta_graph(graph_def=graph_def)
        fetch = meta_graph_pb2.CollectionDef()
        fetch.node_list.value.extend(input_names + output_names)
        meta.collection_def["train_op"].CopyFrom(fetch)
        graph_def = tf_optimizer.OptimizeGraph(config, meta)
    release_memory()  # grappler's input graph
    return graph_def


def _strip_xla(graph_def) -> None:
    for fdef in graph_def.library.function:
        for key in ("_XlaMustCompile", "_noinline"):
            if key in fdef.attr:
                del fdef.attr[key]
    for node in graph_def.node:
        if "_XlaMustCompile" in node.attr:
            del node.attr["_XlaMustCompile"]


def _rewrite_erfc(graph_def) -> None:
    """Replace each ``Erfc(x)`` node by ``1 - Erf(x)`` (same output name)."""
    import tensorflow as tf

    for node in list(graph_def.node):
        if node.op != "Erfc":
            continue
        dtype = node.attr["T"].type
        name = node.name
        node.op = "Erf"
        node.name = f"{name}/kerastl_erf"
        one = graph_def.node.add()
        one.name, one.op = f"{name}/kerastl_one", "Const"
        one.attr["dtype"].type = dtype
        one.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(1.0, dtype=tf.as_dtype(dtype)))
        sub = graph_def.node.add()
        sub.name, sub.op = name, "Sub"
        sub.input.extend([one.name, node.name])
        sub.attr["T"].type = dtype


def _optimizers():
    from tf2onnx import optimizer
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    class SafeTransposeOptimizer(TransposeOptimizer):
        """tf2onnx's optimiser, minus its crash on ``Add`` with a scalar constant."""

        def _add_handler(self, trans, node):
            other = node.inputs[1]
            if other.is_const() and other.get_tensor_value(as_list=False).ndim == 0:
                return self._handle_node_having_branches(trans, node)
            return super()._add_handler(trans, node)

    opts = dict(optimizer._get_optimizers())
    opts["optimize_transpose"] = SafeTransposeOptimizer
    return {name: _collecting(factory) for name, factory in opts.items()}


def _collecting(factory):
    """``factory`` that first frees the graphs earlier optimiser passes left behind.

    tf2onnx deep-copies the whole graph (constants included) before every optimiser
    pass and drops the old copy into a reference cycle, which only Python's cyclic
    collector frees. On ViT-B (343 MB of weights) those copies piled up to a 15 GB peak;
    collecting before each pass keeps about two copies alive.
    """

    def make():
        release_memory()  # and hand the freed copies back to the OS
        return factory()

    return make


#: Tensor attributes at least this large are shared, not copied, by the graph copies
#: tf2onnx makes before each optimiser pass (:func:`_sharing_large_tensors`).
SHARED_TENSOR_BYTES = 1 << 16


@contextlib.contextmanager
def _sharing_large_tensors():
    """While converting, ``copy.deepcopy`` of a large tensor attribute returns it as is.

    tf2onnx deep-copies the whole graph before every optimiser pass, so that a pass
    that raises can be undone; the copies held each weight several times (ResNet-50:
    +0.7 GB). A pass never edits a tensor attribute in place: it replaces the node's
    attribute with a new one (``Node.set_tensor_value``), so the copies can share the
    old ones. Registered in ``copy``'s dispatch table for ``AttributeProto`` only, and
    removed afterwards.
    """
    import copy

    import onnx

    def share(attr, memo):
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.ByteSize() >= SHARED_TENSOR_BYTES:
            return attr
        clone = type(attr)()
        clone.CopyFrom(attr)
        return clone

    cls = onnx.AttributeProto
    before = copy._deepcopy_dispatch.get(cls)
    copy._deepcopy_dispatch[cls] = share
    try:
        yield
    finally:
        if before is None:
            copy._deepcopy_dispatch.pop(cls, None)
        else:
            copy._deepcopy_dispatch[cls] = before


@contextlib.contextmanager
def _const_protos_without_values():
    """While converting, a constant node's own NodeProto does not keep a copy of its value.

    tf2onnx keeps each node's attributes twice: in the node (``Node.attr``, which every
    pass reads and ``make_graph`` turns into initializers) and copied into the node's
    NodeProto at every ``update_proto`` (after each optimiser pass and in ``make_graph``),
    which only ``make_graph`` reads, for the nodes that are not constants. For constants
    that copy was one more copy of every weight, copied again by each pass's graph copy
    (ConvNeXt-B: +0.7 GB live through the passes, +0.35 GB more at each). The NodeProto
    of a constant keeps its other attributes.
    """
    from tf2onnx.graph import Node

    original = Node.update_proto

    def update_proto(self, external_tensor_storage=None):
        # Not copied and then deleted: a deleted field's bytes stay in the proto's arena.
        value = self._attr.pop("value", None) if self.type == "Const" else None
        try:
            original(self, external_tensor_storage)
        finally:
            if value is not None:
                self._attr["value"] = value

    with patched((Node, "update_proto", update_proto)):
        yield


@contextlib.contextmanager
def _weights_let_go_once_read(weights: dict[str, bytes]) -> Iterator[None]:
    """While converting, tf2onnx lets go of each weight held apart as soon as it used it.

    ``weights`` (the bytes held apart from the GraphDef) are read by tf2onnx's constant
    folding and then by its node conversion; the main graph's node conversion, their
    last reader, now takes each one out as it makes the node's ONNX tensor, so those
    bytes are freed one by one instead of after the conversion (ViT-L's tf2onnx step:
    5.72 -> 5.31 GB).

    The function is swapped on tf2onnx's module for the block (:func:`patched`): two
    ONNX conversions must not run at once in one process.
    """
    from tf2onnx import tfonnx
    from tf2onnx.tf_loader import is_function

    to_onnx = tfonnx.tensorflow_to_onnx

    class Once(dict):
        def __getitem__(self, key: str) -> Any:
            return self.pop(key)

    def converting(graph, shape_override, const_node_values=None, *args, **kwargs):
        if const_node_values is weights and not is_function(graph):  # the main graph: last
            const_node_values = Once(weights)
            weights.clear()  # the bytes are held by ``Once`` alone now
        return to_onnx(graph, shape_override, const_node_values, *args, **kwargs)

    with patched((tfonnx, "tensorflow_to_onnx", converting)):
        yield


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


#: tf2onnx optimisers to switch off, tried in order when a converted graph misbehaves in
#: onnxruntime. Measured: the reshape + transpose optimisers together break SegFormer (MiT)
#: attention reshapes; without the reshape optimiser the graph is right.
OPTIMIZER_FALLBACKS: tuple[tuple[str, ...], ...] = (
    (),
    ("reshape_optimizer",),
    ("reshape_optimizer", "optimize_transpose"),
)


def convert(
    prepared: Prepared, opset: int, meta: dict[str, Any], path: Path, probe: Any = None
) -> tuple[dict[str, int], list[str], list[Path]]:
    """Convert the inference function to ONNX and write it to ``path``.

    The graph is written (:func:`save`) and let go before onnxruntime loads the file to
    probe it: holding the ``ModelProto`` (one copy of the weights), its serialisation
    and onnxruntime's session at once was the ONNX export's peak.

    Args:
        prepared: The traced model.
        opset: ONNX opset.
        meta: Metadata for ``metadata_props``.
        path: Where the ``.onnx`` file goes (with ``<name>.data`` beside it when large).
        probe: A few raw inputs; the written graph is run on them in onnxruntime at two
            batch sizes and, if it fails or disagrees with Keras, converted again with the
            next entry of :data:`OPTIMIZER_FALLBACKS` switched off.

    Returns:
        ``(op counts, notes, files written)``: notes are tf2onnx's warnings and any
        optimiser fallback taken.

    Raises:
        ExportError: conversion failed or left ops outside the ONNX standard.
    """
    reference = prepared.predict(probe) if probe is not None else None
    problems: list[str] = []
    for disabled in OPTIMIZER_FALLBACKS:
        # frozen again for each attempt: tf2onnx drops the weights once it holds its own
        # copy (one copy less at its peak), so a retry (rare) cannot reuse them
        graph, names = _graph_for_tf2onnx(prepared)
        model_proto, notes = _convert_once(prepared, graph, opset, *names, disabled)
        _finish(model_proto, prepared.output_names, meta)
        counts = dict(Counter(node.op_type for node in model_proto.graph.node))
        files = save(model_proto, path)
        del model_proto
        release_memory()
        problem = _probe(path, prepared, probe, reference) if probe is not None else None
        release_memory()  # onnxruntime's session
        if problem is None:
            if disabled:
                notes.append(
                    f"tf2onnx optimisers {list(disabled)} switched off: with them the graph "
                    f"failed in onnxruntime ({problems[-1][:160]})"
                )
            return counts, notes, files
        problems.append(problem)
    raise ExportError(f"ONNX conversion gives a graph onnxruntime cannot run right: {problems[-1]}")


def _graph_for_tf2onnx(prepared: Prepared) -> tuple[list, tuple]:
    """``([GraphDef without its large constants, name -> their bytes], (inputs, outputs,
    renames))``: the frozen inference function as tf2onnx's large-model route takes it.

    The list is emptied by :func:`_tf2onnx` as soon as tf2onnx holds the weights itself.
    """
    from tf2onnx.convert import tensor_names_from_structed
    from tf2onnx.tf_utils import compress_graph_def

    concrete, graph_def, input_names, output_names = _frozen_graph_def(prepared)
    release_memory()
    rename = tensor_names_from_structed(concrete, input_names, output_names)
    merge_duplicate_constants(graph_def)
    bypass_constant_identities(graph_def, keep=output_names)
    merge_constant_expressions(graph_def, keep=output_names)
    # tf2onnx's large-model route, for every model: the weights leave the GraphDef (held
    # once, by node name) so TensorFlow's importer and tf2onnx's passes copy only the
    # small graph, and Grappler (whose constant folding tf2onnx redoes with TensorFlow)
    # is not run on the weights.
    weights = compress_graph_def(graph_def)
    if _has_calls(graph_def):  # e.g. ConvNeXt's XLA-marked grouped convolutions
        graph_def = _inline_calls(graph_def, input_names, output_names)
        weights.update(compress_graph_def(graph_def))  # large constants of the bodies
    return [compact(graph_def), weights], (input_names, output_names, rename)


def compact(proto: Any) -> Any:
    """A fresh copy of ``proto``, parsed from its bytes, so the original can be let go.

    Protobuf keeps a message's fields in an arena that grows and never shrinks: once
    ``compress_graph_def`` has moved the weights out of the frozen GraphDef, its arena
    still held their bytes, one more copy of every weight through the whole conversion.
    The copy holds only the graph.

    Example:
        >>> from tensorflow.core.framework import graph_pb2
        >>> g = graph_pb2.GraphDef()
        >>> g.node.add(name="x", op="Const").attr["value"].tensor.tensor_content = bytes(9)
        >>> g.node[0].attr["value"].tensor.ClearField("tensor_content")
        >>> compact(g) == g
        True
    """
    fresh = type(proto)()
    fresh.ParseFromString(proto.SerializeToString())
    return fresh


def _convert_once(prepared, graph, opset, input_names, output_names, rename, disabled):
    """tf2onnx on ``graph`` = [GraphDef without its large constants, name -> their bytes]."""
    collect = _Collect()
    tf2onnx_logger = logging.getLogger("tf2onnx")
    tf2onnx_logger.addHandler(collect)
    optimizers = {k: v for k, v in _optimizers().items() if k not in disabled}
    args = (prepared.model.name, graph, opset, input_names, output_names, rename, optimizers)
    # The collections between optimiser passes (_collecting) need not look at TensorFlow,
    # Keras and the user's objects: inside kerastl.export they were moved out of the
    # collector's sight when the export began (the block here is then a no-op), and
    # when this is called alone, every object alive now is. On MobileNetV3-Small the 24
    # full collections took 8.6 s of an 18 s export.
    try:
        with objects_alive_now_uncollected():
            model_proto = _tf2onnx(*args)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises bare exceptions
        raise ExportError(f"ONNX conversion failed: {type(exc).__name__}: {exc}") from exc
    finally:
        tf2onnx_logger.removeHandler(collect)
        release_memory()  # the optimisers' discarded graph copies
    unknown = non_standard_ops(model_proto)
    if unknown:
        raise ExportError(
            f"ONNX conversion left ops no ONNX runtime knows: {unknown}. tf2onnx has no "
            "mapping for them; the file would not load in onnxruntime."
        )
    notes = [m.splitlines()[0] for m in collect.messages if "Failed to apply" in m]
    return model_proto, notes


def _probe(path: Path, prepared: Prepared, probe, reference) -> str | None:
    """Run the written graph at batch 1 and ``len(probe)``; what went wrong, or None."""
    import onnxruntime as ort

    from kerastl.export.validate import rel_err

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        name = prepared.modality.input_name
        kind = session.get_inputs()[0].type  # token ids (text) are int32, pixels float
        dtype = np.int32 if "int32" in kind else np.int64 if "int64" in kind else np.float32
        for batch in (probe[:1], probe):
            out = dict(zip(names, session.run(None, {name: np.asarray(batch, dtype)})))
            for key, ref in reference.items():
                if ref.dtype.kind == "f" and rel_err(out[key], ref[: len(batch)]) > 1e-2:
                    return f"output {key!r} off by rel {rel_err(out[key], ref[: len(batch)]):.3g}"
    except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail / InvalidGraph
        return f"{type(exc).__name__}: {exc}"
    return None


def _tf2onnx(name, graph, opset, input_names, output_names, rename, optimizers):
    """What ``tf2onnx.convert`` runs, on a GraphDef whose large constants are held apart.

    tf2onnx copies the whole graph, weights included, before each optimiser pass (so a
    pass that raises is skipped, not fatal): on ResNet-50 that is most of the ONNX
    export's peak (+0.7 GB). Without those copies (``catch_errors=False``) the peak was
    higher still (+2.2 GB), so they stay.
    """
    import tensorflow as tf
    from tf2onnx import optimizer
    from tf2onnx.tfonnx import process_tf_graph

    with _const_protos_without_values(), _weights_let_go_once_read(graph[1]):
        with tf.device("/cpu:0"), tf.Graph().as_default() as tf_graph:
            tf.import_graph_def(graph[0], name="")
            onnx_graph = process_tf_graph(
                tf_graph,
                continue_on_error=True,
                opset=opset,
                input_names=input_names,
                output_names=output_names,
                tensors_to_rename=rename,
                const_node_values=graph[1],
            )
        graph.clear()  # tf2onnx holds its own copy of every weight now
        with _sharing_large_tensors():
            onnx_graph = optimizer.optimize_graph(onnx_graph, True, optimizers=optimizers)
        held = [onnx_graph]
        del onnx_graph
        return _model_proto(held, f"converted from {name}")


def _model_proto(held: list, doc: str):
    """tf2onnx's ``Graph.make_model``, with its graph let go before the model is built.

    ``make_model`` holds three copies of every weight at once: in tf2onnx's graph, in
    the GraphProto it makes, and in the ModelProto that copies that GraphProto. The
    tf2onnx graph (a web of reference cycles), passed in ``held`` as the only reference
    to it, is freed here before the last copy.
    """
    import tf2onnx
    from onnx import helper
    from tf2onnx import constants

    onnx_graph = held.pop()
    release_memory()  # the graph copies of the optimiser's last passes, before one more
    opset = onnx_graph.opset
    opsets = [helper.make_opsetid(constants.ONNX_DOMAIN, opset), constants.AI_ONNX_ML_OPSET]
    opsets += list(onnx_graph.extra_opset or [])
    graph_proto = onnx_graph.make_graph(doc, "tf2onnx")
    del onnx_graph  # nothing else holds it: freed by the collection below
    release_memory()
    model = helper.make_model(
        graph_proto,
        producer_name="tf2onnx",
        producer_version=f"{tf2onnx.__version__} {tf2onnx.version.git_version[:6]}",
        opset_imports=opsets,
    )
    model.ir_version = constants.OPSET_TO_IR_VERSION.get(opset, model.ir_version)
    return model


def non_standard_ops(model_proto) -> list[str]:
    """Ops of ``model_proto`` outside the standard ONNX domains (``domain:op``).

    Subgraphs (``Loop``/``If``/``Scan`` bodies) included.
    """
    found, graphs = set(), [model_proto.graph]
    while graphs:
        for node in graphs.pop().node:
            if node.domain not in STANDARD_DOMAINS:
                found.add(f"{node.domain}:{node.op_type}")
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else list(attr.graphs))
    return sorted(found)


def _finish(model_proto, output_order: list[str], meta: dict[str, Any]) -> None:
    """Order outputs, name the batch axis ``batch`` and add metadata."""
    graph = model_proto.graph
    outputs = {o.name: o for o in graph.output}
    ordered = [outputs[n] for n in output_order if n in outputs]
    ordered += [o for o in graph.output if o.name not in output_order]
    copies = [type(o)() for o in ordered]
    for dst, src in zip(copies, ordered):
        dst.CopyFrom(src)
    del graph.output[:]
    graph.output.extend(copies)
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del model_proto.metadata_props[:]
    entries = {METADATA_KEY: json.dumps(meta, default=str)}
    for key in ("backbone", "task", "kerastl_version"):
        if meta.get(key) is not None:
            entries[f"{METADATA_KEY}.{key}"] = str(meta[key])
    if meta.get("class_names"):
        entries[f"{METADATA_KEY}.labels"] = "\n".join(meta["class_names"])
    for key, value in entries.items():
        prop = model_proto.metadata_props.add()
        prop.key, prop.value = key, value
    model_proto.producer_name = "kerastl (tf2onnx)"
    model_proto.doc_string = (
        f"{meta.get('backbone', 'model')} {meta.get('task') or ''} exported by kerastl; "
        f"input {(meta.get('input') or {}).get('name')!r}: raw, preprocessing in the graph."
    )


def check(path: Path, full: bool = True) -> None:
    """``onnx.checker`` on the written file (``full``: with shape inference).

    onnx 1.23's shape inference crashes the process (segmentation fault) on the
    onnxruntime-extensions ops inside a ``Loop`` body, so the strings file gets the
    structural check only (its token-id graph had the full one).
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=full)
    except Exception as exc:  # noqa: BLE001 - ValidationError and InferenceError
        raise ExportError(f"onnx.checker refused {path.name}: {exc}") from exc


def strings_skipped(meta: dict[str, Any]) -> str | None:
    """Why ``<name>_strings.onnx`` is not derived for ``meta`` (``None``: it is)."""
    from kerastl.export.formats import onnx_strings

    why = onnx_strings.unsupported(meta)
    if why is None and not onnx_strings.available():
        why = (
            "onnxruntime-extensions is not installed (pip install onnxruntime-extensions); "
            "its tokenizer ops run the tokenizer inside the graph"
        )
    return why


def read_metadata(model_proto) -> dict[str, Any]:
    """kerastl's metadata from ``metadata_props`` (``{}`` if absent)."""
    for prop in model_proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}


class OnnxFormat(Format):
    """``<name>.onnx`` (weights in ``<name>.onnx.data`` over 2 GiB). Option: ``opset``.

    Text models with a WordPiece tokenizer also get ``<name>_strings.onnx`` (raw strings
    in, :mod:`~kerastl.export.formats.onnx_strings`) when onnxruntime-extensions is installed.
    """

    name = "onnx"
    suffix = ".onnx"

    def check_options(self, options: Options, formats: list[str]) -> None:
        if options.opset is not None and self.name not in formats:
            raise ConfigError(
                f"opset={options.opset!r} applies to ONNX only; add 'onnx' to formats."
            )
        if self.name in formats:
            check_opset(options.opset)

    def require(self) -> None:
        require()

    def optional_files(self, out: Path, name: str) -> list[Path]:
        return [out / f"{name}_{STRINGS_SUFFIX}{self.suffix}"]

    def notes(self, name: str, options: Options, meta: dict) -> list[str]:
        """Why a text model gets no ``<name>_strings.onnx`` (tokenizer, package)."""
        why = strings_skipped(meta) if meta.get("tokenizer") else None
        strings = f"{name}_{STRINGS_SUFFIX}{self.suffix}"
        return [] if why is None else [f"no {strings} (raw strings in): {why}"]

    def targets(self, out: Path, name: str, options: Options, meta: dict) -> dict[str, Path]:
        paths = {"float32": out / f"{name}{self.suffix}"}
        if strings_skipped(meta) is None:
            paths[STRINGS_SUFFIX] = out / f"{name}_{STRINGS_SUFFIX}{self.suffix}"
        return paths

    def artifacts(self, job: Job) -> Iterator[Staged]:
        path = job.staging / f"{job.name}{self.suffix}"
        yield Staged("float32", path, partial(self._write, job, path))
        if (self.name, STRINGS_SUFFIX) in job.targets:
            yield self._strings(job, path)

    def _strings(self, job: Job, source: Path) -> Staged:
        """``<name>_strings.onnx``: the validated token-id file with the tokenizer in front.

        Validated on sentences (the raw validation data, else sample sentences) against
        the Keras token-id model on KerasHub's token ids for them.
        """
        from kerastl.export.formats import onnx_strings
        from kerastl.export.modalities.text import PROBE_SENTENCES

        path = job.staging / f"{job.name}_{STRINGS_SUFFIX}{self.suffix}"
        texts = job.options.source_inputs
        if texts is None:
            texts = job.prepared.modality.sample_texts(16)
        texts = np.asarray([*texts, *PROBE_SENTENCES], dtype=object)
        ids = job.prepared.modality.tokenize(texts)
        meta = job.prepared.meta

        def write_strings() -> dict[str, Any]:
            import onnx

            start = time.perf_counter()
            tokenizer = onnx_strings.tokenizer_model(meta["tokenizer"])  # no weights: cheap
            problem = onnx_strings.check_token_ids(tokenizer, texts, ids)
            if problem:  # the token-id files still publish; this one is left out
                raise NotWritten(
                    f"its in-graph tokenizer {problem}. Known differences of the "
                    "onnxruntime-extensions tokenizer: kerastl.export.formats.onnx_strings"
                )
            proto = onnx.load(str(source))
            onnx_strings.add_strings_input(proto, meta["tokenizer"])
            _finish(proto, [o.name for o in proto.graph.output], onnx_strings.strings_meta(meta))
            onnx_strings.label(proto, meta)
            save(proto, path)
            del proto  # before onnx.checker reads the file back: one copy of the weights
            check(path, full=False)
            return {
                "input": "text: string[batch] (raw sentences)",
                "requires": "onnxruntime-extensions",
                "token_ids_checked": len(texts),
                "tokenizer_seconds": round(time.perf_counter() - start, 2),
            }

        return Staged(
            STRINGS_SUFFIX, path, write_strings, reference=job.prepared.predict(ids), inputs=texts
        )

    @staticmethod
    def _write(job: Job, path: Path) -> dict[str, Any]:
        opset = check_opset(job.options.opset)
        prepared = job.prepared
        counts, notes, files = convert(prepared, opset, prepared.meta, path, job.x_val[:4])
        check(path)
        details: dict[str, Any] = {
            "opset": opset,
            "nodes": sum(counts.values()),
            "transposes": counts.get("Transpose", 0),
        }
        if notes:
            details["tf2onnx"] = "; ".join(notes)
        if len(files) > 1:
            details["external_data"] = files[1].name
        return details

    def load(self, path: Path, num_threads: int | None = None) -> Artifact:
        return OnnxArtifact(path, num_threads)

    def publish(self, source: Path, target: Path) -> None:
        replace_file(source, target)  # with the graph's external weights, if any


def _extension_options(path: Path):
    """Session options with onnxruntime-extensions' ops, for a file that uses them."""
    from kerastl.export.formats import onnx_strings

    try:
        return onnx_strings.session_options()
    except ImportError as exc:
        raise missing_dependency(
            "onnxruntime_extensions", "onnxruntime-extensions", f"{path.name} (tokenizer ops)"
        ) from exc


class OnnxArtifact(Artifact):
    format = "onnx"
    runtime = "onnxruntime (CPUExecutionProvider)"

    def __init__(self, path: Path, num_threads: int | None = None):
        check_positive_int("num_threads", num_threads, none_means="every core")
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_dependency("onnxruntime", "onnx onnxruntime", "ONNX") from exc
        # The graph is read once, for its metadata, opsets and ops, and let go before
        # onnxruntime loads the file: weights stored inside the .onnx file are in it
        # (ConvNeXt-L: 0.8 GB held beside the session, and read a second time for its ops).
        proto = onnx.load(str(path), load_external_data=False)
        # non_builtin_ops: ops outside the standard ONNX domains (``domain:op``)
        super().__init__(path, read_metadata(proto), non_standard_ops(proto))
        self.opset = max(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None
        )
        extensions = any(o.domain not in STANDARD_DOMAINS for o in proto.opset_import)
        del proto
        options = ort.SessionOptions()
        if extensions:
            options = _extension_options(path)
            self.runtime = "onnxruntime (CPUExecutionProvider) + onnxruntime-extensions"
        options.log_severity_level = 3
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            self.runtime += f", {num_threads} thread{'s' if num_threads > 1 else ''}"
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._out_names = [o.name for o in self._session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        kind = self._session.get_inputs()[0].type  # "tensor(float)", "tensor(int32)"...
        dtype = np.int32 if "int32" in kind else np.int64 if "int64" in kind else np.float32
        if "string" in kind:  # <name>_strings.onnx: raw sentences
            x, dtype = np.asarray([str(s) for s in np.asarray(x).reshape(-1)]), object
        values = self._session.run(None, {self.input_name: np.asarray(x, dtype)})
        return dict(zip(self._out_names, values))
