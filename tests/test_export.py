"""kerastl.export: one validated call, TF Serving layout, metadata, runtimes, bad input."""

from __future__ import annotations

import base64
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import informative


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


CLASSES = ["cat", "dog", "fox"]
SIZE = 32


def _photo_like(n: int, seed: int = 0) -> np.ndarray:
    from kerastl.export.modalities.image import ImageExporter

    return ImageExporter({"input": {"name": "image", "shape": [SIZE, SIZE, 3]}}).sample_inputs(
        n, seed
    )


@pytest.fixture(scope="module")
def model():
    import keras

    import kerastl

    keras.utils.set_random_seed(0)  # float16 error depends on the random weights: pin them
    model = kerastl.build(
        "mobilenet_v3_small",
        num_classes=3,
        input_shape=(SIZE, SIZE, 3),
        class_names=CLASSES,
        compile=False,
    )
    informative(model, _photo_like(32, seed=7))
    assert model(_photo_like(8, seed=8)).numpy().std(0).mean() > 0.05  # outputs vary
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """mobilenet_v3_small through all formats and TFLite precisions (the expensive fixture)."""
    import kerastl

    out = tmp_path_factory.mktemp("export")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = kerastl.export(
            model,
            out,
            formats=["saved_model", "tflite", "onnx"],
            quantize=["float16", "int8"],
            calibration_data=_photo_like(40, seed=1),
            validation_data=_photo_like(12, seed=2),
            int8_io="uint8",
            latency_runs=3,
            # A random-init model's class scores are close to ties, so int8 rounding flips
            # about one in six of the 12 validation examples (measured 0.833): below the 0.9
            # default gate, which a trained model meets (test_export_coverage).
            tolerances={"tflite/int8": {"min_agreement": 0.75}},
        )
    return out, report, [str(w.message) for w in caught]


# -- the call and its report ---------------------------------------------------------------------


def test_report_lists_every_artifact_validated(exported):
    out, report, _ = exported
    assert report["status"] == "passed"
    kinds = [(a["format"], a["precision"]) for a in report["artifacts"]]
    assert kinds == [
        ("saved_model", "float32"),
        ("tflite", "float32"),
        ("tflite", "float16"),
        ("tflite", "int8"),
        ("tflite", "mediapipe"),  # float32 file, probabilities only, standard metadata
        ("onnx", "float32"),
    ]
    for a in report["artifacts"]:
        assert a["passed"], a
        assert (out / a["path"]).exists()
        assert a["size_bytes"] > 100_000
        assert a["latency_ms"] > 0
        assert a["parity"]["batch_sizes"] == [1, 4]
        assert a["parity"]["deterministic"] is True
        assert a["non_builtin_ops"] == []
        if a["precision"] == "float32":
            assert a["parity"]["max_rel_err"] <= 1e-4
            assert a["parity"]["tolerance"]["max_rel_err"] == 1e-4
    f16 = next(a for a in report["artifacts"] if a["precision"] == "float16")
    assert f16["parity"]["tolerance"]["max_rel_err"] == 5e-2
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert 0.0 <= int8["parity"]["agreement"] <= 1.0
    assert int8["details"]["io_type"] == "uint8"
    saved = json.loads((out / "export_report.json").read_text())
    assert saved["artifacts"][0]["path"] == report["artifacts"][0]["path"]
    md = (out / "export_report.md").read_text()
    assert "| artifact | format | precision |" in md and "FAILED" not in md
    assert not list(out.glob(".kerastl-staging-*")), "staging folder left behind"


def test_few_calibration_samples_warn(exported):
    assert any("calibration_data: 40 samples" in m for m in exported[2])
    # TensorFlow's calibrator opens its tf.lite.Interpreter, deprecated: not the user's concern
    assert not any("tf.lite.Interpreter is deprecated" in m for m in exported[2])


def test_saved_model_tf_serving_layout(exported, model):
    out, report, _ = exported
    version = out / "saved_model" / model.name / "1"
    assert report["saved_model_version"] == 1
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert (version / "assets" / "labels.txt").read_text().split() == CLASSES
    meta = json.loads((version / "assets" / "kerastl_metadata.json").read_text())
    assert meta["class_names"] == CLASSES and meta["backbone"] == "mobilenet_v3_small"
    cli = (version / "assets.extra" / "saved_model_cli.txt").read_text()
    assert "signature_def['serving_bytes']" in cli and "image_bytes" in cli
    assert "signature_def['serving_default']" in cli and "class_id" in cli
    # Each weight stored once (Keras' ExportArchive alone stores them twice).
    stored = sum(p.stat().st_size for p in (version / "variables").iterdir())
    weights = sum(np.asarray(w).nbytes for w in model.weights)
    assert weights <= stored < 1.2 * weights


def test_saved_model_signatures_and_bytes(exported, model):
    import tensorflow as tf

    out, _, _ = exported
    loaded = tf.saved_model.load(str(out / "saved_model" / model.name / "1"))
    assert set(loaded.signatures) >= {"serving_default", "serving_bytes"}
    x = _photo_like(3, seed=5)
    raw = loaded.signatures["serving_default"](image=tf.constant(x))
    assert set(raw) == {"probabilities", "logits", "class_id"}
    pngs = [tf.io.encode_png(img.astype(np.uint8)).numpy() for img in x]
    enc = loaded.signatures["serving_bytes"](image_bytes=tf.constant(pngs))
    # PNG is lossless: the same pixels through a second traced graph (decoding first), so
    # only float32 rounding differs (1.6e-6 seen with this machine's oneDNN kernels)
    np.testing.assert_allclose(enc["probabilities"], raw["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(enc["class_id"], raw["class_id"])
    np.testing.assert_array_equal(raw["class_id"], np.argmax(raw["probabilities"], -1))
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(raw["probabilities"], ref, atol=1e-5)


def _sideways_jpeg(folder, png_folder, seed: int):
    """A real photo at 4x3 the model size, stored sideways (EXIF orientation 6), and upright PNG."""
    from PIL import Image
    from skimage import data

    photo = data.chelsea() if seed % 2 else data.astronaut()
    upright = np.asarray(Image.fromarray(photo).resize((3 * SIZE, 4 * SIZE)))
    stored = np.rot90(upright, 1)  # what the camera wrote; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "photo.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(upright).save(png_folder / "upright.png")
    return folder / "photo.jpg", png_folder / "upright.png"


def test_one_decoder_for_training_predict_and_serving(tmp_path, exported, model):
    """The same sideways JPEG gives the same tensor to training, `predict` and TF Serving."""
    import tensorflow as tf

    from kerastl import data
    from kerastl.export.modalities.image import ImageExporter

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    _sideways_jpeg(tmp_path / "dog", tmp_path, seed=8)
    jpg, png = _sideways_jpeg(tmp_path / "cat", tmp_path, seed=7)
    examples = data.from_image_folder(tmp_path)
    assert [Path(p).parent.name for p in examples.x] == ["cat", "dog"]
    by_training = next(data.examples_to_dataset(examples, image_size=SIZE).as_numpy_iterator())[0]
    small = ImageExporter({"input": {"name": "image", "shape": [SIZE, SIZE, 3]}})
    by_predict = small.load_files([str(jpg)])[0]
    decode = small.extra_signatures(lambda images: images)["serving_bytes"][0]
    by_bytes = decode(tf.constant([jpg.read_bytes()])).numpy()[0]
    assert by_training.shape == by_predict.shape == by_bytes.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(by_predict, by_training.astype(np.float32))
    np.testing.assert_array_equal(by_bytes, by_training.astype(np.float32))
    # turned upright: close to the upright original, far from the stored (sideways) pixels
    upright = small.load_files([str(png)])[0]
    near = np.abs(by_predict - upright).mean()  # JPEG loss on fine detail only
    far = min(np.abs(by_predict - np.rot90(upright, k)).mean() for k in (1, 2, 3))
    assert near < 4 and far > 5 * near, (near, far)
    # the exported SavedModel: bytes in == the training tensor in
    out, _, _ = exported
    loaded = tf.saved_model.load(str(out / "saved_model" / model.name / "1"))
    served = loaded.signatures["serving_bytes"](image_bytes=tf.constant([jpg.read_bytes()]))
    direct = loaded.signatures["serving_default"](image=tf.constant(by_training[None], tf.float32))
    np.testing.assert_allclose(served["probabilities"], direct["probabilities"], atol=1e-6)


def test_warmup_requests_are_prediction_logs(exported, model):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    out, _, _ = exported
    extra = out / "saved_model" / model.name / "1" / "assets.extra"
    records = [
        r.numpy() for r in tf.data.TFRecordDataset(str(extra / "tf_serving_warmup_requests"))
    ]
    assert len(records) == 2
    seen = {}
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == model.name
        ((name, tensor),) = request.inputs.items()
        seen[request.model_spec.signature_name] = (name, tf.make_ndarray(tensor))
        # the sample gRPC body of the same signature is the same PredictRequest
        grpc = extra / ("predict_request.pb" if name == "image" else "predict_request_bytes.pb")
        assert predict_pb2.PredictRequest.FromString(grpc.read_bytes()) == request
    name, arr = seen["serving_default"]
    assert name == "image" and arr.shape == (1, SIZE, SIZE, 3) and arr.dtype == np.float32
    name, arr = seen["serving_bytes"]
    assert name == "image_bytes" and arr.shape == (1,) and arr[0][:4] == b"\x89PNG"


def test_rest_request_samples_fit_the_loaded_signature(exported, model):
    import tensorflow as tf
    from PIL import Image

    from kerastl.errors import ExportError
    from kerastl.export.formats.saved_model import check_rest_request

    out, _, _ = exported
    version = out / "saved_model" / model.name / "1"
    extra = version / "assets.extra"
    body = json.loads((extra / "rest_request_bytes.json").read_text())
    assert body["signature_name"] == "serving_bytes"
    img = Image.open(io.BytesIO(base64.b64decode(body["instances"][0]["b64"])))
    assert img.size == (SIZE, SIZE)
    raw = json.loads((extra / "rest_request.json").read_text())
    # saved_model_cli's facts, from the loaded signature
    (spec,) = (
        tf.saved_model.load(str(version))
        .signatures[raw["signature_name"]]
        .structured_input_signature[1]
        .values()
    )
    assert spec.name == "image" and spec.dtype == tf.float32
    assert np.asarray(raw["instances"]).shape[1:] == tuple(spec.shape[1:])
    check_rest_request(version, raw)
    check_rest_request(version, body)
    wrong_size = {**raw, "instances": np.zeros((1, SIZE + 1, SIZE, 3)).tolist()}
    with pytest.raises(ExportError, match=r"input 'image': shape \[33, 32, 3\]"):
        check_rest_request(version, wrong_size)
    with pytest.raises(ExportError, match="signature_name 'serving_pixels'"):
        check_rest_request(version, {**raw, "signature_name": "serving_pixels"})
    with pytest.raises(ExportError, match="inputs \\['pixels'\\]"):
        check_rest_request(version, {**raw, "instances": [{"pixels": raw["instances"][0]}]})


def test_saved_model_is_written_without_tracing_the_model_again(model, tmp_path, monkeypatch):
    """Every signature calls the caller's trace of the model; the write traces only thin
    wrappers around it.

    Keras' walk for lookup tables used to trace each nested Keras model's default signature
    (named ``serving_default``, then dropped): two more traces of the model (ResNet-50:
    0.8 s each). And a ``tf.function`` endpoint is traced again in the save's context (its
    cache key holds the save's variable policy): one more trace of the model (ConvNeXt-B:
    write 3.6 -> 2.6 s without it).
    """
    import tensorflow as tf
    from tensorflow.python.eager.polymorphic_function import tracing_compilation

    from kerastl.export._trace import prepare
    from kerastl.export.formats.saved_model import write_graph

    prepared = prepare(model)
    prepared.tf_function().get_concrete_function()  # the caller's trace (the reference's)
    traced, create = [], tracing_compilation._create_concrete_function

    def counting(function_type, type_context, func_graph, options):
        traced.append(options.name)
        return create(function_type, type_context, func_graph, options)

    monkeypatch.setattr(tracing_compilation, "_create_concrete_function", counting)
    names = write_graph(prepared, tmp_path / "sm")
    assert names == ["serving_default", "serving_bytes"]
    assert traced.count("serving_default") == 0, traced  # Keras' default signatures
    assert "serve" not in traced, traced  # the model's inference function, not again
    monkeypatch.undo()
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    x = _photo_like(2, seed=3)
    got = loaded.signatures["serving_default"](image=tf.constant(x))["probabilities"]
    np.testing.assert_allclose(got.numpy(), model.predict(x, verbose=0), atol=1e-5)
    png = tf.io.encode_png(tf.constant(x[0], tf.uint8)).numpy()
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant([png]))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy()[0], got.numpy()[0], atol=1e-5)


@pytest.mark.parametrize("formats", [["tflite"], ["saved_model", "tflite"]])
def test_an_export_traces_the_model_once(model, tmp_path, monkeypatch, formats):
    """The TFLite file is converted from the function the Keras reference outputs came
    from. With no SavedModel staged (TFLite alone, as ``kerastl rank`` measures a
    candidate's cost) it was traced a second time for the converter's SavedModel."""
    from tensorflow.python.eager.polymorphic_function import tracing_compilation

    import kerastl

    traced, create = [], tracing_compilation._create_concrete_function

    def counting(function_type, type_context, func_graph, options):
        traced.append(options.name)
        return create(function_type, type_context, func_graph, options)

    monkeypatch.setattr(tracing_compilation, "_create_concrete_function", counting)
    x = _photo_like(2, seed=4)
    report = kerastl.export(model, tmp_path, formats=formats, validation_data=x)
    assert {a["format"] for a in report["artifacts"]} == set(formats)
    assert all(a["passed"] for a in report["artifacts"]), report["artifacts"]
    assert traced.count("serve") == 1, traced


def test_archive_traces_a_python_function_endpoint_once(tmp_path):
    """A plain function given to write_archive (MediaPipe's three-input text graph is one)
    ran twice: once traced by Keras' archive, once more inside TensorFlow's save."""
    import keras
    import tensorflow as tf

    from kerastl.export.formats.saved_model import write_archive

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    runs = []

    def serve(x):
        runs.append(1)
        return {"y": model(x, training=False)}

    spec = [tf.TensorSpec((None, 4), tf.float32, name="x")]
    write_archive(model, {"serving_default": (serve, spec)}, tmp_path / "sm")
    assert len(runs) == 1
    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    got = loaded.signatures["serving_default"](x=tf.constant(x))["y"].numpy()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-6)


def test_archive_walks_the_model_for_lookup_tables_only_when_an_endpoint_uses_one(
    tmp_path, monkeypatch
):
    """Keras' walk over the tracked model (for lookup tables) runs only when an endpoint
    captures a resource other than a variable; a table found that way is saved and works."""
    import keras
    import tensorflow as tf

    from kerastl.export.formats.saved_model import write_archive

    walks = []
    descendants = tf.train.TrackableView.descendants

    def counting(self):
        walks.append(1)
        return descendants(self)

    monkeypatch.setattr(tf.train.TrackableView, "descendants", counting)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    spec = [tf.TensorSpec((None, 4), tf.float32, name="x")]
    write_archive(model, {"serving_default": (lambda x: {"y": model(x)}, spec)}, tmp_path / "a")
    assert walks == []  # only variables captured: nothing to find
    lookup = keras.layers.StringLookup(vocabulary=["cat", "dog"])
    words = keras.Sequential([keras.Input((1,), dtype="string"), lookup])
    spec = [tf.TensorSpec((None, 1), tf.string, name="w")]
    write_archive(words, {"serving_default": (lambda w: {"id": words(w)}, spec)}, tmp_path / "b")
    assert walks == [1]
    loaded = tf.saved_model.load(str(tmp_path / "b"))
    got = loaded.signatures["serving_default"](w=tf.constant([["dog"], ["cat"], ["emu"]]))
    assert got["id"].numpy().ravel().tolist() == [2, 1, 0]


def test_tflite_interpreter_runs_on_every_core_unless_told(exported, model):
    from kerastl.export.formats.tflite import TFLiteArtifact, cpu_threads

    out, _, _ = exported
    path = out / f"{model.name}.tflite"
    default, one = TFLiteArtifact(path), TFLiteArtifact(path, num_threads=1)
    assert default.num_threads == cpu_threads() and one.num_threads == 1
    assert default.runtime.endswith(f"{cpu_threads()} threads" if cpu_threads() > 1 else "thread")
    x = _photo_like(3, seed=4)
    np.testing.assert_allclose(
        default.run(x)["probabilities"], one.run(x)["probabilities"], atol=1e-6
    )
    from kerastl.errors import ConfigError

    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match=f"num_threads: .*got {bad!r}"):
            TFLiteArtifact(path, num_threads=bad)


def test_load_artifact_passes_num_threads_to_tflite_and_onnx_and_refuses_it_elsewhere(
    exported, model
):
    import kerastl
    from kerastl.errors import ConfigError

    out, _, _ = exported
    tfl = kerastl.load_artifact(out / f"{model.name}.tflite", num_threads=1)
    assert tfl.num_threads == 1 and tfl.runtime.endswith(", 1 thread")
    onnx_path = out / f"{model.name}.onnx"
    one, default = kerastl.load_artifact(onnx_path, num_threads=1), kerastl.load_artifact(onnx_path)
    assert one._session.get_session_options().intra_op_num_threads == 1
    assert one.runtime.endswith(", 1 thread") and "thread" not in default.runtime
    x = _photo_like(2, seed=5)
    np.testing.assert_allclose(
        one.run(x)["probabilities"], default.run(x)["probabilities"], atol=1e-6
    )
    with pytest.raises(ConfigError, match="num_threads: expected a positive integer, got 0"):
        kerastl.load_artifact(onnx_path, num_threads=0)
    with pytest.raises(ConfigError, match="num_threads: a saved_model artifact .* tflite and onnx"):
        kerastl.load_artifact(out / "saved_model" / model.name, num_threads=2)


def test_tflite_metadata_builtin_ops_and_int8_io(exported, model):
    import kerastl

    out, _, _ = exported
    f32 = kerastl.load_artifact(out / f"{model.name}.tflite")
    assert f32.metadata["class_names"] == CLASSES
    assert f32.runtime.startswith("ai_edge_litert.Interpreter, ")
    assert f32.custom_ops == [] and not any(op.startswith("Flex") for op in f32.ops)
    int8 = kerastl.load_artifact(out / f"{model.name}_int8.tflite")
    assert int8.input_dtype == "uint8"
    x = _photo_like(2, seed=9)
    assert int8.run(x)["probabilities"].dtype == np.float32  # dequantized for the caller


def test_onnx_names_batch_axis_opset_and_metadata(exported, model):
    import onnx

    out, _, _ = exported
    proto = onnx.load(str(out / f"{model.name}.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probabilities", "logits", "class_id"]
    for value in [*proto.graph.input, *proto.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["kerastl"])["class_names"] == CLASSES
    assert props["kerastl.labels"].split("\n") == CLASSES


def test_onnx_file_is_read_once_and_let_go_before_onnxruntime_loads_it(
    exported, model, monkeypatch
):
    """Loading an .onnx file for validation parses the graph once, for its metadata and its
    ops, and nothing but this test holds the graph while onnxruntime builds its session."""
    import sys

    import google.protobuf.message
    import onnx
    import onnxruntime as ort

    from kerastl.export.formats import FORMATS

    out, _, _ = exported
    loads, holders = [], []
    real_load, real_session = onnx.load, ort.InferenceSession

    def load(*args, **kwargs):
        loads.append(real_load(*args, **kwargs))
        return loads[-1]

    def session(*args, **kwargs):
        # references: the list's and getrefcount's argument; a third is a holder in kerastl
        holders.extend(sys.getrefcount(loads[i]) - 2 for i in range(len(loads)))
        return real_session(*args, **kwargs)

    monkeypatch.setattr(onnx, "load", load)
    monkeypatch.setattr(ort, "InferenceSession", session)
    fmt = FORMATS["onnx"]
    path = out / f"{model.name}.onnx"
    artifact = fmt.load(path)
    ops = artifact.non_builtin_ops
    assert len(loads) == 1 and holders == [0]
    # nor does the artifact keep a part of it (a upb sub-message holds the whole file)
    kept = [k for k, v in vars(artifact).items() if isinstance(v, google.protobuf.message.Message)]
    assert kept == []
    assert ops == [] and artifact.metadata["class_names"] == CLASSES


def test_tf2onnx_gets_a_compact_graph_def_and_the_frozen_one_is_let_go(model, monkeypatch):
    """The frozen GraphDef's arena keeps the bytes of the weights moved out of it: tf2onnx
    must get a copy parsed from the small graph, and nothing may hold the frozen one."""
    import sys

    import tf2onnx.tf_utils

    from kerastl.export._trace import prepare
    from kerastl.export.formats import onnx as kx_onnx

    seen, real = [], tf2onnx.tf_utils.compress_graph_def

    def compress(graph_def):
        seen.append(graph_def)
        return real(graph_def)

    monkeypatch.setattr(tf2onnx.tf_utils, "compress_graph_def", compress)
    graph, _ = kx_onnx._graph_for_tf2onnx(prepare(model))
    assert graph[0] is not seen[0] and graph[0] == seen[0]  # same graph, a fresh message
    refs = sys.getrefcount(seen[0])  # outside the assert: pytest's rewrite holds its values
    assert refs == 2  # this test's list and the call's argument: nothing in kerastl
    assert sum(len(v) for v in graph[1].values()) > 4 * model.count_params() * 0.9


def test_load_artifact_predicts_files_in_every_format(exported, model, tmp_path):
    from PIL import Image

    import kerastl

    out, _, _ = exported
    x = _photo_like(3, seed=11)
    paths = []
    for i, img in enumerate(x):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(img.astype(np.uint8)).resize((48, 40)).save(p)  # resized on load
        paths.append(str(p))
    results = {}
    for path in [
        out / "saved_model" / model.name,
        out / f"{model.name}.tflite",
        out / f"{model.name}.onnx",
    ]:
        art = kerastl.load_artifact(path)
        pred = art.predict(paths)
        assert pred["probabilities"].shape == (3, 3)
        assert all(label in CLASSES for label in pred["labels"])
        results[art.format] = pred["probabilities"]
    np.testing.assert_allclose(results["tflite"], results["saved_model"], atol=1e-5)
    np.testing.assert_allclose(results["onnx"], results["saved_model"], atol=1e-5)


def test_next_export_takes_next_version_and_never_touches_published(exported, model):
    import kerastl

    out, _, _ = exported
    before = sorted(p.name for p in (out / "saved_model" / model.name).iterdir())
    report = kerastl.export(model, out, formats=["saved_model"], latency_runs=1)
    assert report["saved_model_version"] == 2
    # The returned report is plain data: a user can json.dumps it as it is.
    assert json.loads(json.dumps(report))["artifacts"][0]["details"]["signatures"][0] == (
        "serving_default"
    )
    assert sorted(p.name for p in (out / "saved_model" / model.name).iterdir()) == before + ["2"]
    pb = out / "saved_model" / model.name / "1" / "saved_model.pb"
    stamp = pb.stat().st_mtime_ns
    with pytest.raises(kerastl.ConfigError, match=r"version: .*already exists"):
        kerastl.export(model, out, formats=["saved_model"], version=1)
    assert pb.stat().st_mtime_ns == stamp


def test_an_automatic_version_taken_meanwhile_publishes_as_the_next_one(
    model, tmp_path, monkeypatch
):
    """Two exports of one model at once both pick version 1: the later one takes 2."""
    import kerastl
    from kerastl.export.formats import FORMATS

    fmt = type(FORMATS["saved_model"])
    real = fmt.publish

    def racing(self, source, target):
        if target.name == "1":  # another export published version 1 while this one validated
            target.mkdir(parents=True)
            (target / "other_export").write_text("theirs")
        real(self, source, target)

    monkeypatch.setattr(fmt, "publish", racing)
    report = kerastl.export(model, tmp_path, formats=["saved_model"], latency_runs=1)
    root = tmp_path / "saved_model" / model.name
    assert report["saved_model_version"] == 2
    assert report["artifacts"][0]["path"] == f"saved_model/{model.name}/2"
    assert (root / "2" / "saved_model.pb").is_file()
    assert sorted(p.name for p in (root / "1").iterdir()) == ["other_export"]  # untouched
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert saved["saved_model_version"] == 2


# -- bad input: clear errors, nothing written ---------------------------------------------------


def test_not_a_keras_model(tmp_path):
    import kerastl

    with pytest.raises(kerastl.ConfigError, match=r"model: expected a keras.Model .* got dict"):
        kerastl.export({"not": "a model"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_dir_is_a_file(model, tmp_path):
    import kerastl

    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(kerastl.ConfigError, match=r"out_dir: .*file.txt' is a file"):
        kerastl.export(model, f)
    with pytest.raises(kerastl.ConfigError, match=r"out_dir: .* contains \['\[', '\]'\]"):
        kerastl.export(model, tmp_path / "run [3]", formats=["tflite"])
    assert not (tmp_path / "run [3]").exists()


def test_unknown_format_and_quantize_list_choices(model, tmp_path):
    import kerastl

    with pytest.raises(
        kerastl.ConfigError, match=r"Did you mean 'tflite'\?.*'onnx', 'saved_model'"
    ):
        kerastl.export(model, tmp_path, formats=["tflit"])
    with pytest.raises(kerastl.ConfigError, match=r"Unknown quantize='int4'.*'dynamic'"):
        kerastl.export(model, tmp_path, formats=["tflite"], quantize=["int4"])
    with pytest.raises(kerastl.ConfigError, match="applies to TFLite files only"):
        kerastl.export(model, tmp_path, formats=["onnx"], quantize=["float16"])
    with pytest.raises(kerastl.ConfigError, match="needs calibration_data"):
        kerastl.export(model, tmp_path, formats=["tflite"], quantize=["int8"])
    with pytest.raises(kerastl.ConfigError, match=r"int8_io='uint8' .* add 'int8'"):
        kerastl.export(model, tmp_path, formats=["tflite"], int8_io="uint8")
    with pytest.raises(kerastl.ConfigError, match=r"opset: got opset=9; .* 13..18"):
        kerastl.export(model, tmp_path, formats=["onnx"], opset=9)
    assert list(tmp_path.iterdir()) == []


def test_grey_validation_images_are_read_as_grey_files_are(model, tmp_path):
    """(N, H, W) grey arrays are repeated to RGB, as a grey PNG is decoded, not refused."""
    import kerastl
    from kerastl.export.modalities import get_modality

    grey = random_images(4, SIZE)[..., 0]
    exporter = get_modality(model.kerastl_config)
    x, _ = exporter.coerce(grey, "validation_data")
    assert x.shape == (4, SIZE, SIZE, 3)
    np.testing.assert_array_equal(x[..., 2], grey.astype(np.float32))
    with pytest.raises(kerastl.DataError, match=r"shape \(4, 9, 9\) .* Accepted shapes"):
        exporter.coerce(random_images(4, 9)[..., 0], "validation_data")


def test_calibration_data_of_wrong_shape(model, tmp_path):
    import kerastl

    with pytest.raises(
        kerastl.DataError,
        match=r"calibration_data: the data holds an array of shape \(5, 64, 64, 3\) .*"
        r"Accepted shapes: \(N, 32, 32, 3\)",
    ):
        kerastl.export(
            model,
            tmp_path,
            formats=["tflite"],
            quantize=["int8"],
            calibration_data=random_images(5, 64),
        )
    assert not list(tmp_path.glob("*.tflite")) and not list(tmp_path.glob(".kerastl-staging-*"))


def test_labels_that_do_not_fit_the_output_are_refused_before_converting(model, tmp_path):
    import kerastl

    x = _photo_like(6)
    with pytest.raises(
        kerastl.DataError,
        match=r"validation_data: the labels have shape \(6, 2\) but this classification model's "
        r"output has shape \(6, 3\); give labels of shape \(6,\) \(class ids\) or \(6, 3\)",
    ):
        kerastl.export(model, tmp_path, formats=["onnx"], validation_data=(x, np.zeros((6, 2))))
    assert not list(tmp_path.iterdir())


def test_nan_inputs_ragged_lists_and_bad_counts_are_refused(model, tmp_path):
    import kerastl

    x = _photo_like(4)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(kerastl.DataError, match="validation_data: 1 values are NaN or infinite"):
        kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x)
    ragged = [_photo_like(1)[0], random_images(1, 16)[0]]
    with pytest.raises(kerastl.DataError, match="validation_data: could not read it as one array"):
        kerastl.export(model, tmp_path, formats=["onnx"], validation_data=ragged)
    with pytest.raises(kerastl.DataError, match="validation_data: no file at 'val/none.png'"):
        kerastl.export(model, tmp_path, formats=["onnx"], validation_data=["val/none.png"])
    with pytest.raises(
        kerastl.ConfigError, match="latency_runs: expected a positive integer, got 0"
    ):
        kerastl.export(model, tmp_path, formats=["onnx"], latency_runs=0)
    assert not list(tmp_path.iterdir())


def test_one_validation_example_still_checks_two_batch_sizes(model, tmp_path):
    import kerastl

    report = kerastl.export(
        model, tmp_path, formats=["onnx"], validation_data=_photo_like(1), latency_runs=1
    )
    assert report["validation"]["batch_sizes"] == [1, 2]
    assert report["artifacts"][0]["parity"]["batch_sizes"] == [1, 2]
    assert any("repeated" in n for n in report["notes"])


def test_missing_optional_dependency_names_pip_install(model, tmp_path, monkeypatch):
    import kerastl

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx -> ImportError
    with pytest.raises(kerastl.MissingDependencyError, match="pip install tf2onnx"):
        kerastl.export(model, tmp_path, formats=["onnx"])
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_overwrite(model, tmp_path):
    import kerastl

    target = tmp_path / f"{model.name}.onnx"
    target.write_bytes(b"published")
    with pytest.raises(kerastl.ConfigError, match="overwrite=True"):
        kerastl.export(model, tmp_path, formats=["onnx"])
    assert target.read_bytes() == b"published"


def test_failed_validation_publishes_nothing(model, tmp_path):
    import kerastl

    old = tmp_path / f"{model.name}.onnx"
    old.write_bytes(b"published")
    with pytest.raises(kerastl.ValidationError, match=r"nothing was published.*rel_err"):
        kerastl.export(
            model,
            tmp_path,
            formats=["onnx"],
            overwrite=True,
            latency_runs=1,
            tolerances={"onnx/float32": {"max_rel_err": 0.0}},  # never exactly 0 here
        )
    assert old.read_bytes() == b"published"
    assert not list(tmp_path.glob(".kerastl-staging-*"))
    report = json.loads((tmp_path / "export_report.failed.json").read_text())
    assert report["status"] == "failed" and not report["artifacts"][0]["passed"]
    assert not (tmp_path / "export_report.json").exists(), "a failed export wrote the live report"


# -- validation logic on fake artifacts -----------------------------------------------------------


class _Fake:
    def __init__(self, fn):
        self.fn = fn

    def run(self, x):
        return self.fn(x)

    def run_batched(self, x, bs):
        parts = [self.run(x[i : i + bs]) for i in range(0, len(x), bs)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _reference(x):
    p = np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x.max((1, 2, 3))], -1)
    p = p / p.sum(-1, keepdims=True)
    return {"probabilities": p.astype(np.float32), "class_id": p.argmax(-1)}


def test_latency_takes_the_calls_already_made_as_its_first_runs():
    from kerastl.export.formats.base import median_ms

    calls = []
    # three calls done (as validation's batch-1 calls after the first): nothing more to run
    assert median_ms(lambda: calls.append(1), runs=3, done=[0.004, 0.001, 0.002]) == 2.0
    assert calls == []
    # one done: the default warm-up call (the caller's last call may have been at another
    # batch size), two more timed
    median_ms(lambda: calls.append(1), runs=3, done=[0.001])
    assert len(calls) == 3
    # none done: a warm-up call, then the timed ones
    calls.clear()
    median_ms(lambda: calls.append(1), runs=3)
    assert len(calls) == 4
    # done calls count towards the time budget: over it with three runs, nothing is added
    median_ms(lambda: 1 / 0, runs=10, done=[1.0, 1.0, 1.0])


def test_release_memory_skips_objects_alive_before_the_export_but_frees_its_own_cycles():
    import gc
    import weakref

    from kerastl.export.formats.base import objects_alive_now_uncollected, release_memory

    class Node:
        pass

    assert gc.get_freeze_count() == 0
    with objects_alive_now_uncollected():
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # everything alive at entry is out of the collector's sight
        alive = [Node() for _ in range(500)]  # allocated by the export, still alive
        with objects_alive_now_uncollected():  # nested: no second freeze
            assert gc.get_freeze_count() < frozen + len(alive)
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle the export allocates and drops
            ref = weakref.ref(a)
            del a, b
            release_memory()
            assert ref() is None, "a cycle allocated inside the block was not collected"
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    del alive
    with pytest.raises(RuntimeError), objects_alive_now_uncollected():
        raise RuntimeError("an export that raises gives the objects back too")
    assert gc.get_freeze_count() == 0
    gc.freeze()  # the caller's own freeze (before forking workers) is left as it is
    try:
        with objects_alive_now_uncollected():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _tiny_model_with_onnx_calls_counted(monkeypatch):
    """A one-Dense image model, and the list the ONNX file's calls append their batch size to."""
    import keras

    from kerastl.export.formats import onnx as kx_onnx

    inputs = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    file_calls: list[int] = []
    real_run = kx_onnx.OnnxArtifact.run

    def run(self, x):
        file_calls.append(len(x))
        return real_run(self, x)

    monkeypatch.setattr(kx_onnx.OnnxArtifact, "run", run)
    return keras.Model(inputs, h, name="tiny"), file_calls


def test_export_times_the_validation_calls_instead_of_repeating_them(tmp_path, monkeypatch):
    """Batch-1 latency (Keras' and the file's) is taken from the calls validation makes one
    example at a time; only the runs still missing are made. 16 inputs, latency_runs=3:
    validation calls the file 4 times at batch 1, 3 times at batch 4 for the 12 inputs left
    (as the Keras reference ran them), once more at batch 1 to check determinism, and the
    latency adds none (before: a warm-up and 3 timed calls more)."""
    import keras

    import kerastl

    keras.utils.set_random_seed(0)
    model, file_calls = _tiny_model_with_onnx_calls_counted(monkeypatch)
    x = random_images(16, 8)
    report = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x, latency_runs=3)
    assert report["status"] == "passed"
    assert file_calls == [1, 1, 1, 1, 4, 4, 4, 1], file_calls
    art = report["artifacts"][0]
    median = float(np.median(art["parity"]["batch1_ms"][1:]))
    assert art["latency_ms"] == pytest.approx(median, abs=2e-3)
    assert report["keras_latency_ms"] > 0


def test_keras_reference_runs_beside_the_saved_model_write_only(tmp_path, monkeypatch):
    """With a SavedModel first, Keras' batch outputs are computed in a thread while it is
    written (started before the write, joined for validation); a TFLite-only export
    computes them first, in the caller's thread. Both validate to the same bits, and an
    error of Keras' own run is raised as itself, with nothing published."""
    import threading

    import keras

    import kerastl
    from kerastl.export import _trace
    from kerastl.export.formats import saved_model

    keras.utils.set_random_seed(0)
    model = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3))
    events, predict, write = [], _trace.Prepared.predict, saved_model.write

    def noted_predict(self, *args, **kwargs):
        events.append(("predict", threading.current_thread().name))
        return predict(self, *args, **kwargs)

    def noted_write(*args, **kwargs):
        events.append(("write start", threading.current_thread().name))
        return write(*args, **kwargs)

    monkeypatch.setattr(_trace.Prepared, "predict", noted_predict)
    monkeypatch.setattr(saved_model, "write", noted_write)
    x = random_images(12, 32)
    sm = kerastl.export(model, tmp_path / "a", formats=["saved_model"], validation_data=x)
    threads = dict(events)
    assert threads["predict"].startswith("kerastl-reference"), events
    assert threads["write start"] == "MainThread", events
    events.clear()
    lite = kerastl.export(model, tmp_path / "b", formats=["tflite"], validation_data=x)
    assert events == [("predict", "MainThread")], events
    assert sm["artifacts"][0]["parity"]["max_rel_err"] == 0.0
    assert lite["keras_latency_ms"] > 0 and sm["keras_latency_ms"] > 0

    def failing(self, x):
        raise RuntimeError("Keras ran out of something")

    monkeypatch.setattr(_trace.Prepared, "predict", failing)
    with pytest.raises(RuntimeError, match="ran out of something"):
        kerastl.export(model, tmp_path / "c", formats=["saved_model"], validation_data=x)
    assert not (tmp_path / "c" / "saved_model").exists()
    from kerastl.export.pipeline import STAGING_PREFIX

    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(STAGING_PREFIX)]


@pytest.mark.parametrize("budget, more", [(0.0, 0), (100.0, 7)])
def test_export_latency_follows_its_budget_without_a_warm_up_call(
    tmp_path, monkeypatch, budget, more
):
    """Validation's last call is at batch 1, so the file's latency runs start at once: the
    3 timed batch-1 calls of validation, then more (no untimed one first) up to
    latency_runs=10 while the export's latency budget lasts."""
    import kerastl
    from kerastl.export import pipeline

    model, file_calls = _tiny_model_with_onnx_calls_counted(monkeypatch)
    monkeypatch.setattr(pipeline, "LATENCY_BUDGET_S", budget)
    x = random_images(16, 8)
    report = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x)
    assert file_calls == [1, 1, 1, 1, 4, 4, 4, 1] + [1] * more, file_calls
    assert report["artifacts"][0]["latency_ms"] > 0


def test_validate_passes_exact_and_catches_noise_shift_and_static_batch():
    from kerastl.export.validate import validate

    x = random_images(10, 8)
    ref = _reference(x)
    ok = validate(_Fake(_reference), ref, x, "onnx/float32", "classification")
    assert ok["passed"] and ok["max_rel_err"] == 0.0 and ok["batch_sizes"] == [1, 4]
    rng = np.random.default_rng(0)

    def noisy(v):
        out = _reference(v)
        out["probabilities"] = out["probabilities"] + rng.normal(
            0, 1e-3, out["probabilities"].shape
        )
        return out

    bad = validate(_Fake(noisy), ref, x, "onnx/float32", "classification")
    assert not bad["passed"] and not bad["deterministic"]
    assert any("two identical calls differ" in f for f in bad["failures"])

    def shifted(v):
        out = _reference(v)
        out["probabilities"] = out["probabilities"] + 0.001
        return out

    bad = validate(_Fake(shifted), ref, x, "tflite/float32", "classification")
    assert any(f.startswith("probabilities: rel_err") for f in bad["failures"])
    assert validate(_Fake(shifted), ref, x, "tflite/float16", "classification")["passed"]

    def batch_one_only(v):
        if len(v) != 1:
            raise ValueError("static batch")
        return _reference(v)

    with pytest.raises(ValueError, match="static batch"):
        validate(_Fake(batch_one_only), ref, x, "onnx/float32", "classification")


def test_float16_gate_takes_half_precision_error_and_refuses_a_file_that_drifts():
    """A float16 file of a small-logit head was refused at 1.1 % of its largest logit
    (cosine 0.999996, every top-1 the same); drift that changes the outputs' direction or
    a 10 % error is still refused."""
    from kerastl.export.validate import validate

    x = random_images(12, 8)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 0.3, (12, 3)).astype(np.float32)
    logits[np.arange(12), rng.integers(0, 3, 12)] += 1.0  # a clear top-1 for each example

    def out(z):
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return {"logits": z, "probabilities": p.astype(np.float32), "class_id": z.argmax(-1)}

    ref = out(logits)
    rows = {tuple(np.round(v.ravel()[:6], 3)): i for i, v in enumerate(x)}

    def file_with(err):
        def run(v):
            idx = [rows[tuple(np.round(r.ravel()[:6], 3))] for r in v]
            return out(logits[idx] + err[idx])

        return _Fake(run)

    half = np.zeros_like(logits)
    half[0, 0] = 0.015 * np.abs(logits).max()  # 1.5 % of the largest logit, on one value
    half += rng.normal(0, 1e-3, logits.shape).astype(np.float32)
    ok = validate(file_with(half), ref, x, "tflite/float16", "classification")
    assert ok["passed"], ok["failures"]
    assert ok["rel_err"]["logits"] > 0.01  # refused under the former 1e-2 rule
    far = rng.normal(0, 0.1 * np.abs(logits).max(), logits.shape).astype(np.float32)
    bad = validate(file_with(far), ref, x, "tflite/float16", "classification")
    assert not bad["passed"] and any("rel_err" in f for f in bad["failures"]), bad["failures"]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 8, 16, 17])
def test_validate_compares_every_input_at_each_batch_size(n):
    """Validation runs the first inputs at batch 1 and the rest at batch 4 (the last 4 when
    fewer than 4 are left): a file wrong on one input only, wrong at the larger batch only,
    or giving one row per call, fails wherever that input sits; a right file passes."""
    from kerastl.export.validate import validate

    x = random_images(n, 8, seed=n)
    ref = _reference(x)
    assert validate(_Fake(_reference), ref, x, "onnx/float32", "classification")["passed"]
    for wrong in range(n):

        def one_wrong(v, wrong=wrong):
            out = _reference(v)
            hit = np.all(v == x[wrong], axis=(1, 2, 3))
            out["probabilities"] = out["probabilities"] + 0.01 * hit[:, None]
            return out

        bad = validate(_Fake(one_wrong), ref, x, "onnx/float32", "classification")
        assert not bad["passed"], wrong

    def wrong_when_batched(v):
        out = _reference(v)
        out["probabilities"] = out["probabilities"] + 0.01 * (len(v) > 1)
        return out

    bad = validate(_Fake(wrong_when_batched), ref, x, "onnx/float32", "classification")
    assert not bad["passed"] and bad["batch_sizes"] == [1, min(n, 4)]

    def first_row_only(v):  # right values, but one row per call whatever the batch
        return {k: o[:1] for k, o in _reference(v).items()}

    bad = validate(_Fake(first_row_only), ref, x, "onnx/float32", "classification")
    assert not bad["passed"] and any("rows for" in f for f in bad["failures"]), bad["failures"]


def test_float64_referee_tells_rounding_from_a_broken_artifact():
    """Keras float32 is itself 3e-4 from the exact result: an artifact as close passes."""
    from kerastl.export.validate import validate

    x = random_images(10, 8, seed=5)
    exact = {k: v.astype(np.float64) for k, v in _reference(x).items()}

    def off_by(v, amount):  # a deterministic rounding-like deviation of the given size
        out = _reference(v)
        p = out["probabilities"].astype(np.float64)
        out["probabilities"] = p * (1 + amount * np.cos(p * 1e4))  # same at any batch size
        out["probabilities"] = out["probabilities"].astype(np.float32)
        return out

    keras32 = off_by(x, 3e-4)  # the Keras reference, itself 3e-4 from float64
    calls = []

    def float64_result(v):
        calls.append(len(v))
        return {"probabilities": exact["probabilities"][: len(v)]}

    close = validate(
        _Fake(lambda v: off_by(v, -3e-4)),
        keras32,
        x,
        "onnx/float32",
        "classification",
        exact=float64_result,
    )
    verdict = close["float64_referee"]["probabilities"]
    assert close["passed"], close["failures"]
    assert close["max_rel_err"] > 1e-4  # it did fail the plain float32 bound
    assert 1e-4 < verdict["keras_vs_float64"] <= 3.1e-4
    assert verdict["artifact_vs_float64"] <= verdict["allowed"]

    broken = validate(
        _Fake(lambda v: off_by(v, 5e-3)),
        keras32,
        x,
        "onnx/float32",
        "classification",
        exact=float64_result,
    )
    assert not broken["passed"]
    assert "float64 referee" in broken["failures"][0]
    assert not broken["float64_referee"]["probabilities"]["passed"]

    # Without the referee the same close artifact fails; a passing one never calls it.
    assert not validate(_Fake(lambda v: off_by(v, -3e-4)), keras32, x, "onnx/float32", None)[
        "passed"
    ]
    calls.clear()
    validate(
        _Fake(lambda v: off_by(v, 3e-4)), keras32, x, "onnx/float32", None, exact=float64_result
    )
    assert calls == []

    # Keras float32 itself far from float64 (a deep random-init net): a file within the
    # tolerance of the exact result is right; one as far off as Keras is not judged right.
    keras_lost = off_by(x, 5e-2)
    exact_file = validate(
        _Fake(lambda v: off_by(v, 1e-6)),
        keras_lost,
        x,
        "onnx/float32",
        None,
        exact=float64_result,
    )
    assert exact_file["passed"], exact_file["failures"]
    lost_file = validate(
        _Fake(lambda v: off_by(v, -5e-2)), keras_lost, x, "onnx/float32", None, exact=float64_result
    )
    assert not lost_file["passed"]

    def no_float64(v):  # a layer that cannot be rebuilt in float64
        raise ValueError("Could not automatically infer the output shape")

    stuck = validate(
        _Fake(lambda v: off_by(v, -3e-4)), keras32, x, "onnx/float32", None, exact=no_float64
    )
    assert not stuck["passed"]
    assert "float64 referee could not run the model: ValueError: Could not" in stuck["failures"][0]


def test_float64_clone_runs_a_kerastl_model_in_float64(monkeypatch):
    import kerastl
    from kerastl.export._trace import float64_clone, prepare

    model = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3))
    prepared = prepare(model)
    clone = float64_clone(prepared.model)
    assert clone.get_layer("backbone").compute_dtype == "float64"
    # every weight, BatchNorm statistics included, copied (variable by variable) and cast
    pairs = list(zip(clone.weights, prepared.model.weights, strict=True))
    assert len(pairs) > 100 and any("moving" in w.path for w, _ in pairs)
    for mine, theirs in pairs:
        assert mine.path.split("/")[-1] == theirs.path.split("/")[-1]
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs).astype(mine.dtype))
        assert np.asarray(mine).dtype == (
            np.float64 if theirs.dtype.startswith("float") else theirs.dtype
        )
    del clone, pairs
    x = random_images(4, 32, seed=2)
    import weakref

    from kerastl.export import _trace

    clones = []

    def tracked_clone(m):
        clone = float64_clone(m)
        clones.append(weakref.ref(clone))
        return clone

    monkeypatch.setattr(_trace, "float64_clone", tracked_clone)
    exact = prepared.exact_predict(x)
    ref = prepared.predict(x)
    assert exact["probabilities"].dtype == np.float64
    np.testing.assert_allclose(exact["probabilities"], ref["probabilities"], rtol=1e-3, atol=1e-5)
    assert prepared.exact_predict(x) is exact  # cached for the next artifact
    # the float64 copy (twice the weights) is not kept once its outputs are
    import gc

    gc.collect()
    assert len(clones) == 1 and clones[0]() is None
    again = prepared.exact_predict(x.copy())  # other inputs: built again
    assert len(clones) == 2
    np.testing.assert_allclose(again["probabilities"], exact["probabilities"], rtol=1e-6)


def test_validate_reports_agreement_and_metric_delta():
    from kerastl.export.validate import validate

    x = random_images(20, 8, seed=3)
    ref = _reference(x)
    labels = ref["class_id"].copy()
    labels[:5] = (labels[:5] + 1) % 3

    def flipped(v):
        out = _reference(v)
        out["probabilities"] = out["probabilities"][:, ::-1].copy()
        return out

    report_only = {"min_agreement": None, "max_metric_drop": None, "min_cosine": None}
    res = validate(
        _Fake(flipped),
        ref,
        x,
        "tflite/int8",
        "classification",
        labels,
        {"tflite/int8": report_only},
    )
    assert res["passed"]  # every gate switched off: figures are reported only
    assert res["metric"]["keras"] == pytest.approx(0.75)
    assert res["metric"]["delta"] == pytest.approx(res["metric"]["artifact"] - 0.75)
    strict = validate(_Fake(flipped), ref, x, "tflite/int8", "classification", labels)
    assert not strict["passed"]  # the default agreement gate (0.9) refuses it
    assert any("top-1 agreement with Keras" in f for f in strict["failures"])


def test_quantized_file_whose_outputs_collapsed_fails_the_cosine_floor():
    """An int8 embedding that outputs zeros has no agreement to report: the floor catches it."""
    from kerastl.export.validate import validate

    x = random_images(12, 8, seed=4)
    emb = {"embedding": np.stack([x.mean((1, 2, 3)), -x.std((1, 2, 3)), x[:, 0, 0, 0]], -1)}

    def zeros(v):
        return {"embedding": np.zeros((len(v), 3), np.float32)}

    def rounded(v):  # int8-like rounding of the right answer
        e = np.stack([v.mean((1, 2, 3)), -v.std((1, 2, 3)), v[:, 0, 0, 0]], -1)
        return {"embedding": (np.round(e / 4) * 4).astype(np.float32)}

    dead = validate(_Fake(zeros), emb, x, "tflite/int8", "embedding")
    assert not dead["passed"] and dead["cosine"] == 0.0
    assert "mean cosine similarity with Keras 0.000 < 0.8" in dead["failures"][0]
    good = validate(_Fake(rounded), emb, x, "tflite/dynamic", "embedding")
    assert good["passed"] and good["cosine"] > 0.99


def test_unknown_tolerance_key():
    from kerastl import ConfigError
    from kerastl.export.validate import check_overrides

    with pytest.raises(ConfigError, match="Did you mean 'tflite/int8'"):
        check_overrides({"tflite/int9": {"min_agreement": 0.9}})
    with pytest.raises(ConfigError, match=r"unknown keys \['rtol'\]"):
        check_overrides({"tflite/int8": {"rtol": 0.9}})


def test_modality_dispatch_is_pluggable():
    from kerastl import ConfigError
    from kerastl.export.modalities import (
        ModalityExporter,
        get_modality,
        get_modality_class,
        register_modality,
    )

    assert get_modality({"input": {"name": "image", "shape": [8, 8, 3]}}).name == "image"
    with pytest.raises(ConfigError, match=r"Unknown modality 'smell'.*'image'"):
        get_modality_class("smell")

    class FakeText(ModalityExporter):
        name = "fake_text"
        formats = ("saved_model",)

    register_modality("fake_text", FakeText)
    try:
        meta = {"input": {"name": "fake_text", "shape": []}}
        assert isinstance(get_modality(meta), FakeText)
    finally:
        from kerastl.export import modalities as _modality

        _modality._REGISTRY.pop("fake_text")


def test_onnx_falls_back_when_an_optimiser_breaks_the_graph(model, tmp_path, monkeypatch):
    import kerastl
    from kerastl.export.formats import onnx as kx_onnx

    real_probe, calls = kx_onnx._probe, []

    def probe(path, prepared, batch, reference):
        calls.append(path.stat().st_size)  # the probed graph is on disk already
        if len(calls) == 1:  # as if the first graph failed in onnxruntime (SegFormer does)
            return "Fail: Reshape node cannot reshape"
        return real_probe(path, prepared, batch, reference)

    monkeypatch.setattr(kx_onnx, "_probe", probe)
    report = kerastl.export(model, tmp_path, formats=["onnx"], latency_runs=1)
    assert len(calls) == 2 and report["status"] == "passed"
    assert "['reshape_optimizer'] switched off" in report["artifacts"][0]["details"]["tf2onnx"]


def test_onnx_file_written_in_parts_is_the_model_onnx_save_writes(model, tmp_path):
    """write_in_parts (one initializer at a time) gives the message onnx.save gives."""
    import onnx

    import kerastl
    from kerastl.export.formats import onnx as kx_onnx

    report = kerastl.export(model, tmp_path, formats=["onnx"], latency_runs=1)
    proto = onnx.load(str(tmp_path / report["artifacts"][0]["path"]))
    assert len(proto.graph.initializer) > 10 and proto.metadata_props
    kx_onnx.write_in_parts(proto, tmp_path / "parts.onnx")
    onnx.save(proto, str(tmp_path / "whole.onnx"))
    again = onnx.load(str(tmp_path / "parts.onnx"))
    assert again == proto
    assert (tmp_path / "parts.onnx").stat().st_size == (tmp_path / "whole.onnx").stat().st_size
    onnx.checker.check_model(str(tmp_path / "parts.onnx"), full_check=True)


def test_tf2onnx_constant_node_protos_do_not_copy_their_values():
    """Inside the conversion a constant's NodeProto holds no copy of its value; the
    value stays in the node and reaches the ONNX graph as an initializer."""
    from tf2onnx.graph import Graph

    from kerastl.export.formats import onnx as kx_onnx

    graph = Graph([], opset=17)
    const = graph.make_const("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    graph.add_graph_output(const.output[0])
    with kx_onnx._const_protos_without_values():
        graph.update_proto()
        assert [a.name for a in const.op.attribute] == []
        proto = graph.make_graph("doc")
    assert const.get_tensor_value() == [[0, 1, 2], [3, 4, 5]]
    assert [t.name for t in proto.initializer] == [const.output[0]]
    graph.update_proto()  # outside: tf2onnx's own behaviour is back
    assert [a.name for a in const.op.attribute] == ["value"]


def test_onnx_folds_a_shared_layers_weights_once(tmp_path):
    """ALBERT calls one layer's weights in every layer, each call through its own read of the
    same constant; tf2onnx folded every read into a constant of its own (ALBERT-base: 74 large
    constants of 8 distinct values, 3.7 GB peak for 45 MB of weights). Identical
    constant-only nodes are merged before tf2onnx, so each weight is folded once."""
    import keras

    import kerastl
    from kerastl.export._trace import prepare
    from kerastl.export.formats import onnx as kx_onnx

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="features")
    shared, h = keras.layers.Dense(64, activation="tanh", name="shared"), inputs
    for _ in range(6):
        h = shared(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h), name="shared6")
    _, graph_def, _, outputs = kx_onnx._frozen_graph_def(prepare(model))
    kx_onnx.merge_duplicate_constants(graph_def)

    def kernel_reads(gd):
        consts = {n.name for n in gd.node if n.op == "Const"}
        big = {n.name for n in gd.node if n.name in consts and n.attr["value"].ByteSize() > 16000}
        return [n.name for n in gd.node if n.op != "Const" and set(n.input) & big]

    reads = kernel_reads(graph_def)
    assert len(reads) >= 6, reads  # one read per call
    merged = kx_onnx.merge_constant_expressions(graph_def, keep=outputs)
    assert merged >= 5
    assert len(kernel_reads(graph_def)) == 1
    x = np.random.default_rng(0).normal(size=(8, 64)).astype("float32")
    report = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x, latency_runs=1)
    assert report["status"] == "passed"
    got = kerastl.load_artifact(tmp_path / "shared6.onnx").run(x)["probabilities"]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


def test_onnx_freeze_reads_each_variable_only_when_its_constant_is_made():
    """TensorFlow's converter data reads every variable into numpy first and holds them all
    while it writes the constants: two copies of the weights at the freeze's peak
    (ConvNeXt-B: 1.94 vs 1.61 GB). kerastl's holds no value until a constant is made; the
    frozen GraphDef is TensorFlow's, byte for byte."""
    import keras
    from tensorflow.python.framework import convert_to_constants as c2c

    from kerastl.export import _freeze
    from kerastl.export._trace import prepare

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Conv2D(8, 3, groups=8, name="depthwise")(h)
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out, name="small")
    concrete = prepare(model).tf_function().get_concrete_function()
    kwargs = {"func": concrete, "lower_control_flow": False, "aggressive_inlining": True}
    theirs = c2c._FunctionConverterDataInEager(**kwargs)
    assert sum(isinstance(t[0], np.ndarray) for t in theirs.tensor_data.values()) >= 8
    want, _ = c2c._replace_variables_by_constants(converter_data=theirs)
    ours = _freeze.reading_when_needed()(**kwargs)
    assert set(ours.tensor_data) == set(theirs.tensor_data)
    assert not any(isinstance(t[0], np.ndarray) for t in ours.tensor_data.values())
    got, _ = _freeze.freeze(concrete)
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)


def test_tf2onnx_lets_go_of_each_weight_once_it_has_used_it(monkeypatch):
    """tf2onnx held the weights apart from the GraphDef until the conversion ended (ViT-L:
    tf2onnx step 5.72 -> 5.31 GB without that). The main graph's node conversion, their
    last reader, now takes each weight out as it uses it; the graph still converts right."""
    import keras
    import onnxruntime as ort
    from tf2onnx import tfonnx

    from kerastl.export._trace import prepare
    from kerastl.export.formats import onnx as kx_onnx

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(16, 3, name="conv")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="mix")(h)
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out, name="small")
    prepared = prepare(model)
    graph, names = kx_onnx._graph_for_tf2onnx(prepared)
    weights = graph[1]
    n = len(weights)
    assert n >= 2
    seen = {}
    to_onnx = tfonnx.tensorflow_to_onnx

    def spy_convert(g, shape_override, values=None, *args):
        seen["convert_in"] = len(values)
        out = to_onnx(g, shape_override, values, *args)
        seen["convert_out"], seen["held_apart"] = len(values), len(weights)
        return out

    monkeypatch.setattr(tfonnx, "tensorflow_to_onnx", spy_convert)
    proto, _ = kx_onnx._convert_once(prepared, graph, 17, *names, ())
    assert seen["convert_in"] == n and seen["convert_out"] == 0 and seen["held_apart"] == 0
    assert tfonnx.tensorflow_to_onnx is spy_convert  # put back after the conversion
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_onnx_inlines_grouped_convolutions_with_the_weights_held_apart(tmp_path):
    """A grouped convolution (ConvNeXt's) stays a function call after freezing on CPU; the
    call is inlined by Grappler on the graph whose large constants are emptied (tf2onnx's
    own route ran Grappler with constant folding on the weights: ConvNeXt-Base peaked at
    5.7 GB in that step). The file must still match Keras."""
    import keras

    import kerastl
    from kerastl.export._trace import prepare
    from kerastl.export.formats import onnx as kx_onnx

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 8), name="image")
    h = keras.layers.Conv2D(32, 3, padding="same", groups=4, name="grouped")(inputs)
    h = keras.layers.Conv2D(32, 3, padding="same", groups=32, name="depthwise")(h)
    out = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out, name="grouped_conv")
    _, graph_def, ins, outs = kx_onnx._frozen_graph_def(prepare(model))
    assert kx_onnx._has_calls(graph_def)
    from tf2onnx.tf_utils import compress_graph_def

    weights = compress_graph_def(graph_def)
    assert any(n.op == "Const" and not n.attr["value"].tensor.tensor_content
               for n in graph_def.node if n.name in weights)  # fmt: skip
    inlined = kx_onnx._inline_calls(graph_def, ins, outs)
    assert not kx_onnx._has_calls(inlined)
    assert set(weights) <= {n.name for n in inlined.node}  # the weights' names survive
    x = np.random.default_rng(0).uniform(0, 255, size=(8, 16, 16, 8)).astype("float32")
    report = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x, latency_runs=1)
    assert report["status"] == "passed"
    got = kerastl.load_artifact(tmp_path / "grouped_conv.onnx").run(x)["probabilities"]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


def test_onnx_over_the_single_file_limit_keeps_weights_beside_it(model, tmp_path, monkeypatch):
    """Graphs over protobuf's 2 GiB go out as ONNX external data, probed, checked, published.

    The limit is lowered so a small model takes the path a ViT-H (2.5 GB) would.
    """
    import onnx

    import kerastl
    from kerastl.export.formats import onnx as kx_onnx

    x = _photo_like(8)
    first = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x, latency_runs=1)
    small = tmp_path / first["artifacts"][0]["path"]
    assert not kx_onnx.data_file(small).exists()

    monkeypatch.setattr(kx_onnx, "SINGLE_FILE_LIMIT", 1000)
    report = kerastl.export(
        model, tmp_path, formats=["onnx"], validation_data=x, latency_runs=1, overwrite=True
    )
    art = report["artifacts"][0]
    path = tmp_path / art["path"]
    data = kx_onnx.data_file(path)
    assert report["status"] == "passed" and art["parity"]["max_rel_err"] < 1e-4
    assert art["details"]["external_data"] == data.name
    assert data.stat().st_size > 20 * path.stat().st_size  # the weights left the graph file
    assert art["size_bytes"] == path.stat().st_size + data.stat().st_size
    graph = onnx.load(str(path), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(len(t.raw_data) < 1024 for t in graph.initializer)
    ref = model.predict(x[:3], verbose=0)
    got = kerastl.load_artifact(path).predict(x[:3])["probabilities"]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not list(tmp_path.glob(".*staging*")) and sorted(
        p.name for p in tmp_path.iterdir() if p.suffix in (".onnx", ".data")
    ) == [path.name, data.name]

    monkeypatch.setattr(kx_onnx, "SINGLE_FILE_LIMIT", 2**31 - 2**26)
    kerastl.export(
        model, tmp_path, formats=["onnx"], validation_data=x, latency_runs=1, overwrite=True
    )
    assert path.exists() and not data.exists()  # the replaced file's weights went with it


def _plain_classifier(classes: int = 3, name: str = "plain"):
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ],
        name=name,
    )


def test_plain_keras_softmax_model_exports_as_a_classifier(tmp_path):
    import onnx

    import kerastl

    x = _photo_like(8)
    y = np.arange(8) % 3
    report = kerastl.export(
        _plain_classifier(), tmp_path, formats=["tflite", "onnx"], validation_data=(x, y)
    )
    assert report["model"]["task"] == "classification"
    assert report["model"]["outputs"] == ["probabilities", "class_id"]
    for art in report["artifacts"]:
        assert art["parity"]["agreement"] == 1.0 and art["parity"]["metric"]["name"] == "accuracy"
    props = {p.key for p in onnx.load(str(tmp_path / "plain.onnx")).metadata_props}
    assert {"kerastl", "kerastl.task", "kerastl.kerastl_version"} <= props
    got = kerastl.load_artifact(tmp_path / "plain.tflite").predict(x[:2])
    assert got["class_id"].shape == (2,) and got["probabilities"].shape == (2, 3)


def test_new_head_on_a_kerastl_model_does_not_inherit_its_labels(model, tmp_path):
    import keras

    import kerastl

    inputs = keras.Input((SIZE, SIZE, 3))
    outer = keras.Model(
        inputs, keras.layers.Dense(5, activation="softmax")(model(inputs)), name="wrapped"
    )
    report = kerastl.export(outer, tmp_path, formats=["tflite"], latency_runs=1)
    assert report["model"]["class_names"] is None  # not the inner model's 3 labels
    got = kerastl.load_artifact(tmp_path / "wrapped.tflite").predict(_photo_like(2))
    assert got["probabilities"].shape == (2, 5)


def test_subclassed_model_is_refused_clearly(tmp_path):
    import keras

    import kerastl
    from kerastl import ConfigError

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    sub = Sub()
    sub(np.zeros((1, 4), "float32"))
    with pytest.raises(ConfigError, match="model: Sub is a subclassed Keras model"):
        kerastl.export(sub, tmp_path, formats=["onnx"])


def test_format_and_quantize_lists_drop_blanks_and_repeats():
    from kerastl.export.pipeline import _as_list

    assert _as_list("float16, float16,,int8", "quantize") == ["float16", "int8"]
    assert _as_list(["onnx", "onnx", "tflite"], "formats") == ["onnx", "tflite"]


def test_any_size_model_predicts_files_of_different_sizes(tmp_path):
    import keras
    from PIL import Image

    import kerastl

    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name="anysize",
    )
    kerastl.export(model, tmp_path, formats=["onnx"], validation_data=_photo_like(4))
    files = []
    for i, (h, w) in enumerate([(20, 30), (40, 24)]):
        img = random_images(1, 64, seed=i)[0, :h, :w].astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    got = kerastl.load_artifact(tmp_path / "anysize.onnx").predict(files)
    ref = np.concatenate(
        [model.predict(np.asarray(Image.open(f), np.float32)[None], verbose=0) for f in files]
    )
    np.testing.assert_allclose(got["probabilities"], ref, atol=1e-5)
    assert got["class_id"].shape == (2,)


def test_validation_data_can_be_an_image_folder_with_class_subfolders(model, tmp_path):
    from PIL import Image

    import kerastl

    images = _photo_like(6, seed=9)
    for i, img in enumerate(images):
        folder = tmp_path / "val" / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    report = kerastl.export(
        model, tmp_path / "out", formats=["onnx"], validation_data=str(tmp_path / "val")
    )
    assert report["validation"]["samples"] == 6 and report["validation"]["labels"]
    assert report["artifacts"][0]["parity"]["metric"]["name"] == "accuracy"


def test_predict_applies_exif_orientation(tmp_path):
    from PIL import Image

    from kerastl.export.modalities.image import ImageExporter

    rng = np.random.default_rng(3)
    upright = np.repeat(np.repeat(rng.integers(0, 255, (4, 2, 3), dtype=np.uint8), 8, 0), 8, 1)
    stored = np.rot90(upright, k=1)  # what a phone stores; EXIF 6 says "rotate 90 CW to show"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "phone.png", exif=exif)
    exporter = ImageExporter({"input": {"name": "image", "shape": [32, 16, 3]}})
    x = exporter.load_files([str(tmp_path / "phone.png")])
    assert x.shape == (1, 32, 16, 3)  # upright: 32 high, 16 wide, like the shown photo
    assert np.abs(x[0] - upright).max() <= 1


def test_a_mediapipe_file_left_by_an_earlier_export_is_removed_on_overwrite(
    model, tmp_path, monkeypatch
):
    """Without mediapipe the copy is not written: the earlier one must not outlive its model."""
    import kerastl
    from kerastl.errors import ConfigError
    from kerastl.export.formats import tflite_metadata

    x = _photo_like(8, seed=3)
    kerastl.export(model, tmp_path, formats=["tflite"], validation_data=x)
    old = tmp_path / f"{model.name}_mediapipe.tflite"
    assert old.is_file()
    monkeypatch.setattr(tflite_metadata, "available", lambda: False)
    (tmp_path / f"{model.name}.tflite").unlink()  # only the stale copy is in the way
    with pytest.raises(ConfigError, match="_mediapipe.tflite"):
        kerastl.export(model, tmp_path, formats=["tflite"], validation_data=x)
    report = kerastl.export(model, tmp_path, formats=["tflite"], validation_data=x, overwrite=True)
    assert not old.exists() and (tmp_path / f"{model.name}.tflite").is_file()
    assert any(n.startswith(f"removed {old.name}") for n in report["notes"])


def test_tflite_files_of_precisions_this_export_does_not_write_are_stale(tmp_path):
    """An earlier export's float16 file beside a new float32 file would come from another model."""
    from kerastl.export.formats import FORMATS
    from kerastl.export.formats.base import stale_files

    for q in ("", "_float16", "_int8", "_dynamic"):
        (tmp_path / f"m{q}.tflite").write_bytes(b"old")
    (tmp_path / "other_float16.tflite").write_bytes(b"another model's")
    # the last export of m published three of them; m_dynamic.tflite is not in its report
    paths = ["m.tflite", "m_float16.tflite", "m_int8.tflite"]
    report = {"model": {"name": "m"}, "artifacts": [{"path": p} for p in paths]}
    (tmp_path / "export_report.json").write_text(json.dumps(report))
    written = {tmp_path / "m.tflite", tmp_path / "m_int8.tflite"}
    stale = stale_files(tmp_path, "m", [FORMATS["tflite"]], written)
    assert stale == [tmp_path / "m_float16.tflite"]
    # the same files after an export of another model: none of them is m's to remove
    report["model"]["name"] = "other"
    (tmp_path / "export_report.json").write_text(json.dumps(report))
    assert stale_files(tmp_path, "m", [FORMATS["tflite"]], written) == []


def test_overwrite_leaves_the_file_of_a_model_whose_name_ends_like_a_precision(model, tmp_path):
    """``m_int8.tflite`` of a model named ``m_int8`` is not a stale int8 file of ``m``."""
    import kerastl

    x = _photo_like(8, seed=3)
    kerastl.export(model, tmp_path, formats=["tflite"], validation_data=x, name="m_int8")
    other = (tmp_path / "m_int8.tflite").read_bytes()
    report = kerastl.export(
        model, tmp_path, formats=["tflite"], validation_data=x, name="m", overwrite=True
    )
    assert (tmp_path / "m_int8.tflite").read_bytes() == other
    assert (tmp_path / "m.tflite").is_file()
    assert not any(n.startswith("removed") for n in report["notes"])


def test_latency_stops_at_its_time_budget_after_three_runs(monkeypatch):
    import time as _time

    from kerastl.export.formats import base

    calls = []

    def slow():
        calls.append(1)
        _time.sleep(0.03)

    monkeypatch.setattr(base, "LATENCY_BUDGET_S", 0.05)
    assert base.median_ms(slow, runs=10) >= 30
    assert len(calls) == 1 + 3  # warm-up, then stopped by the budget at the minimum
    calls.clear()
    monkeypatch.setattr(base, "LATENCY_BUDGET_S", 10.0)
    base.median_ms(slow, runs=5)
    assert len(calls) == 1 + 5  # within the budget: every requested run


def test_float64_referee_measures_the_rounding_noise_of_an_ill_conditioned_model():
    """One Keras run can under-state a model's rounding noise; inputs one rounding step away
    show it, and the referee allows that much (no more) for the artifact."""
    from kerastl.export.validate import rounding_noise, validate

    x = random_images(10, 8, seed=5)
    truth = {"probabilities": _reference(x)["probabilities"].astype(np.float64)}

    def off_by(v, amount):
        out = _reference(v)
        p = out["probabilities"].astype(np.float64)
        out["probabilities"] = (p * (1 + amount * np.cos(p * 1e4))).astype(np.float32)
        return out

    seen = []

    def chaotic(v):  # Keras float32 of a model that amplifies an input change 4000 times
        seen.append(v)
        moved = np.abs(v.astype(np.float64) / x - 1).max((1, 2, 3))
        out = _reference(v)
        p = out["probabilities"].astype(np.float64)
        gain = 1 + 4000 * moved[:, None] * np.cos(p * 1e4 + 1)
        out["probabilities"] = (p * gain).astype(np.float32)
        return out

    keras32 = off_by(x, 3e-4)  # this one run is 3e-4 from float64

    def judge(amount, keras_float32):
        return validate(
            _Fake(lambda v: off_by(v, amount)),
            keras32,
            x,
            "onnx/float32",
            "classification",
            exact=lambda v: {"probabilities": truth["probabilities"][: len(v)]},
            keras_float32=keras_float32,
        )

    close = judge(-1.2e-3, chaotic)  # 4x the one run, within 2x the measured noise
    verdict = close["float64_referee"]["probabilities"]
    assert close["passed"], close["failures"]
    assert verdict["keras_perturbed_vs_float64"] > 2 * verdict["keras_vs_float64"]
    moved = np.abs(seen[0].astype(np.float64) / x - 1)
    assert 0 < moved.max() < 1e-6 and seen[0].dtype == np.float32  # a rounding step, not more

    # Without the noise measurement the same file fails; a broken one fails with it.
    assert not judge(-1.2e-3, None)["passed"]
    broken = judge(5e-3, chaotic)
    assert not broken["passed"]
    assert "one rounding step away" in broken["failures"][0]

    # Token ids are not moved: there is no rounding step to measure.
    ids = np.arange(12).reshape(3, 4)
    assert rounding_noise(chaotic, ids, truth, ["probabilities"]) == {}


def test_a_large_models_tflite_file_keeps_the_weights_stored_after_its_flatbuffer(
    model, tmp_path, monkeypatch
):
    """From about 1.7 GB the converter stores the weights after the flatbuffer (buffer
    offsets). Embedding the metadata repacks the flatbuffer and must carry them along, offsets
    moved (DeBERTa-v3-large's file failed to load: 'Constant buffer 2 specified an out of
    range offset'). The converter is made to store them so here, on a small model."""
    import tensorflow as tf

    import kerastl
    from kerastl.export.formats import tflite, tflite_metadata

    def with_offsets(make):
        def made(*args, **kwargs):
            converter = make(*args, **kwargs)
            converter._experimental_use_buffer_offset = True
            return converter

        return staticmethod(made)

    for source in ("from_saved_model", "from_concrete_functions"):  # both conversion paths
        make = getattr(tf.lite.TFLiteConverter, source)
        monkeypatch.setattr(tf.lite.TFLiteConverter, source, with_offsets(make))
    report = kerastl.export(model, tmp_path, formats=["tflite"], latency_runs=1)
    assert report["status"] == "passed", report
    arts = {a.get("precision"): a for a in report["artifacts"]}
    assert "after the flatbuffer" in arts["float32"]["details"]["weights"]
    path = tmp_path / f"{model.name}.tflite"
    content = path.read_bytes()
    assert tflite_metadata.uses_buffer_offsets(content)
    assert tflite.read_metadata(content)["class_names"] == CLASSES
    x = _photo_like(4, seed=3)
    art = kerastl.load_artifact(path)
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(art.run(x)["probabilities"], want, atol=1e-5)
    assert art.predict(x)["labels"] == [CLASSES[i] for i in want.argmax(1)]
    assert "mediapipe" not in arts
    assert any("_mediapipe.tflite" in n and "2 GiB" in n for n in report["notes"]), report["notes"]
    assert not (tmp_path / f"{model.name}_mediapipe.tflite").exists()


def _tflite_int8_export(model, out):
    import kerastl

    return kerastl.export(
        model, out, formats=["tflite"], quantize=["int8"], latency_runs=1,
        calibration_data=_photo_like(16, seed=1), validation_data=_photo_like(8, seed=2),
        tolerances={"tflite/int8": {"min_agreement": 0.5}},  # 16 samples, random weights
    )  # fmt: skip


def test_tflite_converts_the_traced_function_and_a_saved_model_only_if_that_fails(
    model, tmp_path, monkeypatch, caplog
):
    """A TFLite-only export converts the frozen inference function: no SavedModel is
    written or converted, TensorFlow's deprecation warning for that path is not shown, and
    the files have the ``serving_default`` signature a SavedModel conversion gives them.
    Any failure of that conversion (a graph it cannot take, a TensorFlow that dropped the
    path) sends every precision through a SavedModel, which writes the same files, and
    the report says why."""
    import kerastl
    from kerastl.export.formats import saved_model, tflite

    calls = []
    for mod, name in ((saved_model, "write_graph"), (tflite, "convert")):
        real = getattr(mod, name)
        spy = lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)  # noqa: E731
        monkeypatch.setattr(mod, name, spy)
    with caplog.at_level(logging.WARNING):
        report = _tflite_int8_export(model, tmp_path / "frozen")
    assert report["status"] == "passed", report
    assert calls == []
    assert not [r for r in caplog.records if "deprecated conversion path" in r.getMessage()]

    def broken(*args, **kwargs):
        raise ValueError("injected: frozen conversion failed")

    monkeypatch.setattr(tflite, "convert_function", broken)
    report = _tflite_int8_export(model, tmp_path / "saved")
    assert report["status"] == "passed", report
    assert calls == ["write_graph", "convert", "convert"]
    arts = {a.get("precision"): a for a in report["artifacts"]}
    for q in ("float32", "int8"):
        why = arts[q]["details"]["conversion"]
        assert why.startswith("from a SavedModel") and "injected: frozen" in why, why
    assert not list(tmp_path.rglob(tflite.TFLITE_SOURCE))

    x = _photo_like(6, seed=3)
    for name in (f"{model.name}.tflite", f"{model.name}_int8.tflite"):
        frozen, saved = (kerastl.load_artifact(tmp_path / d / name) for d in ("frozen", "saved"))
        outputs = ["class_id", "logits", "probabilities"]  # the SavedModel signature's
        signature = {"serving_default": {"inputs": ["image"], "outputs": outputs}}
        assert frozen._interp.get_signature_list() == signature
        assert saved._interp.get_signature_list() == signature
        got, want = frozen.run(x), saved.run(x)
        for key in outputs:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{name} {key}")
    want = model.predict(x, verbose=0)
    float32 = kerastl.load_artifact(tmp_path / "frozen" / f"{model.name}.tflite")
    np.testing.assert_allclose(float32.run(x)["probabilities"], want, atol=1e-5)


def test_tflite_of_a_model_over_the_frozen_limit_is_converted_from_a_saved_model(
    model, tmp_path, monkeypatch
):
    """From FROZEN_MAX_BYTES of weights, the frozen graph's copies would cost more memory
    than the SavedModel path: such a model never goes through the frozen function."""
    import kerastl
    from kerastl.export.formats import tflite

    def not_called(*args, **kwargs):
        raise AssertionError("the frozen function was converted")

    monkeypatch.setattr(tflite, "convert_function", not_called)
    monkeypatch.setattr(tflite, "FROZEN_MAX_BYTES", model.count_params() * 4)
    report = kerastl.export(model, tmp_path, formats=["tflite"], latency_runs=1)
    assert report["status"] == "passed", report
    arts = {a.get("precision"): a for a in report["artifacts"]}
    assert "conversion" not in arts["float32"]["details"]  # the chosen path, no fallback
    x = _photo_like(4, seed=3)
    art = kerastl.load_artifact(tmp_path / f"{model.name}.tflite")
    np.testing.assert_allclose(art.run(x)["probabilities"], model.predict(x, verbose=0), atol=1e-5)


def test_release_memory_trims_without_starting_a_process(monkeypatch):
    """release_memory runs between every export step of a process holding GBs; it must not
    fork (ctypes.util.find_library ran ``ldconfig -p`` in a child process on every call)."""
    import subprocess

    from kerastl.export.formats import base

    base._malloc_trim.cache_clear()
    started = []
    monkeypatch.setattr(subprocess.Popen, "__init__", lambda self, *a, **k: started.append(a))
    base.release_memory()
    base.release_memory()
    assert started == []
    if sys.platform.startswith("linux"):
        assert base._malloc_trim() is not None  # glibc here: the trim is found, and runs


@pytest.mark.parametrize(
    "task, names, says",
    [
        ("binary", ["cat", "dog"], "task is 'binary'"),
        ("multilabel", ["a", "b", "c"], "task is 'multilabel'"),
        ("classification", None, "needs class names for its labels file"),
    ],
)
def test_an_image_classifier_without_a_mediapipe_file_is_told_why(task, names, says):
    """Binary, multilabel and unnamed image classifiers got no <name>_mediapipe.tflite and
    an empty notes list (text and audio classifiers got a note)."""
    from kerastl.export.formats import FORMATS, Options

    meta = {"task": task, "class_names": names, "input": {"name": "image", "shape": [32, 32, 3]}}
    notes = FORMATS["tflite"].notes("m", Options(), meta)
    assert len(notes) == 1 and notes[0].startswith(
        "no m_mediapipe.tflite (MediaPipe ImageClassifier): "
    )
    assert says in notes[0], notes
    regression = {**meta, "task": "regression"}
    assert FORMATS["tflite"].notes("m", Options(), regression) == []  # not a classifier
