"""TFLite conversion in parts (kerastl/export/formats/tflite_parts.py), on small models.

``kerastl.export`` converts models of at least ``PARTS_MIN_BYTES`` of weights this way;
here the thresholds are lowered so that models of a few hundred KB are cut into parts.
"""

from __future__ import annotations

import numpy as np
import pytest


def _residual_model(width_in, width, blocks, classes, seed):
    """A Keras model of ``blocks`` residual Dense blocks and its traced inference function."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width_in,), name="x")
    h = keras.layers.Dense(width, name="stem")(inputs)
    for k in range(blocks):
        branch = keras.layers.Dense(width, activation="relu", name=f"block{k}_a")(h)
        h = keras.layers.Add(name=f"block{k}_add")([h, keras.layers.Dense(width)(branch)])
    model = keras.Model(inputs, keras.layers.Dense(classes, name="head")(h))
    spec = [tf.TensorSpec((None, width_in))]
    fn = tf.function(lambda x: {"y": model(x)}, input_signature=spec)
    return model, fn.get_concrete_function()


def _run(content, x, name="x"):
    """The signature outputs of the TFLite file ``content`` on the batch ``x``."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=bytes(content)).get_signature_runner("serving_default")
    return runner(**{name: x})


def test_parts_are_cut_between_blocks_and_the_joined_file_matches_keras():
    """A residual model is cut only where one tensor crosses (the blocks' ``Add`` outputs),
    each part is converted alone, and the joined file runs in LiteRT, batch 3 included,
    as one model with the signature's names, matching Keras."""
    from ai_edge_litert import schema_py_generated as schema

    from kerastl.export.formats import tflite_parts

    model, concrete = _residual_model(8, 16, blocks=4, classes=3, seed=0)
    graph = tflite_parts.freeze_light(concrete)
    parts = tflite_parts.plan(graph, 4)
    assert len(parts) == 4
    for part in parts[1:]:
        assert len(part.inputs) == 1 and "add" in part.inputs[0][0].lower(), part
    content = tflite_parts.convert(graph, parts, "float32")
    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    np.testing.assert_allclose(_run(content, x)["y"], np.asarray(model(x)), atol=1e-5)
    joined = schema.Model.GetRootAs(content, 0)  # one subgraph, one signature
    assert joined.SubgraphsLength() == 1 and joined.SignatureDefsLength() == 1


def test_a_tensor_every_block_reads_crosses_each_cut_beside_the_hidden_state():
    """BERT's attention mask is made from the input once and read by every block: cuts
    carry it as a second tensor, each later part reads both, and the file matches Keras."""
    import keras
    import tensorflow as tf

    from kerastl.export.formats import tflite_parts

    keras.utils.set_random_seed(2)
    inputs = keras.Input((6, 8), name="x")
    mask = keras.layers.Lambda(lambda t: keras.ops.cast(t[..., :1] > 0, "float32"))(inputs)
    h = keras.layers.Dense(16)(inputs)
    for k in range(4):
        branch = keras.layers.Dense(16, activation="relu", name=f"block{k}")(h)
        h = keras.layers.Add()([h, keras.layers.Multiply()([branch, mask])])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    fn = tf.function(lambda x: {"y": model(x)}, input_signature=[tf.TensorSpec((None, 6, 8))])
    graph = tflite_parts.freeze_light(fn.get_concrete_function())
    parts = tflite_parts.plan(graph, 4)
    assert len(parts) >= 3
    assert all(len(p.inputs) == 2 for p in parts[1:-1]), [p.inputs for p in parts]
    content = tflite_parts.convert(graph, parts, "float32")
    x = np.random.default_rng(2).normal(size=(2, 6, 8)).astype("float32")
    np.testing.assert_allclose(_run(content, x)["y"], np.asarray(model(x)), atol=1e-5)


def test_a_part_read_as_another_shape_than_it_was_made_is_refused():
    """The join checks each tensor a part reads against the tensor an earlier part made:
    wired to the wrong one (another shape), the join fails instead of writing a file."""
    from kerastl.errors import ExportError
    from kerastl.export.formats import tflite_parts

    _, concrete = _residual_model(8, 16, blocks=2, classes=3, seed=0)
    graph = tflite_parts.freeze_light(concrete)
    parts = tflite_parts.plan(graph, 2)
    first = tflite_parts.convert_part(
        *tflite_parts.part_graph(graph, parts[0], {}), list(parts[0].outputs), "float32", False
    )
    where: dict = {}
    joined = tflite_parts._append(None, first, parts[0], where, {})
    crossing = parts[1].inputs[0]
    where[crossing] = where[graph.inputs["x"]]  # the model input (8 wide), not the block's 16
    shapes = tflite_parts._made_shapes(joined, {crossing: where[crossing]}, parts[1], {crossing: 1})
    shapes[crossing][1].dim[1].size = 16  # the part itself is made for the right shape
    second = tflite_parts.convert_part(
        *tflite_parts.part_graph(graph, parts[1], shapes), list(parts[1].outputs), "float32", False
    )
    with pytest.raises(ExportError, match="where it is made"):
        tflite_parts._append(joined, second, parts[1], where, {})


def test_graphs_with_control_flow_are_not_cut():
    """A loop's body lives in the GraphDef's function library, which parts do not carry:
    such a graph gets no parts (kerastl converts it whole)."""
    import tensorflow as tf

    from kerastl.export.formats import tflite_parts

    weights = tf.Variable(np.ones((4, 4), np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, 4))])
    def looped(x):
        return {
            "y": tf.while_loop(lambda i, h: i < 3, lambda i, h: (i + 1, h @ weights), (0, x))[1]
        }

    graph = tflite_parts.freeze_light(looped.get_concrete_function())
    assert graph.light.library.function
    assert tflite_parts.plan(graph, 4) == []


def _conv_classifier(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((24, 24, 3), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", name="stem")(
        keras.layers.Rescaling(1 / 255)(inputs)
    )
    for k in range(4):
        branch = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"b{k}")(h)
        h = keras.layers.Add()([h, keras.layers.Conv2D(16, 1, name=f"b{k}_out")(branch)])
    out = keras.layers.Dense(3, activation="softmax", name="probabilities")(
        keras.layers.GlobalAveragePooling2D()(h)
    )
    return keras.Model(inputs, out, name="parts_net")


def test_export_converts_a_large_model_in_parts_for_every_precision(tmp_path, monkeypatch):
    """With the model over the size threshold, ``kerastl.export`` writes every TFLite
    precision in parts (the report says so) and each file passes kerastl's validation
    against Keras; the float32 file gives the outputs of the file converted whole, and
    the int8 file is calibrated from the joined float32 file."""
    import kerastl
    from kerastl.export.formats import tflite_parts

    model = _conv_classifier(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (24, 24, 24, 3)).astype("float32")
    kwargs = {
        "formats": ["tflite"],
        "quantize": ["float16", "dynamic", "int8"],
        "calibration_data": images,
        "validation_data": images[:8],
        "latency_runs": 1,
    }
    whole = kerastl.export(model, tmp_path / "whole", **kwargs)
    monkeypatch.setattr(tflite_parts, "PARTS_MIN_BYTES", 0)
    monkeypatch.setattr(tflite_parts, "PART_BYTES", 2_000)
    report = kerastl.export(model, tmp_path / "parts", **kwargs)
    assert whole["status"] == "passed" and report["status"] == "passed", report
    arts = {a["precision"]: a for a in report["artifacts"] if a["format"] == "tflite"}
    assert set(arts) >= {"float32", "float16", "dynamic", "int8"}
    for q in ("float32", "float16", "dynamic", "int8"):
        assert arts[q]["passed"], arts[q]
        assert arts[q]["details"]["conversion"].startswith("in "), arts[q]["details"]
        assert int(arts[q]["details"]["conversion"].split()[1]) >= 3
    assert all("conversion" not in a["details"] for a in whole["artifacts"])
    from ai_edge_litert import schema_py_generated as schema

    int8 = schema.Model.GetRootAs((tmp_path / "parts" / "parts_net_int8.tflite").read_bytes(), 0)
    names = [int8.Metadata(i).Name() for i in range(int8.MetadataLength())]
    assert names.count(b"kerastl_metadata") == 1, names  # carried from the float32 file, once
    x = images[8:12]
    for q, name in (("float32", "parts_net.tflite"), ("int8", "parts_net_int8.tflite")):
        got = kerastl.load_artifact(tmp_path / "parts" / name).run(x)["probabilities"]
        want = kerastl.load_artifact(tmp_path / "whole" / name).run(x)["probabilities"]
        np.testing.assert_allclose(got, want, atol=1e-5 if q == "float32" else 0.05)


def test_export_in_parts_stores_the_weights_after_the_flatbuffer_over_the_limit(
    tmp_path, monkeypatch
):
    """Over ``INLINE_LIMIT`` (2 GiB in real use; lowered here) the joined file keeps its
    weights after the flatbuffer, as TensorFlow's converter does for large models: each
    part's weights go to disk as it is joined. The file passes validation and runs as the
    inline one does; int8 (whose calibrator cannot read such a file) is converted whole."""
    import kerastl
    from kerastl.export.formats import tflite, tflite_metadata, tflite_parts

    model = _conv_classifier(1)
    images = np.random.default_rng(1).uniform(0, 255, (16, 24, 24, 3)).astype("float32")
    monkeypatch.setattr(tflite_parts, "PARTS_MIN_BYTES", 0)
    monkeypatch.setattr(tflite_parts, "PART_BYTES", 2_000)
    kwargs = {"formats": ["tflite"], "validation_data": images[:8], "latency_runs": 1}
    inline = kerastl.export(model, tmp_path / "inline", **kwargs)
    monkeypatch.setattr(tflite_parts, "INLINE_LIMIT", 1_000)
    report = kerastl.export(
        model, tmp_path / "outside", quantize=["float16", "int8"], calibration_data=images, **kwargs
    )
    assert inline["status"] == "passed" and report["status"] == "passed", report
    arts = {a["precision"]: a for a in report["artifacts"] if a["format"] == "tflite"}
    for q in ("float32", "float16"):
        assert "after the flatbuffer" in arts[q]["details"]["weights"], arts[q]["details"]
        assert arts[q]["details"]["conversion"].startswith("in ")
    assert arts["int8"]["details"]["conversion"].startswith("whole"), arts["int8"]["details"]
    path = tmp_path / "outside" / "parts_net.tflite"
    content = path.read_bytes()
    assert tflite_metadata.uses_buffer_offsets(content)
    assert tflite.read_metadata(content)["input"]["name"] == "image"
    assert not list((tmp_path / "outside").rglob("*.weights"))
    x = images[8:12]
    got = kerastl.load_artifact(path).run(x)["probabilities"]
    want = kerastl.load_artifact(tmp_path / "inline" / "parts_net.tflite").run(x)
    np.testing.assert_allclose(got, want["probabilities"], atol=1e-6)


def test_packing_from_a_file_mapping_lets_each_copied_weight_leave_memory(tmp_path):
    """Joined weights are packed from a mapping of the file they were spilled to; once a
    weight is copied into the new flatbuffer its mapped pages leave the process (the
    packed file and one weight in memory, not two copies of every weight)."""
    import mmap

    import psutil
    from ai_edge_litert import schema_py_generated as schema

    from kerastl.export.formats import tflite_metadata

    data = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8)
    (tmp_path / "w").write_bytes(data.tobytes())
    process = psutil.Process()
    with open(tmp_path / "w", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        model = schema.ModelT()
        model.buffers = [schema.BufferT(), schema.BufferT()]
        model.buffers[1].data = np.frombuffer(view, np.uint8)
        before = process.memory_info().rss
        packed = tflite_metadata.pack(model, 64 << 20)
        grew = process.memory_info().rss - before
        model.buffers[1].data = None
    assert (
        bytes(schema.Model.GetRootAs(packed, 0).Buffers(1).DataAsNumpy()[:64])
        == data[:64].tobytes()
    )
    assert grew < 96 << 20, grew / 2**20  # the packed copy (64 MB), not also the mapped 64 MB


def test_export_converts_a_text_classifier_in_parts(tmp_path, monkeypatch):
    """A KerasHub BERT classifier's token-id graph (its padding mask read by every block)
    is converted in parts by ``kerastl.export`` and passes validation against Keras."""
    import kerastl
    from kerastl.export.formats import tflite_parts

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(40)]]
    model = kerastl.build(
        "bert_tiny_en_uncased",
        num_classes=3,
        weights=None,
        tokenizer={"vocabulary": vocab},
        sequence_length=8,
        compile=False,
    )
    monkeypatch.setattr(tflite_parts, "PARTS_MIN_BYTES", 0)
    monkeypatch.setattr(tflite_parts, "PART_BYTES", 200_000)
    texts = np.array([" ".join(f"w{(i * 7 + k) % 40}" for k in range(i % 5 + 1)) for i in range(8)])
    report = kerastl.export(
        model, tmp_path, formats=["tflite"], validation_data=texts, latency_runs=1
    )
    assert report["status"] == "passed", report
    art = next(a for a in report["artifacts"] if a["precision"] == "float32")
    assert int(art["details"]["conversion"].split()[1]) >= 3, art["details"]


def test_a_failed_part_leaves_no_spill_file_and_the_export_converts_whole(tmp_path, monkeypatch):
    """A part the converter refuses: ``write`` fails without leaving its spill file or a
    partial file; in ``kerastl.export`` that precision is converted whole instead, the
    report saying why, and the file still passes validation."""
    import kerastl
    from kerastl.errors import ExportError
    from kerastl.export.formats import tflite_parts

    _, concrete = _residual_model(8, 16, blocks=3, classes=3, seed=0)
    graph = tflite_parts.freeze_light(concrete)
    parts = tflite_parts.plan(graph, 3)
    convert_part, calls = tflite_parts.convert_part, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("refused")
        return convert_part(*args, **kwargs)

    monkeypatch.setattr(tflite_parts, "convert_part", second_fails)
    path = tmp_path / "m.tflite"
    with pytest.raises(ExportError, match="part 2/3 failed: refused"):
        tflite_parts.write(graph, parts, "float32", path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(tflite_parts, "PARTS_MIN_BYTES", 0)
    monkeypatch.setattr(tflite_parts, "PART_BYTES", 2_000)
    calls.clear()
    model = _conv_classifier(2)
    images = np.random.default_rng(2).uniform(0, 255, (8, 24, 24, 3)).astype("float32")
    report = kerastl.export(
        model, tmp_path / "out", formats=["tflite"], validation_data=images, latency_runs=1
    )
    assert report["status"] == "passed", report
    art = next(a for a in report["artifacts"] if a["precision"] == "float32")
    assert art["details"]["conversion"].startswith("whole: in parts: TFLite part 2/"), art


def test_a_second_input_read_late_and_an_output_made_early_are_wired_through_the_join():
    """Signature inputs read only by a later part, and outputs made by an early part: the
    joined file takes both inputs by name and gives both outputs, matching TensorFlow."""
    import tensorflow as tf

    from kerastl.export.formats import tflite_parts

    rng = np.random.default_rng(3)
    w = [tf.Variable(rng.normal(size=(8, 8)).astype("float32") / 3) for _ in range(4)]
    spec = [tf.TensorSpec((None, 8), name="x"), tf.TensorSpec((None, 1), name="scale")]

    @tf.function(input_signature=spec)
    def f(x, scale):
        h = x @ w[0]
        early = h
        for v in w[1:]:
            h = h + tf.nn.relu(h @ v)
        return {"early": early, "late": h * scale}

    graph = tflite_parts.freeze_light(f.get_concrete_function())
    parts = tflite_parts.plan(graph, 4)
    assert len(parts) >= 3 and ("scale", 0) in parts[-1].inputs
    assert all(t not in graph.inputs.values() for p in parts for t in p.outputs)
    from ai_edge_litert.interpreter import Interpreter

    content = bytes(tflite_parts.convert(graph, parts, "float32"))
    runner = Interpreter(model_content=content).get_signature_runner("serving_default")
    x = rng.normal(size=(2, 8)).astype("float32")
    scale = np.array([[2.0], [-1.0]], np.float32)
    got, want = runner(x=x, scale=scale), f(x, scale)
    for key in ("early", "late"):
        np.testing.assert_allclose(got[key], want[key].numpy(), rtol=1e-5, atol=1e-5)


def test_a_layer_shared_by_every_block_is_stored_once_in_the_joined_file():
    """ALBERT applies one block's weights in every block: each part converts them, and the
    join keeps one copy (a file the size of the weights, not of parts x weights)."""
    import keras
    import tensorflow as tf

    from kerastl.export.formats import tflite_parts

    keras.utils.set_random_seed(4)
    inputs = keras.Input((64,), name="x")
    shared = keras.layers.Dense(64, activation="relu", name="shared")
    h = keras.layers.Dense(64, name="stem")(inputs)
    for _ in range(6):
        h = keras.layers.Add()([h, shared(h)])
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    fn = tf.function(lambda x: {"y": model(x)}, input_signature=[tf.TensorSpec((None, 64))])
    graph = tflite_parts.freeze_light(fn.get_concrete_function())
    parts = tflite_parts.plan(graph, 4)
    assert len(parts) >= 3
    content = tflite_parts.convert(graph, parts, "float32")
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    assert len(content) < 1.3 * weight_bytes, (len(content), weight_bytes)
    x = np.random.default_rng(4).normal(size=(2, 64)).astype("float32")
    np.testing.assert_allclose(_run(content, x)["y"], np.asarray(model(x)), atol=1e-4)


def test_side_computations_each_block_makes_from_the_mask_do_not_cross_every_cut():
    """KerasHub's BERT expands the attention mask once per block, and the expansion is the
    first input of the block's select: ordered as a walk from the outputs meets them, every
    expansion ran first and crossed every cut (BERT-L's TFLite export put 12 of its blocks
    in one part and peaked at 18.5 GB). Scheduled next to their block, the cuts between
    blocks carry the hidden state and the mask, and the parts split the weights evenly."""
    import tensorflow as tf

    from kerastl.export.formats import tflite_parts

    rng = np.random.default_rng(5)
    w = [tf.Variable(rng.normal(size=(16, 16)).astype("float32") / 4) for _ in range(8)]

    @tf.function(input_signature=[tf.TensorSpec((None, 16), name="x")])
    def f(x):
        mask = tf.cast(x > 0, tf.float32)
        h = x
        for v in w:
            block_mask = tf.expand_dims(mask, 1)[:, 0] > 0  # made for this block alone
            h = tf.where(block_mask, h @ v, h) + h
        return {"y": h}

    graph = tflite_parts.freeze_light(f.get_concrete_function())
    parts = tflite_parts.plan(graph, 4)
    assert len(parts) == 4 and max(len(p.inputs) for p in parts) <= 2, [p.inputs for p in parts]
    share = [sum(graph.sizes.get(n.name, 0) for n in graph.nodes[p.start : p.stop]) for p in parts]
    assert min(share) >= 2 * 16 * 16 * 4, share  # two blocks' weights in every part
    content = tflite_parts.convert(graph, parts, "float32")
    x = rng.normal(size=(3, 16)).astype("float32")
    np.testing.assert_allclose(_run(content, x)["y"], f(x)["y"].numpy(), rtol=1e-5, atol=1e-5)


def test_the_joined_file_declares_the_newest_runtime_any_part_needs():
    """The first part holds only Adds and MatMuls (LiteRT 1.5); a later part's GELU needs
    2.9. The joined file declares what the file converted whole declares."""
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    from kerastl.export.formats import tflite_parts

    rng = np.random.default_rng(0)
    w = [tf.Variable(rng.normal(size=(16, 16)).astype("float32") * 0.1) for _ in range(4)]

    @tf.function(input_signature=[tf.TensorSpec((None, 16))])
    def f(x):
        h = x + tf.matmul(x, w[0])
        h = h + tf.matmul(h, w[1])
        h = h + tf.matmul(h, w[2])
        return {"y": h + tf.nn.gelu(tf.matmul(h, w[3]))}

    concrete = f.get_concrete_function()
    graph = tflite_parts.freeze_light(concrete)
    parts = tflite_parts.plan(graph, 4)
    assert len(parts) == 4
    joined = tflite_parts.convert(graph, parts, "float32")
    whole = tf.lite.TFLiteConverter.from_concrete_functions([concrete], f).convert()

    def declared(content):
        return tflite_parts.runtime_version(schema.ModelT.InitFromPackedBuf(bytes(content), 0))

    assert declared(joined) == declared(whole) >= (2, 9)
    x = rng.normal(size=(2, 16)).astype("float32")
    np.testing.assert_allclose(_run(joined, x)["y"], f(x)["y"].numpy(), atol=1e-5)
