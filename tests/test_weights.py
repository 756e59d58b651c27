"""Weights: Keras' cache used offline, clear errors when missing, local files, grayscale stems."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

import kerastl
from kerastl.core.layers import ImagePreprocessing

SIZE = 32


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails loudly (as it does on this machine)."""
    from keras.src.utils import file_utils

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return calls


def _write_legacy_h5(model: keras.Model, path) -> None:
    """Write weights in the legacy .h5 layout keras.applications files use."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def test_imagenet_weights_load_from_keras_cache_without_network(tmp_path, monkeypatch, offline):
    """A cached resnet50 'imagenet' file (here one we generate) is used, with no download."""
    from keras.src.applications import resnet
    from keras.src.utils.file_utils import hash_file

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    keras.utils.set_random_seed(7)
    source = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    fname = cache / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_legacy_h5(source, fname)
    # Keras checks the file's hash: publish ours as "the" hash of this fake file.
    monkeypatch.setitem(
        resnet.WEIGHTS_HASHES,
        "resnet50",
        (resnet.WEIGHTS_HASHES["resnet50"][0], hash_file(str(fname), "md5")),
    )

    model = kerastl.build(
        "resnet50", num_classes=2, input_shape=(SIZE, SIZE, 3), weights="imagenet"
    )
    assert offline == []
    backbone = model.get_layer("backbone")
    for a, b in zip(source.weights, backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert model.kerastl_config["weights"] == "imagenet"


def test_missing_imagenet_weights_offline_say_what_to_put_where(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(kerastl.WeightsError) as err:
        kerastl.build(
            "mobilenet_v2", num_classes=2, input_shape=(SIZE, SIZE, 3), weights="imagenet"
        )
    msg = str(err.value)
    assert "mobilenet_v2" in msg
    assert str(tmp_path / "empty_home" / "models") in msg
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels" in msg
    assert "https://" in msg and "is missing" in msg
    assert offline, "the download was attempted"


def test_corrupt_cached_weights_are_reported(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "models"
    cache.mkdir(parents=True)
    bad = cache / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    bad.write_bytes(b"not the real file")
    with pytest.raises(kerastl.WeightsError, match="checksum did not match.*expected hash"):
        kerastl.build("resnet50", num_classes=2, input_shape=(SIZE, SIZE, 3), weights="imagenet")
    assert not bad.exists(), "a file that failed its checksum is not left in the cache"


def test_local_weights_file_seeds_the_backbone(tmp_path):
    keras.utils.set_random_seed(1)
    src = kerastl.build("mobilenet_v3_small", num_classes=4, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "bb.weights.h5"
    src.get_layer("backbone").save_weights(path)
    model = kerastl.build(
        "mobilenet_v3_small", num_classes=2, input_shape=(SIZE, SIZE, 3), weights=str(path)
    )
    for a, b in zip(src.get_layer("backbone").weights, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_save_weights_of_a_whole_model_restores_it(tmp_path):
    """``model.save_weights`` of a whole kerastl model (backbone and head) was refused as not
    matching the backbone; it now restores the whole model, head included, when the head fits."""
    keras.utils.set_random_seed(4)
    src = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "whole.weights.h5"
    src.save_weights(path)
    model = kerastl.build(
        "mobilenet_v3_small", num_classes=3, input_shape=(SIZE, SIZE, 3), weights=str(path)
    )
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), src.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(kerastl.WeightsError, match="Nor is it the weights of this whole model"):
        kerastl.build("mobilenet_v3_small", num_classes=5, input_shape=(SIZE, SIZE, 3),
                      weights=str(path))  # fmt: skip


def test_saved_kerastl_model_seeds_the_backbone(tmp_path):
    keras.utils.set_random_seed(2)
    src = kerastl.build("efficientnet_b0", num_classes=4, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "trained.keras"
    src.save(path)
    model = kerastl.build(
        "efficientnet_b0", task="regression", input_shape=(SIZE, SIZE, 3), weights=path
    )
    for a, b in zip(src.get_layer("backbone").weights, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_from_another_architecture_are_refused(tmp_path):
    src = kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=(SIZE, SIZE, 3))
    h5 = tmp_path / "mbv3.weights.h5"
    src.get_layer("backbone").save_weights(h5)
    with pytest.raises(kerastl.WeightsError, match="does not match the 'resnet50' architecture"):
        kerastl.build("resnet50", num_classes=2, input_shape=(SIZE, SIZE, 3), weights=str(h5))
    saved = tmp_path / "mbv3.keras"
    src.save(saved)
    with pytest.raises(kerastl.WeightsError, match="holds a 'mobilenet_v3_small' model"):
        kerastl.build("resnet50", num_classes=2, input_shape=(SIZE, SIZE, 3), weights=saved)
    with pytest.raises(kerastl.WeightsError, match="no file at"):
        kerastl.build(
            "resnet50",
            num_classes=2,
            input_shape=(SIZE, SIZE, 3),
            weights=str(tmp_path / "nope.weights.h5"),
        )


def test_grayscale_input_sums_the_stem_over_rgb(tmp_path):
    """1-channel model on gray g == RGB model on (g, g, g) for a [-1, 1]-scaled backbone."""
    keras.utils.set_random_seed(4)
    rgb = kerastl.build("mobilenet_v2", num_classes=3, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "rgb.weights.h5"
    rgb.get_layer("backbone").save_weights(path)
    gray = kerastl.build(
        "mobilenet_v2", num_classes=3, input_shape=(SIZE, SIZE, 1), weights=str(path)
    )
    stem_rgb = rgb.get_layer("backbone").get_layer("Conv1").kernel.numpy()
    stem_gray = gray.get_layer("backbone").get_layer("Conv1").kernel.numpy()
    assert stem_gray.shape[2] == 1
    np.testing.assert_allclose(stem_gray[:, :, 0, :], stem_rgb.sum(axis=2), rtol=1e-6)

    gray.get_layer("logits").set_weights(rgb.get_layer("logits").get_weights())
    g = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 1)).astype("float32")
    f_gray = gray.get_layer("backbone")(gray.get_layer("preprocess")(g))
    f_rgb = rgb.get_layer("backbone")(rgb.get_layer("preprocess")(np.repeat(g, 3, axis=-1)))
    np.testing.assert_allclose(np.asarray(f_gray), np.asarray(f_rgb), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "in_model", "unit"])
def test_preprocessing_modes_match_keras_conventions(mode):
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    out = np.asarray(ImagePreprocessing(mode)(x))
    if mode == "caffe":
        ref = keras.applications.resnet50.preprocess_input(x.copy())
    elif mode == "tf":
        ref = keras.applications.mobilenet_v2.preprocess_input(x.copy())
    elif mode == "torch":
        ref = keras.applications.densenet.preprocess_input(x.copy())
    elif mode == "unit":
        ref = x / 255.0
    else:
        ref = x
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_model_saves_and_reloads_without_custom_objects(tmp_path):
    model = kerastl.build(
        "mobilenet_v3_small",
        task="multilabel",
        num_classes=4,
        input_shape=(SIZE, SIZE, 3),
        class_names=list("abcd"),
        dropout=0.2,
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    assert type(loaded).__name__ == "KerastlModel"
    assert loaded.kerastl_config["class_names"] == list("abcd")
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_load_model_refuses_lambda_layers_unless_unsafe(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(kerastl.KerastlError, match="arbitrary Python code.*safe_mode=False"):
        kerastl.load_model(path)
    assert kerastl.load_model(path, safe_mode=False) is not None
    with pytest.raises(kerastl.ConfigError, match="expected a .keras file"):
        kerastl.load_model(tmp_path / "model.onnx")


def test_weights_by_url_are_sha256_verified_and_cached(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    keras.utils.set_random_seed(5)
    src = kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "published.weights.h5"
    src.get_layer("backbone").save_weights(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    url = path.as_uri()

    model = kerastl.build(
        "mobilenet_v3_small",
        num_classes=2,
        input_shape=(SIZE, SIZE, 3),
        weights=f"{url}#sha256={digest}",
    )
    for a, b in zip(src.get_layer("backbone").weights, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    cached = list((tmp_path / "home" / "models" / "kerastl").iterdir())
    assert [p.name for p in cached] == [f"{digest[:12]}_published.weights.h5"]

    wrong = "0" * 64
    with pytest.raises(kerastl.WeightsError, match="refused and not cached"):
        kerastl.build(
            "mobilenet_v3_small",
            num_classes=2,
            input_shape=(SIZE, SIZE, 3),
            weights=f"{url}#sha256={wrong}",
        )
    assert len(list((tmp_path / "home" / "models" / "kerastl").iterdir())) == 1
    with pytest.raises(kerastl.ConfigError, match="must carry its SHA-256"):
        kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=(SIZE, SIZE, 3), weights=url)


def test_metadata_is_a_plain_dict_outside_keras_tracking():
    """kerastl_config must not become a Keras TrackedDict: deep-copying one pickles the model."""
    model = kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3))
    assert type(model.kerastl_config) is dict
    model.kerastl_config = {"task": "classification", "nested": {"a": [1, 2]}}
    assert type(model.kerastl_config) is dict and type(model.kerastl_config["nested"]) is dict
    config = model.get_config()["kerastl_config"]
    assert config == model.kerastl_config and config is not model.kerastl_config
