"""Large models' TFLite files, converted a part at a time and joined into one file.

TensorFlow's converter holds four to five copies of the weights it converts (ViT-L's
float32 file alone: 6.16 GB at its peak for 1.2 GB of weights, ``python -m
bench.convert_memory``). Here the inference function is frozen without holding its weights
(each variable is read when its part needs it), cut where few tensors cross (between
transformer or ConvNeXt blocks, found from the graph), and each part goes through
TensorFlow's converter alone, with kerastl's settings for the precision. The parts are
joined into one flatbuffer with one subgraph and kerastl's ``serving_default`` signature:
each part's inputs are the tensors the earlier parts made. Each part's weights go to disk
as it is joined; the file is packed from there, or keeps them after the flatbuffer when
they reach 2 GiB. In ``kerastl.export`` ViT-L's float32 conversion step then peaks at 6.26
GB instead of 8.61 and ConvNeXt-L's at 3.66 instead of 5.46, model and TensorFlow included
(``python -m bench.export_memory``). Full-integer files are calibrated and quantized from
the joined float32 file by TensorFlow's flatbuffer calibrator.

Graphs with control flow (loops keep their bodies in a function library) and graphs
without a cut are converted whole (:func:`plan` returns no parts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.errors import ExportError

#: Float32 weight bytes from which ``kerastl.export`` converts TFLite files in parts.
PARTS_MIN_BYTES = 256 * 2**20
#: Weight bytes per part (about): ViT-L's 1.2 GB makes 24 parts. A part converts with about
#: five to ten times its weights in memory (ConvNeXt-L: 4.03 GB peak in 8 parts, 3.26 in 16).
PART_BYTES = 50 * 2**20
#: Most tensors that may cross a cut (BERT: the hidden states and the attention mask).
MAX_LIVE = 4
#: Nodes computed from weights alone go with the part that uses them.
_WEIGHT_OPS = ("Identity", "Cast", "Reshape", "Transpose")
#: Joined files with this many bytes of weights or more keep them after the flatbuffer (one
#: flatbuffer holds at most 2 GiB), as TensorFlow's converter does for large models.
INLINE_LIMIT = 2**31 - 2**28
#: Name of a part's placeholder for the ``i``-th tensor an earlier part made.
_FEED = "kerastl_part_input_{}"

Tensor = tuple[str, int]


@dataclasses.dataclass
class Graph:
    """The frozen inference function, its variables' values left out.

    ``nodes`` are in the order a depth-first walk from the outputs needs them;
    ``variables`` maps each constant whose value was left out to the variable it is read
    from; ``sizes`` gives every constant's bytes; ``inputs``/``outputs`` map the signature
    names to tensors; ``weights`` are the nodes computed from constants alone.
    """

    light: Any
    nodes: list[Any]
    variables: dict[str, Any]
    sizes: dict[str, int]
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    weights: set[str]


@dataclasses.dataclass(frozen=True)
class Part:
    """``nodes[start:stop]`` of a :class:`Graph`: the tensors it reads that earlier parts
    made (``inputs``; the signature inputs for the first part), and those it makes that
    later parts or the signature read (``outputs``)."""

    start: int
    stop: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def _src(name: str) -> Tensor:
    node, _, port = name.lstrip("^").partition(":")
    return node, int(port or 0)


def _data_inputs(node: Any) -> list[str]:
    return [i for i in node.input if not i.startswith("^")]


def freeze_light(concrete: Any) -> Graph:
    """The frozen GraphDef of ``concrete`` without its variables' values.

    kerastl's freeze (each variable read when its constant is made) makes the GraphDef;
    a copy keeps every node but the variables' constants keep only dtype and shape, and
    the full one is let go: parts read their weights again from the variables.
    """
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants as c2c

    from kerastl.export._freeze import reading_when_needed
    from kerastl.export.formats.base import release_memory

    data = reading_when_needed()(func=concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_def, _ = c2c._replace_variables_by_constants(converter_data=data)
    data.forget()
    variables = {
        name: entry[0].variable
        for name, entry in data._tensor_data.items()
        if hasattr(entry[0], "variable")
    }
    del data
    light = tf.compat.v1.GraphDef()
    light.library.CopyFrom(graph_def.library)
    sizes: dict[str, int] = {}
    for n in graph_def.node:
        if n.name in variables:  # dtype and shape only, never the values
            m = light.node.add(name=n.name, op="Const")
            m.attr["dtype"].CopyFrom(n.attr["dtype"])
            m.attr["value"].tensor.dtype = n.attr["value"].tensor.dtype
            m.attr["value"].tensor.tensor_shape.CopyFrom(n.attr["value"].tensor.tensor_shape)
            value = variables[n.name]
            sizes[n.name] = int(np.prod(value.shape)) * value.dtype.size
        else:
            light.node.add().CopyFrom(n)
            if n.op == "Const":
                sizes[n.name] = n.attr["value"].tensor.ByteSize()
    del graph_def
    release_memory()  # the frozen GraphDef with the weights' values
    specs = tf.nest.flatten(concrete.structured_input_signature)
    inputs = {s.name or _src(t.name)[0]: _src(t.name) for s, t in zip(specs, concrete.inputs)}
    outputs = {k: _src(t.name) for k, t in sorted(concrete.structured_outputs.items())}
    nodes = walk_order(light, [t[0] for t in outputs.values()])
    return Graph(light, nodes, variables, sizes, inputs, outputs, _weight_nodes(nodes))


def walk_order(graph_def: Any, sinks: list[str]) -> list[Any]:
    """Placeholders, then the nodes in the order a depth-first walk from ``sinks`` needs
    them, each node's deepest input first.

    A node's inputs are walked from the longest chain behind them to the shortest, so a
    side computation (the attention mask each BERT block expands for itself, a weight)
    is placed just before the node that reads it instead of before the whole chain:
    walked in the inputs' own order, every block's mask expansion ran at the start and
    crossed every cut.
    """
    by_name = {n.name: n for n in graph_def.node}
    producers = {
        k: list(dict.fromkeys(_src(i)[0] for i in _data_inputs(n))) for k, n in by_name.items()
    }
    depth = _depths(producers, sinks)
    order, seen = [], set()
    for sink in sinks:
        stack = [(sink, False)]
        while stack:
            name, done = stack.pop()
            if done:
                order.append(by_name[name])
            elif name not in seen:
                seen.add(name)
                stack.append((name, True))
                ins = sorted(producers[name], key=lambda u: -depth[u])  # stable: ties keep order
                stack += [(i, False) for i in reversed(ins) if i not in seen]
    return sorted(order, key=lambda n: n.op != "Placeholder")  # stable: the walk stays


def _depths(producers: dict[str, list[str]], sinks: list[str]) -> dict[str, int]:
    """The longest chain of nodes behind each node the sinks need (0 for a source)."""
    depth: dict[str, int] = {}
    stack = [(s, False) for s in sinks]
    while stack:
        name, done = stack.pop()
        if done:
            depth[name] = 1 + max((depth[u] for u in producers[name]), default=-1)
        elif name not in depth:
            stack.append((name, True))
            stack += [(u, False) for u in producers[name] if u not in depth]
    return depth


def _weight_nodes(nodes: list[Any]) -> set[str]:
    weights: set[str] = set()
    for n in nodes:
        ins = [_src(i)[0] for i in _data_inputs(n)]
        if n.op == "Const" or (n.op in _WEIGHT_OPS and ins and all(i in weights for i in ins)):
            weights.add(n.name)
    return weights


def plan(graph: Graph, parts: int) -> list[Part]:
    """About ``parts`` parts of equal weight bytes, cut where at most :data:`MAX_LIVE`
    tensors cross; ``[]`` when the graph has control flow or no such cut."""
    if graph.light.library.function or parts < 2:
        return []
    nodes, weights = graph.nodes, graph.weights
    last: dict[Tensor, int] = {t: len(nodes) for t in graph.outputs.values()}
    for j, n in enumerate(nodes):
        for i in _data_inputs(n):
            if _src(i)[0] not in weights:
                last[_src(i)] = max(last.get(_src(i), 0), j)
    cum = np.cumsum(_weight_bytes_used(graph))
    made: dict[str, list[Tensor]] = {}
    for t in last:
        made.setdefault(t[0], []).append(t)
    cuts: dict[int, int] = {}  # position -> tensors crossing
    alive: set[Tensor] = set()
    for j, n in enumerate(nodes[:-1]):
        alive = {t for t in alive if last[t] > j} | {t for t in made.get(n.name, ()) if last[t] > j}
        if 0 < len(alive) <= MAX_LIVE and n.name not in weights and 0 < cum[j] < cum[-1]:
            cuts[j + 1] = len(alive)
    if not cuts:
        return []
    chosen: list[int] = []
    for q in range(1, parts):  # near each target: the fewest crossing tensors, then nearest
        target, window = cum[-1] * q / parts, cum[-1] / parts / 2
        near = [c for c in cuts if abs(cum[c - 1] - target) <= window] or [
            min(cuts, key=lambda c: abs(cum[c - 1] - target))
        ]
        best = min(near, key=lambda c: (cuts[c], abs(cum[c - 1] - target)))
        if not chosen or best > chosen[-1]:
            chosen.append(best)
    bounds = [0, *chosen, len(nodes)]
    return [_part(graph, a, b, last) for a, b in zip(bounds, bounds[1:])]


def _weight_bytes_used(graph: Graph) -> list[int]:
    """Per node, the bytes of the weights it is the first to read."""
    by_name = {n.name: n for n in graph.nodes}
    counted: set[str] = set()
    used = [0] * len(graph.nodes)
    for j, n in enumerate(graph.nodes):
        if n.name in graph.weights:
            continue
        stack = [_src(i)[0] for i in _data_inputs(n) if _src(i)[0] in graph.weights]
        while stack:
            u = stack.pop()
            if u not in counted:
                counted.add(u)
                used[j] += graph.sizes.get(u, 0)
                stack += [_src(i)[0] for i in _data_inputs(by_name[u])]
    return used


def _part(graph: Graph, start: int, stop: int, last: dict[Tensor, int]) -> Part:
    body = [n for n in graph.nodes[start:stop] if n.name not in graph.weights]
    made = {n.name for n in body}
    if start == 0:
        inputs = tuple(graph.inputs.values())
    else:
        read = (_src(i) for n in body for i in _data_inputs(n))
        inputs = tuple(dict.fromkeys(t for t in read if t[0] not in made | graph.weights))
    given = set(graph.inputs.values())  # the signature's inputs are wired from the start
    outputs = tuple(sorted(t for t in last if t[0] in made and last[t] >= stop and t not in given))
    return Part(start, stop, inputs, outputs)


def part_graph(graph: Graph, part: Part, shapes: dict[Tensor, tuple]) -> tuple[Any, list[str]]:
    """The GraphDef of one part with its weights' values read now, and its input names.

    A later part reads what earlier parts made through placeholders (:data:`_FEED`).
    """
    import tensorflow as tf

    by_name = {n.name: n for n in graph.nodes}
    body = [n for n in graph.nodes[part.start : part.stop] if n.name not in graph.weights]
    needed, stack = set(), [_src(i)[0] for n in body for i in _data_inputs(n)]
    while stack:
        u = stack.pop()
        if u in graph.weights and u not in needed:
            needed.add(u)
            stack += [_src(i)[0] for i in _data_inputs(by_name[u])]
    gd = tf.compat.v1.GraphDef()
    feeds = {} if part.start == 0 else {t: _FEED.format(k) for k, t in enumerate(part.inputs)}
    for t, name in feeds.items():
        ph = gd.node.add(name=name, op="Placeholder")
        ph.attr["dtype"].type = shapes[t][0]
        ph.attr["shape"].shape.CopyFrom(shapes[t][1])
    for n in [by_name[u] for u in sorted(needed)] + body:
        m = gd.node.add()
        m.CopyFrom(n)
        if n.name in graph.variables:
            value = np.asarray(graph.variables[n.name].numpy())
            m.attr["value"].tensor.tensor_content = value.tobytes()
        ins = [feeds.get(_src(i), i) for i in _data_inputs(m)]
        del m.input[:]
        m.input.extend(ins)
    names = list(feeds.values()) if feeds else [t[0] for t in part.inputs]
    return gd, [f"{n}:0" for n in names]


def shapes(graph: Graph, tensors: Iterable[Tensor]) -> dict[Tensor, tuple]:
    """(dtype enum, shape proto) of ``tensors``, from the graph with its weights one value."""
    import tensorflow as tf

    tiny = tf.compat.v1.GraphDef()
    for n in graph.light.node:
        m = tiny.node.add()
        m.CopyFrom(n)
        value = m.attr["value"].tensor if n.op == "Const" else None
        if value is not None and (n.name in graph.variables or len(value.tensor_content) > 1024):
            value.tensor_content = b""
            value.float_val.append(0.0) if value.dtype == 1 else value.int_val.append(0)
    with tf.Graph().as_default() as g:
        tf.import_graph_def(tiny, name="")
        found = {t: g.get_tensor_by_name(f"{t[0]}:{t[1]}") for t in tensors}
        return {t: (v.dtype.as_datatype_enum, v.shape.as_proto()) for t, v in found.items()}


def convert_part(
    gd: Any, inputs: list[str], outputs: list[Tensor], quantization: str, allow_flex: bool
) -> bytes:
    """One part's flatbuffer with kerastl's converter settings (float32, float16, dynamic)."""
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        tf.import_graph_def(gd, name="")
        ins = [g.get_tensor_by_name(n) for n in inputs]
        outs = [g.get_tensor_by_name(f"{n}:{p}") for n, p in outputs]
        converter = tf.compat.v1.lite.TFLiteConverter(gd, ins, outs)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if allow_flex:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = ops
        if quantization in ("float16", "dynamic"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def convert(
    graph: Graph, parts: list[Part], quantization: str, allow_flex: bool = False
) -> bytearray:
    """The float32, float16 or dynamic-range file of ``graph``, converted part by part
    (the weights in the flatbuffer: under 2 GiB of them).

    Example:
        >>> import tensorflow as tf
        >>> w = [tf.Variable(tf.eye(4) * (k + 1)) for k in range(3)]
        >>> @tf.function(input_signature=[tf.TensorSpec((None, 4), name="x")])
        ... def f(x):
        ...     for v in w:
        ...         x = x + tf.nn.relu(x @ v)
        ...     return {"y": x}
        >>> graph = freeze_light(f.get_concrete_function())
        >>> parts = plan(graph, 3)
        >>> [len(p.inputs) for p in parts]
        [1, 1, 1]
        >>> from ai_edge_litert.interpreter import Interpreter
        >>> run = Interpreter(model_content=bytes(convert(graph, parts, "float32")))
        >>> run.get_signature_runner("serving_default")(x=np.ones((2, 4), np.float32))["y"]
        array([[24., 24., 24., 24.],
               [24., 24., 24., 24.]], dtype=float32)
    """
    from kerastl.export.formats import tflite_metadata

    joined = _join(graph, parts, quantization, allow_flex)
    size = sum(b.data.nbytes for b in joined.buffers if b.data is not None)
    return tflite_metadata.pack(joined, size + (1 << 20))


def write(
    graph: Graph,
    parts: list[Part],
    quantization: str,
    path: Path,
    metadata: dict[str, bytes],
    allow_flex: bool = False,
) -> None:
    """Write the file of ``graph``, converted part by part, with ``metadata`` entries.

    Each part's weights go to disk (``<path>.weights``) as the part is joined, and the
    file is written from there: in the flatbuffer, or, from :data:`INLINE_LIMIT` bytes of
    weights, after it, as TensorFlow's converter stores a large model's.
    """
    from kerastl.export.formats import tflite_metadata

    tail = path.with_name(path.name + ".weights")
    try:
        joined = _join(graph, parts, quantization, allow_flex, tail)
        for name, data in metadata.items():
            tflite_metadata.add_entry(joined, name, data)
        if tail.stat().st_size < INLINE_LIMIT:
            _write_inline(joined, path, tail)
        else:
            write_with_offsets(joined, path, tail)
    finally:
        tail.unlink(missing_ok=True)


def _write_inline(joined: Any, path: Path, tail: Path) -> None:
    """The flatbuffer with its weights in it, packed from a mapping of ``tail``: each
    weight's pages leave the process once copied (``tflite_metadata.pack``)."""
    import mmap

    from kerastl.export.formats import tflite_metadata

    spilled = [b for b in joined.buffers if b.data is None and b.size]
    with open(tail, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        try:
            for buf in spilled:
                buf.data = np.frombuffer(view, np.uint8, count=buf.size, offset=buf.offset)
                buf.offset = buf.size = 0
            content = tflite_metadata.pack(joined, tail.stat().st_size + (1 << 20))
        finally:
            for buf in spilled:
                buf.data = None  # no view of the mapping is left when it closes
    path.write_bytes(content)


def _join(
    graph: Graph, parts: list[Part], quantization: str, allow_flex: bool, tail: Path | None = None
) -> Any:
    """The ``ModelT`` of the parts joined; with ``tail``, their weights are moved there as
    each part is joined (:func:`_spill`), so that one part's weights are in memory at a time."""
    from kerastl.export.formats.base import release_memory

    crossing = {t for p in parts[1:] for t in p.inputs}
    dtypes = {t: dtype for t, (dtype, _) in shapes(graph, crossing).items()}
    joined, where, seen = None, {}, {}
    for k, part in enumerate(parts):
        made = {} if joined is None else _made_shapes(joined, where, part, dtypes)
        gd, names = part_graph(graph, part, made)
        try:
            content = convert_part(gd, names, list(part.outputs), quantization, allow_flex)
        except Exception as exc:  # noqa: BLE001 - ConverterError and friends
            text = " | ".join(str(exc).splitlines()[:4])[:600]
            raise ExportError(f"TFLite part {k + 1}/{len(parts)} failed: {text}") from exc
        del gd
        joined = _append(joined, content, part, where, seen)
        del content
        if tail is not None:
            _spill(joined, tail)
        release_memory()  # the part's graphs, before the next part is converted
    _finish(joined, graph, where)
    return joined


def _spill(joined: Any, tail: Path) -> None:
    """Move the weights still held in ``joined``'s buffers (not its metadata) to the end of
    ``tail``, each at a multiple of ``TAIL_ALIGN``; a buffer then has its place in ``tail``
    and its size."""
    from kerastl.export.formats.tflite_metadata import TAIL_ALIGN

    metadata = {entry.buffer for entry in joined.metadata or []}
    with open(tail, "ab") as f:
        for i, buf in enumerate(joined.buffers):
            if buf.data is None or not len(buf.data) or i in metadata:
                continue
            f.write(bytes(-f.tell() % TAIL_ALIGN))
            buf.offset, buf.size = f.tell(), len(buf.data)
            f.write(np.ascontiguousarray(buf.data).view(np.uint8).data)
            buf.data = None


def write_with_offsets(joined: Any, path: Path, tail: Path) -> None:
    """The flatbuffer, then ``tail`` behind it: each buffer's offset counts from the file's
    start (the layout TensorFlow's converter writes for models over 2 GiB)."""
    import shutil

    from kerastl.export.formats import tflite_metadata

    spilled = [b for b in joined.buffers if b.data is None and b.size]
    tflite_metadata.add_entry(joined, tflite_metadata.BUFFER_LOCATION, b"outside flatbuffers")
    for buf in spilled:  # any value over 1: offsets are fixed-width fields
        buf.offset += 1 << 40
    size = len(tflite_metadata.pack(joined, 1 << 20))
    start = size + (-size % tflite_metadata.TAIL_ALIGN)
    for buf in spilled:
        buf.offset += start - (1 << 40)
    head = tflite_metadata.pack(joined, 1 << 20)
    if len(head) != size:
        raise ExportError(f"TFLite parts: the flatbuffer changed size ({size} -> {len(head)}).")
    with open(path, "wb") as f, open(tail, "rb") as weights:
        f.write(head)
        f.write(bytes(start - size))
        shutil.copyfileobj(weights, f, 1 << 22)


def _made_shapes(
    joined: Any, where: dict[Tensor, int], part: Part, dtypes: dict[Tensor, int]
) -> dict[Tensor, tuple]:
    """(dtype enum, shape proto) of the tensors ``part`` reads, as the parts that made them
    have them: TensorFlow's shape inference on the bare GraphDef knows less."""
    from tensorflow.core.framework import tensor_shape_pb2

    found = {}
    for t in part.inputs:
        tensor = joined.subgraphs[0].tensors[where[t]]
        dims = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
        shape = tensor_shape_pb2.TensorShapeProto()
        for d in [] if dims is None else list(dims):
            shape.dim.add(size=int(d))
        found[t] = (dtypes[t], shape)
    return found


def _append(
    joined: Any, content: bytes, part: Part, where: dict[Tensor, int], seen: dict[tuple, int]
) -> Any:
    """Add one part's subgraph to ``joined`` (its first part when ``None``), its inputs
    wired to the tensors earlier parts made; ``where`` maps tensors to ``joined``'s, ``seen``
    the weights already stored (:func:`_merge`)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    sub = model.subgraphs[0]
    if len(sub.inputs) != len(part.inputs) or len(sub.outputs) != len(part.outputs):
        raise ExportError(
            f"TFLite part: the converter kept {len(sub.inputs)} inputs and "
            f"{len(sub.outputs)} outputs of {len(part.inputs)} and {len(part.outputs)}."
        )
    if joined is None:
        joined, tensor_map = model, {i: i for i in range(len(sub.tensors))}
        for i, buf in enumerate(joined.buffers):
            seen.setdefault(_key(buf), i)
    else:
        main = joined.subgraphs[0]
        for s, t in zip(sub.inputs, part.inputs):
            made, read = main.tensors[where[t]], sub.tensors[s]
            if (made.type, list(made.shape)) != (read.type, list(read.shape)):
                raise ExportError(
                    f"TFLite parts: tensor {t[0]}:{t[1]} is {made.type} {list(made.shape)} "
                    f"where it is made and {read.type} {list(read.shape)} where it is read."
                )
        feeds = {s: where[t] for s, t in zip(sub.inputs, part.inputs)}
        _keep_newest_runtime(joined, model)
        tensor_map = _merge(joined, model, feeds, seen)
    where.update({t: tensor_map[s] for s, t in zip(sub.inputs, part.inputs)})
    where.update({t: tensor_map[s] for s, t in zip(sub.outputs, part.outputs)})
    return joined


#: The converter's metadata entry: the oldest LiteRT that runs the file's operators.
RUNTIME_VERSION = b"min_runtime_version"


def runtime_version(model: Any) -> tuple[int, ...]:
    """The ``min_runtime_version`` a ``ModelT`` declares (``()`` when it has none).

    Example:
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> from kerastl.export.formats.tflite_metadata import add_entry
        >>> model = schema.ModelT(); model.buffers = [schema.BufferT()]
        >>> add_entry(model, RUNTIME_VERSION, b"2.9.0" + bytes(11))
        >>> runtime_version(model)
        (2, 9, 0)
    """
    buf = _runtime_buffer(model)
    if buf is None:
        return ()
    text = bytes(buf.data).rstrip(b"\0").decode()
    return tuple(int(v) for v in text.split(".") if v.isdigit())


def _runtime_buffer(model: Any) -> Any:
    """The buffer of ``model``'s :data:`RUNTIME_VERSION` entry (``None`` without one)."""
    entry = next((e for e in model.metadata or [] if e.name == RUNTIME_VERSION), None)
    return None if entry is None else model.buffers[entry.buffer]


def _keep_newest_runtime(joined: Any, model: Any) -> None:
    """Each part declares the runtime its own operators need: the joined file keeps the
    newest (a part with GELU needs LiteRT 2.9 where the first part's Adds need 1.5)."""
    kept = _runtime_buffer(joined)
    if kept is not None and runtime_version(model) > runtime_version(joined):
        kept.data = _runtime_buffer(model).data


def _key(buf: Any) -> tuple | None:
    """A weight buffer's size and digest (``None`` for an empty one)."""
    import hashlib

    if buf.data is None or not len(buf.data):
        return None
    digest = hashlib.md5(np.ascontiguousarray(buf.data).data, usedforsecurity=False).digest()
    return len(buf.data), digest


def _merge(
    joined: Any, model: Any, tensor_map: dict[int, int], seen: dict[tuple, int]
) -> dict[int, int]:
    """Append ``model``'s only subgraph to ``joined``'s: operator codes shared, buffers and
    tensors renumbered; ``tensor_map`` starts with the part's inputs and is returned full.

    A weight equal to one an earlier part holds (``seen``: digest -> buffer) is not stored
    again: a layer applied in several parts (ALBERT's shared blocks) keeps one copy.
    """

    def key(code: Any) -> tuple:
        return (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)

    codes = [key(c) for c in joined.operatorCodes]
    code_map = {}
    for i, code in enumerate(model.operatorCodes):
        if key(code) not in codes:
            joined.operatorCodes.append(code)
            codes.append(key(code))
        code_map[i] = codes.index(key(code))
    buffer_map = {0: 0}
    for i, buf in enumerate(model.buffers[1:], start=1):
        same = seen.get(_key(buf))
        if same is None:
            joined.buffers.append(buf)
            same = len(joined.buffers) - 1
            seen.setdefault(_key(buf), same)
        buffer_map[i] = same
    main, sub = joined.subgraphs[0], model.subgraphs[0]
    for i, tensor in enumerate(sub.tensors):
        if i not in tensor_map:
            tensor.buffer = buffer_map.get(tensor.buffer, 0)
            main.tensors.append(tensor)
            tensor_map[i] = len(main.tensors) - 1
    for op in sub.operators:
        op.opcodeIndex = code_map[op.opcodeIndex]
        op.inputs = [tensor_map[i] if i >= 0 else i for i in op.inputs]
        op.outputs = [tensor_map[i] for i in op.outputs]
        main.operators.append(op)
    return tensor_map


def _finish(joined: Any, graph: Graph, where: dict[Tensor, int]) -> None:
    """The signature's inputs and outputs, and a ``serving_default`` SignatureDef."""
    from kerastl.export.formats import tflite_metadata

    inputs = {k: where[t] for k, t in graph.inputs.items()}
    outputs = {k: where[t] for k, t in graph.outputs.items()}
    tflite_metadata.serving_signature(joined, inputs, outputs)
    joined.subgraphs[0].name = b"main"


def quantize_int8(float_file: Path, calibration: np.ndarray, int8_io: str = "float32") -> bytes:
    """Full-integer file from a float32 file (the joined one) and raw calibration inputs,
    by TensorFlow's flatbuffer calibrator (what the converter runs for kerastl's int8).

    The calibrator keeps its own copy of the file; the one read here goes before
    calibrating (the calibrator holds it only to read dictionary inputs, which are not
    used: inputs are fed as lists).
    """
    import tensorflow as tf
    from tensorflow.lite.python.optimize import calibrator

    data = np.asarray(calibration)
    data = data.astype(np.float32 if data.dtype.kind == "f" else np.int32)
    io = getattr(tf, int8_io)

    def samples() -> Iterable[list[np.ndarray]]:
        for i in range(len(data)):
            yield [data[i : i + 1]]

    quantizer = calibrator.Calibrator(float_file.read_bytes())
    quantizer._model_content = None  # its own copy is in C++
    return quantizer.calibrate_and_quantize(
        samples, io, io, allow_float=int8_io == "float32", activations_type=tf.int8
    )
