"""Freezing policies: what is frozen stays bit-identical, BatchNorm statistics stay put."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import kerastl
from kerastl.freeze import (
    GradualUnfreezing,
    apply_l2sp,
    apply_policy,
    discriminative_optimizer,
    parse_policy,
    trainable_groups,
)
from kerastl.zoo import get_adapter

SIZE = 32


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 3, n)
    return x, y


def _snapshot(layers):
    return {id(v): np.array(v.numpy()) for layer in layers for v in layer.weights}


def _groups(model):
    adapter = get_adapter(model.kerastl_config["backbone"])
    return adapter.layer_groups(model.get_layer("backbone"))


def _bn_stats(model):
    backbone = model.get_layer("backbone")
    return {
        layer.name: (np.array(layer.moving_mean.numpy()), np.array(layer.moving_variance.numpy()))
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }


def _fit(model, epochs=2, lr=0.01, **kw):
    kerastl.compile_for_task(model, learning_rate=lr)
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, **kw)


@pytest.mark.parametrize("policy", ["none", "last:2", "up_to:stage2"])
def test_batchnorm_statistics_stay_frozen_after_unfreezing(policy):
    """keras issue 20285: with the base unfrozen, BN must still not move.

    train_batchnorm=False as pretrained weights would have it (random init trains BN).
    """
    model = kerastl.build(
        "resnet50",
        num_classes=3,
        input_shape=(SIZE, SIZE, 3),
        freeze=policy,
        train_batchnorm=False,
    )
    before = _bn_stats(model)
    assert len(before) > 40
    bn_weights = _snapshot(
        [
            layer
            for layer in model.get_layer("backbone").layers
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
    )
    _fit(model)
    after = _bn_stats(model)
    for name, (mean, var) in before.items():
        np.testing.assert_array_equal(after[name][0], mean, err_msg=name)
        np.testing.assert_array_equal(after[name][1], var, err_msg=name)
    for layer in model.get_layer("backbone").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.weights:
                np.testing.assert_array_equal(v.numpy(), bn_weights[id(v)])


def test_train_batchnorm_true_lets_statistics_move():
    """The control: the check above can fail."""
    model = kerastl.build(
        "resnet50", num_classes=3, input_shape=(SIZE, SIZE, 3), freeze="none", train_batchnorm=True
    )
    before = _bn_stats(model)
    _fit(model, epochs=1)
    after = _bn_stats(model)
    moved = [n for n in before if not np.array_equal(before[n][0], after[n][0])]
    assert len(moved) > len(before) // 2


@pytest.mark.parametrize(
    "policy, frozen, trained",
    [
        ("backbone", ["stem", "stage1", "stage2", "stage3", "stage4"], []),
        ("up_to:stage2", ["stem", "stage1", "stage2"], ["stage3", "stage4"]),
        ("last:1", ["stem", "stage1", "stage2", "stage3"], ["stage4"]),
        ("none", [], ["stem", "stage1", "stage2", "stage3", "stage4"]),
    ],
)
def test_policy_freezes_named_groups_bit_identical(policy, frozen, trained):
    # ResNet50: a random-init MobileNetV2 at 32 px saturates its ReLU6s (gradients ~1e-12).
    model = kerastl.build("resnet50", num_classes=3, input_shape=(SIZE, SIZE, 3), freeze=policy)
    groups = _groups(model)
    before = {g: _snapshot(layers) for g, layers in groups.items()}
    head = model.get_layer("logits").get_weights()[0].copy()
    _fit(model, epochs=1)
    for g in frozen:
        for layer in groups[g]:
            for v in layer.weights:
                np.testing.assert_array_equal(v.numpy(), before[g][id(v)], err_msg=f"{g}/{v.path}")
    for g in trained:
        changed = [
            v.path
            for layer in groups[g]
            for v in layer.trainable_weights
            if np.abs(v.numpy() - before[g][id(v)]).max() > 1e-5
        ]
        assert changed, f"group {g} should have trained"
    assert not np.array_equal(model.get_layer("logits").get_weights()[0], head)
    assert trainable_groups(model) == {g: g in trained for g in groups}


def test_regex_policy_freezes_matching_layers_only():
    model = kerastl.build(
        "resnet50", num_classes=3, input_shape=(SIZE, SIZE, 3), freeze="regex:^conv[1-4]_"
    )
    backbone = model.get_layer("backbone")
    frozen = [layer for layer in backbone.layers if layer.name.startswith(("conv1_", "conv2_"))]
    free = [
        layer
        for layer in backbone.layers
        if layer.name.startswith("conv5_") and layer.name.endswith("_conv")
    ]
    assert frozen and free
    before = _snapshot(frozen + free)
    _fit(model, epochs=1)
    for layer in frozen:
        for v in layer.weights:
            np.testing.assert_array_equal(v.numpy(), before[id(v)])
    assert any(
        not np.array_equal(v.numpy(), before[id(v)])
        for layer in free
        for v in layer.trainable_weights
    )


def test_gradual_unfreezing_goes_from_head_down():
    model = kerastl.build(
        "resnet50",
        num_classes=3,
        input_shape=(SIZE, SIZE, 3),
        freeze="backbone",
        learning_rate=0.01,
    )
    groups = _groups(model)
    cb = GradualUnfreezing(model, every=1, verbose=False)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(trainable_groups(self.model)))

    before = {g: _snapshot(layers) for g, layers in groups.items()}
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[cb, Record()])
    names = list(groups)
    assert seen[0] == dict.fromkeys(names, False)
    assert seen[1] == {g: g == names[-1] for g in names}
    assert seen[2] == {g: g in names[-2:] for g in names}

    def changed(g):
        return (
            sum(
                float(np.abs(v.numpy() - before[g][id(v)]).max())
                for layer in groups[g]
                for v in layer.trainable_weights
            )
            > 1e-4
        )

    assert changed(names[-1]) and changed(names[-2])
    assert not changed(names[0])


def test_discriminative_learning_rates_scale_each_groups_update():
    model = kerastl.build(
        "mobilenet_v2",
        num_classes=3,
        input_shape=(SIZE, SIZE, 3),
        freeze="none",
        compile=False,
        train_batchnorm=False,  # the update rule of the weights, as with pretrained weights
    )
    opt = discriminative_optimizer(model, learning_rate=0.1, decay=0.5, optimizer="sgd")
    names = list(_groups(model))
    rates = opt.kerastl_group_rates
    assert rates["head"] == pytest.approx(0.1)
    assert rates[names[-1]] == pytest.approx(0.05)
    assert rates[names[0]] == pytest.approx(0.1 * 0.5 ** len(names))
    kerastl.compile_for_task(model, optimizer=opt)

    x, y = _data(8)
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = dict(zip([v.path for v in variables], tape.gradient(loss, variables)))
    before = {v.path: np.array(v.numpy()) for v in variables}
    model.train_on_batch(x, y)
    by_path = {v.path: v for v in variables}
    groups = _groups(model)
    checks = {"head": model.get_layer("logits").kernel}
    for g in (names[0], names[-1]):
        conv = next(
            layer
            for layer in groups[g]
            if isinstance(layer, keras.layers.Conv2D) and layer.trainable_weights
        )
        checks[g] = conv.kernel
    for g, var in checks.items():
        delta = before[var.path] - by_path[var.path].numpy()
        expected = rates[g] * np.asarray(grads[var.path])
        np.testing.assert_allclose(delta, expected, rtol=2e-3, atol=1e-7, err_msg=g)


@pytest.mark.heavy
def test_l2sp_pulls_weights_towards_their_start():
    def distance_after_training(alpha):
        keras.utils.set_random_seed(3)
        model = kerastl.build(
            "mobilenet_v3_small",
            num_classes=3,
            input_shape=(SIZE, SIZE, 3),
            freeze="none",
            compile=False,
        )
        start = {
            v.path: np.array(v.numpy()) for v in model.get_layer("backbone").trainable_variables
        }
        if alpha:
            assert apply_l2sp(model, alpha=alpha) > 0
            assert float(sum(keras.ops.convert_to_numpy(t) for t in model.losses)) == 0.0
        keras.utils.set_random_seed(3)
        _fit(model, epochs=3, lr=0.01)
        if alpha:
            assert float(sum(keras.ops.convert_to_numpy(t) for t in model.losses)) > 0.0
        return sum(
            float(np.sum((v.numpy() - start[v.path]) ** 2))
            for v in model.get_layer("backbone").trainable_variables
        )

    free = distance_after_training(0.0)
    pulled = distance_after_training(10.0)
    assert free > 0
    assert pulled < 0.5 * free


def test_parse_policy_forms_and_errors():
    assert parse_policy("last:2").value == 2
    assert parse_policy({"up_to": "stage1"}).kind == "up_to"
    assert parse_policy(True).kind == "backbone"
    assert parse_policy(None).kind == "none"
    with pytest.raises(kerastl.UnknownNameError, match="Did you mean 'backbone'"):
        parse_policy("backbon")
    with pytest.raises(kerastl.ConfigError, match="'last' needs a whole number"):
        parse_policy("last:two")
    with pytest.raises(kerastl.ConfigError, match="invalid regex"):
        parse_policy("regex:(")
    model = kerastl.build("vgg16", num_classes=2, input_shape=(SIZE, SIZE, 3), compile=False)
    with pytest.raises(kerastl.UnknownNameError, match="up_to:stage9.*Did you mean 'up_to:stage"):
        apply_policy(model, "up_to:stage9")
    with pytest.raises(kerastl.ConfigError, match="more groups than vgg16 has"):
        apply_policy(model, "last:9")


def test_gradual_unfreezing_with_discriminative_rates():
    """Each group joins when GradualUnfreezing reaches it, and then moves at its own rate."""
    model = kerastl.build(
        "resnet50", num_classes=3, input_shape=(SIZE, SIZE, 3), freeze="backbone", compile=False
    )
    opt = discriminative_optimizer(model, learning_rate=0.01, decay=0.5, optimizer="sgd")
    kerastl.compile_for_task(model, optimizer=opt)
    groups = _groups(model)
    names = list(groups)
    cb = GradualUnfreezing(model, every=1, verbose=False)
    before = {g: _snapshot(layers) for g, layers in groups.items()}
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[cb])

    def moved(g):
        return max(
            float(np.abs(v.numpy() - before[g][id(v)]).max())
            for layer in groups[g]
            for v in layer.weights
        )

    assert moved(names[-1]) > 1e-6 and moved(names[-2]) > 1e-6
    assert moved(names[0]) == 0.0
    assert opt.kerastl_group_rates[names[-2]] == pytest.approx(
        0.5 * opt.kerastl_group_rates[names[-1]]
    )
    assert int(opt.iterations) == 3 * 2  # 16 samples / batch 8, three epochs


def _backbone_bns(model):
    return [
        layer
        for layer in model.get_layer("backbone")._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _feature_rms(model, x):
    features = keras.Model(model.inputs, model.get_layer("logits").input)
    return float(np.sqrt(np.mean(features.predict(x, verbose=0) ** 2)))


def test_random_init_backbone_trains_batchnorm_by_default():
    """weights=None: BatchNorm trains unless told not to; frozen, the features collapse."""
    from kerastl.freeze import resolve_train_batchnorm

    assert resolve_train_batchnorm(None, None) is True
    assert resolve_train_batchnorm(None, "imagenet") is False
    x, y = _data(12)
    rms = {}
    for bn in (None, False):
        keras.utils.set_random_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = kerastl.build(
                "mobilenet_v3_small",
                num_classes=3,
                weights=None,
                input_shape=(SIZE, SIZE, 3),
                train_batchnorm=bn,
            )
        said = " ".join(str(w.message) for w in caught)
        bns = _backbone_bns(model)
        assert len(bns) > 20
        if bn is None:
            assert all(layer.trainable for layer in bns) and not said
            assert model.kerastl_config["train_batchnorm"] is True
        else:  # honoured, with a warning
            assert not any(layer.trainable for layer in bns)
            assert "collapse" in said
        model.fit(x, y, batch_size=6, epochs=2, verbose=0)
        rms[bn] = _feature_rms(model, x)
    assert rms[False] < 1e-8  # the collapse the default avoids (RMS ~4e-11)
    assert rms[None] > 1e-5


def test_regex_policy_that_matches_no_layer_is_refused():
    kw = dict(num_classes=3, weights=None, input_shape=(64, 64, 3))
    with pytest.raises(kerastl.ConfigError) as err:
        kerastl.build("mobilenet_v3_small", freeze="regex:nomatch", **kw)
    msg = str(err.value)
    assert "freeze" in msg and "'regex:nomatch'" in msg and "'conv'" in msg
    with pytest.raises(kerastl.ConfigError, match="matches no layer"):
        kerastl.build("mobilenet_v3_small", freeze="regex:^conv1", **kw)  # a ResNet name
    stem = kerastl.build("mobilenet_v3_small", freeze="regex:^conv", **kw)  # conv, conv_bn
    full = kerastl.build("mobilenet_v3_small", freeze="none", **kw)
    assert 0 < len(stem.trainable_weights) < len(full.trainable_weights)


@pytest.mark.filterwarnings("ignore:freeze=.* with weights=None")
def test_discriminative_optimizer_saves_and_loads_with_the_model(tmp_path):
    """The saved model loads with its optimizer: group optimizers, rates, mapping and state."""
    from kerastl.core.optimizers import GroupRatesOptimizer

    model = kerastl.build(
        "mobilenet_v3_small",
        num_classes=3,
        input_shape=(SIZE, SIZE, 3),
        freeze="last:2",
        compile=False,
    )
    opt = discriminative_optimizer(model, 1e-3, decay=0.5)
    kerastl.compile_for_task(model, optimizer=opt)
    x, y = _data(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "disc.keras"
    model.save(path)

    loaded = kerastl.load_model(path)
    back = loaded.optimizer
    assert isinstance(back, GroupRatesOptimizer)
    assert back.kerastl_group_rates == pytest.approx(opt.kerastl_group_rates)
    assert back._optimizer_map.assignment == opt._optimizer_map.assignment
    assert [float(o.learning_rate) for o in back.optimizers] == pytest.approx(
        [float(o.learning_rate) for o in opt.optimizers]
    )
    assert int(back.iterations) == 1
    assert len(back.variables) == len(opt.variables)
    for a, b in zip(opt.variables, back.variables):  # Adam moments restored, in order
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    group = back._optimizer_map.group_of(loaded.get_layer("logits").kernel)
    assert group == "head"
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # and it keeps training
    assert int(back.iterations) == 2
