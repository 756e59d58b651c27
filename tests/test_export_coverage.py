"""Export coverage: every backbone family, augmentation layers, mixed_bfloat16, MirroredStrategy,
an int8 file of a trained classifier, and the CLI on all three formats.

The family subset is derived from the registry (the smallest image entry of each
source/family), so a new family is covered with no edit here. ONNX is the
fragile converter and runs for every family; the full format list runs for the
entries in ``ALL_FORMATS`` (mobilenet_v3_small runs it in test_export.py). The
complete entries x formats matrix is ``bench/export_matrix.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import informative


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    from kerastl.export.modalities.image import ImageExporter

    meta = {"input": {"name": "image", "shape": [side, side, 3]}}
    return ImageExporter(meta).sample_inputs(n, seed)


#: Entries exported to every format here (others: ONNX only).
ALL_FORMATS = {"mobilenet_v3_small_050_imagenet"}
#: Entries exported to TFLite and ONNX (the converters with known failures).
TWO_FORMATS = {"efficientnet_b0"}
#: Covered through every format and precision by test_export.py.
COVERED_ELSEWHERE = {"mobilenet_v3_small"}
#: Random-init EfficientNets amplify float32 rounding: measured rel err 1e-5..3e-4 in BOTH
#: TFLite and ONNX against Keras (SavedModel 1e-6), depending on the random weights. Here the
#: check is that conversion is right (a wrong graph is off by > 1e-2 or fails to run); the
#: matrix in bench/ reports these entries against the declared 1e-4.
LOOSE_FLOAT32 = {"efficientnet_b0", "efficientnet_v2_b0"}
#: Every keras.applications family's smallest entry exports in the default run; KerasHub
#: families export there at their tiny architecture (test_hub_image_family_exports_tiny),
#: and at their smallest published size in the opt-in slow tier (``-m slow``).


def _family_subset() -> list[str]:
    from kerastl import list_models
    from kerastl.zoo import get_spec

    smallest: dict[tuple[str, str], tuple[int, str]] = {}
    for name in list_models(modality="image"):
        s = get_spec(name)
        key = (s.source, s.family)
        smallest[key] = min(smallest.get(key, (s.params, name)), (s.params, name))
    return [
        name if src == "keras.applications" else pytest.param(name, marks=pytest.mark.slow)
        for (src, _), (_, name) in sorted(smallest.items())
        if name not in COVERED_ELSEWHERE
    ]


def _hub_image_families() -> list[str]:
    from kerastl import list_models
    from kerastl.zoo import get_spec

    first: dict[str, str] = {}
    for name in sorted(list_models(modality="image", source="keras_hub")):
        first.setdefault(get_spec(name).family, name)
    return sorted(first.values())


@pytest.mark.parametrize("entry", _hub_image_families())
def test_hub_image_family_exports_tiny(entry, tmp_path):
    """One entry per KerasHub image family, at its tiny architecture, through ONNX and back."""
    import keras
    from test_keras_hub import tiny_kwargs

    import kerastl

    keras.utils.set_random_seed(0)
    kw = tiny_kwargs(entry)
    model = kerastl.build(entry, num_classes=3, compile=False, **kw)
    images = _images(16, kw["input_shape"][0])
    informative(model, images)
    out = model.predict(images[:4], verbose=0)
    assert np.abs(np.diff(out, axis=0)).max() > 1e-5, "constant outputs: parity would be empty"
    report = kerastl.export(
        model,
        tmp_path,
        formats=["onnx"],
        validation_data=images,
        latency_runs=1,
        max_validation_samples=8,
    )
    assert report["status"] == "passed"  # within 1e-4 of Keras, or of the float64 referee
    (art,) = report["artifacts"]
    assert art["passed"] and art["non_builtin_ops"] == []
    got = kerastl.load_artifact(tmp_path / art["path"]).predict(images[:4])["probabilities"]
    np.testing.assert_allclose(got, out, atol=1e-4)


@pytest.mark.heavy
@pytest.mark.parametrize("entry", _family_subset())
def test_family_representative_exports(entry, tmp_path):
    import keras

    import kerastl
    from kerastl.zoo import get_spec

    keras.utils.set_random_seed(0)  # reproducible random-init weights
    side = get_spec(entry).min_input_size
    model = kerastl.build(entry, num_classes=3, input_shape=(side, side, 3), compile=False)
    images = _images(32, side)
    informative(model, images)  # BatchNorm statistics of the data it is validated on
    if entry in ALL_FORMATS:
        formats = ["saved_model", "tflite", "onnx"]
    else:
        formats = ["tflite", "onnx"] if entry in TWO_FORMATS else ["onnx"]
    loose = {f"{f}/float32": {"max_rel_err": 1e-3} for f in ("tflite", "onnx")}
    report = kerastl.export(
        model,
        tmp_path,
        formats=formats,
        validation_data=images,
        latency_runs=1,
        max_validation_samples=8,
        tolerances=loose if entry in LOOSE_FLOAT32 else None,
    )
    assert report["status"] == "passed"
    assert [a["format"] for a in report["artifacts"]] == formats
    limit = 1e-3 if entry in LOOSE_FLOAT32 else 1e-4
    for a in report["artifacts"]:
        assert a["passed"] and a["parity"]["deterministic"]
        if a["parity"]["max_rel_err"] > limit:  # passed on the float64 referee's verdict
            verdicts = a["parity"]["float64_referee"]
            assert verdicts and all(v["passed"] for v in verdicts.values()), a["parity"]
        assert a["non_builtin_ops"] == []


def test_augmentation_layers_are_off_in_every_artifact(tmp_path):
    import keras

    import kerastl

    base = kerastl.build(
        "mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3), compile=False
    )
    informative(base, _images(32, 32))
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.RandomFlip("horizontal_and_vertical", seed=1)(inputs)
    x = keras.layers.RandomContrast(0.5, seed=2)(x)
    model = keras.Model(inputs, base(x), name="augmented")
    images = _images(6, 32, seed=3)
    augmented = model.layers[2](model.layers[1](images, training=True), training=True)
    assert np.abs(augmented.numpy() - images).max() > 1.0, "augmentation is active in training"
    infer = model(images, training=False).numpy()
    assert infer.std(0).mean() > 0.05  # outputs depend on the input

    report = kerastl.export(
        model,
        tmp_path,
        formats=["saved_model", "onnx"],  # where Keras' own export traces augmentation active
        validation_data=images,
        latency_runs=1,
    )
    assert report["status"] == "passed"
    assert report["model"]["task"] == "classification"  # metadata found in the nested model
    for a in report["artifacts"]:
        art = kerastl.load_artifact(tmp_path / a["path"])
        np.testing.assert_allclose(art.run(images)["probabilities"], infer, atol=1e-5)


def test_mixed_bfloat16_model_exports_float32_graph(tmp_path):
    import keras

    import kerastl

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = kerastl.build(
            "mobilenet_v3_small", num_classes=4, input_shape=(32, 32, 3), compile=False
        )
    finally:
        keras.config.set_dtype_policy("float32")
    informative(model, _images(32, 32))
    assert model.get_layer("backbone").layers[2].compute_dtype == "bfloat16"
    report = kerastl.export(model, tmp_path, formats=["tflite", "onnx"], latency_runs=1)
    assert report["status"] == "passed"
    assert all(a["parity"]["max_rel_err"] <= 1e-4 for a in report["artifacts"])
    assert any("mixed-precision model" in n for n in report["notes"])
    assert any("original mixed-precision Keras model" in n for n in report["notes"])


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, kerastl
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3),
                              class_names=["a", "b", "c"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    for b in bns:  # BatchNorm statistics from one batch: outputs that vary with the input
        b.trainable, b.momentum = True, 0.0
    model(x, training=True)
    for b in bns:
        b.trainable, b.momentum = False, 0.99
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    spread = float(model.predict(x, verbose=0).std(0).mean())
    report = kerastl.export(model, sys.argv[1], formats=["saved_model", "onnx"],
                            validation_data=(x[:16], y[:16]), latency_runs=1)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "status": report["status"],
                      "spread": spread,
                      "rel": [a["parity"]["max_rel_err"] for a in report["artifacts"]]}))
    """
)


@pytest.mark.heavy
def test_model_trained_under_mirrored_strategy(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["spread"] > 0.01  # outputs depend on the input: parity is not vacuous
    assert result["status"] == "passed" and max(result["rel"]) <= 1e-4


def _colour_data(n: int, seed: int):
    """Images whose class is their dominant colour channel (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 90, (n, 32, 32, 3))
    for i, c in enumerate(y):
        x[i, :, :, c] += rng.uniform(120, 165)
    return x.astype("float32"), y


def test_int8_export_of_trained_classifier_reports_agreement(tmp_path):
    import keras

    import kerastl

    keras.utils.set_random_seed(0)
    x, y = _colour_data(400, 0)
    xv, yv = _colour_data(60, 1)
    model = kerastl.build(
        "mobilenet_v3_small",
        num_classes=3,
        input_shape=(32, 32, 3),
        class_names=["red", "green", "blue"],
        freeze="backbone",
        learning_rate=1e-2,
    )
    informative(model, x[:64])  # random backbone with usable BatchNorm statistics
    model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    keras_acc = float(np.mean(np.argmax(model.predict(xv, verbose=0), -1) == yv))
    assert keras_acc >= 0.75, f"training did not learn the colours ({keras_acc:.2f})"

    report = kerastl.export(
        model,
        tmp_path,
        formats=["tflite"],
        quantize=["int8"],
        calibration_data=x[:300],
        validation_data=(xv, yv),
        int8_io="int8",
        latency_runs=1,
        # int8 of this 32 px random-backbone model loses up to 4 of the 60 validation examples
        # (measured drop 0.067), above the 0.05 default gate; the 0.1 bound asserted below.
        tolerances={"tflite/int8": {"max_metric_drop": 0.1}},
    )
    int8 = report["artifacts"][1]
    assert int8["precision"] == "int8" and int8["passed"]
    assert int8["parity"]["agreement"] >= 0.9
    metric = int8["parity"]["metric"]
    assert metric["name"] == "accuracy" and metric["keras"] == pytest.approx(keras_acc)
    assert abs(metric["delta"]) <= 0.1
    art = kerastl.load_artifact(tmp_path / int8["path"])
    assert art.input_dtype == "int8"
    assert "agreement" in (tmp_path / "export_report.md").read_text()


def test_cli_export_and_predict_on_every_format(tmp_path, capsys):
    from PIL import Image

    import kerastl
    from kerastl.cli import main

    model = kerastl.build(
        "mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3), class_names=["ant", "bee"]
    )
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(tmp_path / f"p{i}.png")
    assert main(["export", str(model_path), "--formats", "saved_model,tflite,onnx"]) == 0
    out = tmp_path / "export"
    said = capsys.readouterr().out
    assert (out / "export_report.md").is_file() and "report:" in said
    assert "checked on 16 synthetic inputs: pass --validation-data" in said, said
    name = model.name
    for artifact in [out / "saved_model" / name, out / f"{name}.tflite", out / f"{name}.onnx"]:
        args = ["predict", str(artifact), str(tmp_path / "p0.png"), str(tmp_path / "p1.png")]
        assert main([*args, "--json"]) == 0
        lines = capsys.readouterr().out.splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
        assert [Path(r["input"]).name for r in rows] == ["p0.png", "p1.png"]
        assert {t["class"] for t in rows[0]["top"]} == {"ant", "bee"}
    # with real validation inputs, nothing is said of synthetic ones
    val = np.stack([np.full((32, 32, 3), 60 * i, np.uint8) for i in range(4)])
    np.save(tmp_path / "val.npy", val)
    args = ["--formats", "onnx", "--validation-data", str(tmp_path / "val.npy")]
    assert main(["export", str(model_path), *args, "--output-dir", str(tmp_path / "v")]) == 0
    assert "synthetic" not in capsys.readouterr().out
    # Exporting again refuses to overwrite the published files: exit code 2, one line.
    assert main(["export", str(model_path), "--formats", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "overwrite" in err and len(err.strip().splitlines()) == 1


def test_roll_exports_to_tflite_as_builtins(tmp_path):
    """Swin's shifted windows use ``ops.roll``; LiteRT has no Roll op, so kerastl traces it
    as slices + concat and the TFLite file needs no Flex ops."""
    import keras

    import kerastl

    base = kerastl.build(
        "mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3), compile=False
    )
    informative(base, _images(32, 32))

    class ShiftWindows(keras.layers.Layer):
        def call(self, x):
            return keras.ops.roll(x, shift=(-3, 5), axis=(1, 2))

    inputs = keras.Input((32, 32, 3), name="image")
    model = keras.Model(inputs, base(ShiftWindows()(inputs)), name="rolled")
    images = _images(6, 32, seed=4)
    infer = model(images, training=False).numpy()
    shifted = np.roll(images, (-3, 5), (1, 2))
    np.testing.assert_allclose(base(shifted, training=False).numpy(), infer, atol=1e-6)
    report = kerastl.export(
        model, tmp_path, formats=["tflite", "onnx"], validation_data=images, latency_runs=1
    )
    assert report["status"] == "passed"
    for a in report["artifacts"]:
        assert a["non_builtin_ops"] == []
        art = kerastl.load_artifact(tmp_path / a["path"])
        # float32 runtimes sum in other orders: 2.1e-5 apart in 1 of 3 runs here
        np.testing.assert_allclose(art.run(images)["probabilities"], infer, atol=1e-4)


@pytest.mark.parametrize(
    "kernel_shape, kwargs, data_format",
    [
        ((7, 7, 1, 6), {"padding": "same"}, "channels_last"),  # ConvNeXt's block
        ((3, 3, 1, 12), {"strides": 2}, "channels_last"),  # two filters per group
        ((3, 3, 1, 6), {"dilation_rate": 2, "padding": "same"}, "channels_last"),
        ((3, 3, 1, 6), {"strides": 2, "padding": "same"}, "channels_first"),
        ((5, 1, 6), {"padding": "same"}, "channels_last"),  # 1-D
        ((3, 3, 2, 6), {}, "channels_last"),  # two channels per group: Keras' own conv
    ],
)
def test_grouped_conv_with_one_channel_per_group_is_traced_as_depthwise(
    kernel_shape, kwargs, data_format
):
    import keras
    import tensorflow as tf

    from kerastl.export._trace import builtin_ops

    rng = np.random.default_rng(0)
    spatial = (11, 11)[: len(kernel_shape) - 2]
    shape = (2, *spatial, 6) if data_format == "channels_last" else (2, 6, *spatial)
    x = rng.normal(size=shape).astype("float32")
    k = rng.normal(size=kernel_shape).astype("float32")
    want = keras.ops.conv(x, k, data_format=data_format, **kwargs).numpy()

    def traced(t):
        with builtin_ops():
            return keras.ops.conv(t, k, data_format=data_format, **kwargs)

    graph = tf.function(traced, autograph=False).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)
    )
    got = graph(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    ops = {n.op for n in graph.graph.as_graph_def().node}
    depthwise = kernel_shape[-2] == 1
    assert ("DepthwiseConv2dNative" in ops) is depthwise, ops
    assert ("StatefulPartitionedCall" in ops or "PartitionedCall" in ops) is not depthwise, ops


def test_conv_as_depthwise_leaves_what_it_cannot_rewrite_to_keras():
    """An unknown kernel dimension, or a valid conv with no output, goes to Keras' conv."""
    import tensorflow as tf

    from kerastl.core.convs import conv_as_depthwise

    calls = []

    def keras_conv(*args):
        calls.append(args[1].shape)
        return "keras"

    small = tf.zeros((1, 2, 2, 4))
    assert conv_as_depthwise(small, tf.zeros((3, 3, 1, 4)), fallback=keras_conv) == "keras"
    same = conv_as_depthwise(small, tf.zeros((3, 3, 1, 4)), padding="same", fallback=keras_conv)
    assert tuple(same.shape) == (1, 2, 2, 4)

    def traced(x, k):
        assert conv_as_depthwise(x, k, fallback=keras_conv) == "keras"
        return x

    fn = tf.function(traced, autograph=False)
    fn.get_concrete_function(tf.TensorSpec((1, 9, 9, 4)), tf.TensorSpec((3, 3, 1, None)))
    assert len(calls) == 2


def _op_count(path: Path, op: str) -> int:
    """How many nodes of type ``op`` the TFLite file's graph has (no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return sum(d["op_name"] == op for d in it._get_ops_details())


def test_tflite_splits_depthwise_kernels_over_25_taps_and_matches_keras(tmp_path):
    """A 7x7 stride-1 depthwise conv reaches the TFLite file as 7x3 + 7x3 + 7x1 parts
    (XNNPACK's one-pass kernels; bench/int8_latency), in float32 and int8, and the file still
    matches Keras; the SavedModel keeps one conv, and a strided 7x7 conv is left whole."""
    import keras

    import kerastl

    keras.utils.set_random_seed(0)
    x = keras.Input((20, 20, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    h = keras.layers.DepthwiseConv2D(7, padding="same")(h)  # split
    h = keras.layers.Conv2D(8, 7, padding="valid", groups=8, activation="relu")(h)  # split
    h = keras.layers.DepthwiseConv2D(7, strides=2, padding="same")(h)  # strided: whole
    y = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(x, y)
    images = _images(16, 20, seed=3)
    informative(model, images)
    report = kerastl.export(
        model,
        tmp_path,
        formats=["saved_model", "tflite"],
        quantize=["int8"],
        validation_data=images,
        calibration_data=images,
        latency_runs=1,
    )
    assert report["status"] == "passed", report
    paths = {(a["format"], a["precision"]): tmp_path / a["path"] for a in report["artifacts"]}
    for (fmt, q), path in paths.items():
        if fmt != "tflite":
            continue
        assert _op_count(path, "DEPTHWISE_CONV_2D") == 3 + 3 + 1, q
    float_file = next(p for (f, q), p in paths.items() if f == "tflite" and q == "float32")
    got = kerastl.load_artifact(float_file).run(images)["probabilities"]
    np.testing.assert_allclose(got, model(images, training=False).numpy(), atol=1e-5)
    from tensorflow.python.tools import saved_model_utils

    saved_model = next(p for (f, _), p in paths.items() if f == "saved_model")
    graph = saved_model_utils.get_meta_graph_def(str(saved_model), "serve").graph_def
    per_function = [
        [n.op for n in f.node_def].count("DepthwiseConv2dNative") for f in graph.library.function
    ]
    assert max(per_function) == 3, per_function  # the SavedModel's graph is not split


def test_has_large_depthwise_only_where_the_split_applies():
    """Tall kernels (parts would still be over 25 taps), channels-first layers and inputs of
    unknown width are not split, so they do not cost a second trace."""
    import keras

    from kerastl.core.convs import has_large_depthwise

    def model(layer, shape=(16, 16, 4)):
        x = keras.Input(shape)
        return keras.Model(x, layer(x))

    assert has_large_depthwise(model(keras.layers.DepthwiseConv2D(7, padding="same")))
    assert not has_large_depthwise(model(keras.layers.DepthwiseConv2D((31, 1), padding="same")))
    assert not has_large_depthwise(model(keras.layers.DepthwiseConv2D(7, strides=2)))
    assert not has_large_depthwise(
        model(keras.layers.DepthwiseConv2D(7, padding="same"), (None, None, 4))
    )
    first = keras.layers.DepthwiseConv2D(7, padding="same", data_format="channels_first")
    assert not has_large_depthwise(model(first, (4, 16, 16)))


def test_tflite_source_graph_is_removed_once_every_precision_is_written(tmp_path, monkeypatch):
    """When the frozen function's conversion fails, the split graph traced as a SavedModel
    for TFLite (a second copy of the weights on disk) is gone before the ONNX file is
    written."""
    import keras

    import kerastl
    from kerastl.export import pipeline
    from kerastl.export.formats import tflite

    def broken(*args, **kwargs):
        raise ValueError("injected: frozen conversion failed")

    monkeypatch.setattr(tflite, "convert_function", broken)
    seen = {}
    run_one = pipeline._run_one

    def spy(fmt, item, job):
        seen[(fmt.name, item.precision)] = sorted(p.name for p in job.staging.iterdir())
        result = run_one(fmt, item, job)
        seen[(fmt.name, item.precision, "after")] = sorted(p.name for p in job.staging.iterdir())
        return result

    monkeypatch.setattr(pipeline, "_run_one", spy)
    x = keras.Input((12, 12, 3))
    h = keras.layers.DepthwiseConv2D(7, padding="same")(x)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    images = _images(4, 12, seed=4)
    report = kerastl.export(
        model, tmp_path, formats=["saved_model", "tflite", "onnx"], validation_data=images
    )
    assert report["status"] == "passed", report
    assert "tflite_source" in seen[("tflite", "float32", "after")], seen
    assert "tflite_source" not in seen[("onnx", "float32")], seen


@pytest.mark.heavy
def test_convnext_exports_its_grouped_convs_as_depthwise(tmp_path):
    """ConvNeXt's 7x7 ``Conv2D(groups=channels)``: Keras runs it through an XLA-compiled
    function on TensorFlow; the exported SavedModel, TFLite and ONNX files hold depthwise
    convolutions and match the Keras model (which still runs Keras' own grouped conv)."""
    import keras
    import onnx

    import kerastl

    keras.utils.set_random_seed(0)
    model = kerastl.build("convnext_tiny", num_classes=3, input_shape=(32, 32, 3), compile=False)
    images = _images(8, 32, seed=2)
    informative(model, images)
    want = model(images, training=False).numpy()
    assert np.abs(np.diff(want, axis=0)).max() > 1e-5, "constant outputs: parity would be empty"
    report = kerastl.export(
        model,
        tmp_path,
        formats=["saved_model", "tflite", "onnx"],
        validation_data=images,
        latency_runs=1,
    )
    assert report["status"] == "passed"
    paths = {a["format"]: tmp_path / a["path"] for a in report["artifacts"]}
    for path in paths.values():
        got = kerastl.load_artifact(path).run(images)["probabilities"]
        np.testing.assert_allclose(got, want, atol=1e-4)
    from tensorflow.python.tools import saved_model_utils

    graph = saved_model_utils.get_meta_graph_def(str(paths["saved_model"]), "serve").graph_def
    ops = {n.op for f in graph.library.function for n in f.node_def}
    assert "DepthwiseConv2dNative" in ops
    assert not any("_XlaMustCompile" in f.attr for f in graph.library.function)
    # LiteRT's file: each 7x7 conv as 7x3 + 7x3 + 7x1 (test above, bench/int8_latency)
    assert _op_count(paths["tflite"], "DEPTHWISE_CONV_2D") == 18 * 3
    convs = [n for n in onnx.load(str(paths["onnx"])).graph.node if n.op_type == "Conv"]
    grouped = [a.i for n in convs for a in n.attribute if a.name == "group" and a.i > 1]
    assert len(grouped) == 18  # ConvNeXt-T: one per block, 3 + 3 + 9 + 3 blocks
