"""kerastl.train: run folder, cached features, two-phase recipe, evaluation, k-fold, export hook."""

from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest
import yaml
from conftest import class_images as _images
from PIL import Image

from kerastl import data as kdata
from kerastl.errors import ConfigError, DataError
from kerastl.train import _metrics as M

BACKBONE = "mobilenet_v3_small"


def _cfg(tmp_path, name, weights=None, **sections):
    cfg = {
        "output_dir": str(tmp_path / "runs"),
        "name": name,
        "seed": 1,
        "model": {"backbone": BACKBONE, "input_size": 32, "dropout": 0.0, "weights": weights},
        "data": {"path": "<memory>"},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "verbose": 0,
            "tensorboard": False,
            "early_stopping": 0,
        },
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    return cfg


# -- metrics (NumPy only) ------------------------------------------------------


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.6, 0.3],
            [0.2, 0.3, 0.5],
            [0.5, 0.1, 0.4],
        ]
    )
    m = M.classification_metrics(y, p, ["a", "b", "c"], top_k=2)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["top2_accuracy"] == pytest.approx(6 / 6)


def test_auc_regression_multilabel_metrics():
    assert M.roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])) == 1.0
    assert M.roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert M.roc_auc(np.array([1, 1]), np.array([0.5, 0.5])) is None
    r = M.regression_metrics(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [5.0]]))
    assert r["mae"] == pytest.approx(2 / 3) and r["rmse"] == pytest.approx(np.sqrt(4 / 3))
    ml = M.multilabel_metrics(
        np.array([[1, 0], [0, 1], [1, 1]]),
        np.array([[0.9, 0.5], [0.3, 0.7], [0.6, 0.4]]),
        ["x", "y"],
    )
    assert ml["per_class"]["x"]["auc"] == 1.0 and ml["macro_auc"] == pytest.approx(0.75)


def test_binary_and_embedding_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.2, 0.6, 0.7, 0.4, 0.9])
    m = M.compute_metrics("binary", y, s[:, None], ["neg", "pos"], threshold=0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]  # rows: true neg, true pos
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(5 / 6)  # 5 of the 6 (pos, neg) pairs ranked right
    assert M.compute_metrics("binary", y, s, threshold=0.65)["confusion_matrix"] == [[2, 0], [1, 2]]
    fpr, tpr = M.roc_curve(y, s)
    assert fpr.tolist() == [0, 0, 0, 0.5, 0.5, 1] and tpr.tolist() == pytest.approx(
        [0, 1 / 3, 2 / 3, 2 / 3, 1, 1]
    )
    # Leave-one-out nearest neighbour: the 4th point's neighbour is of the other class.
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.4]])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    e = M.compute_metrics("embedding", np.array([0, 0, 1, 1]), emb)
    assert e["nn_accuracy"] == pytest.approx(3 / 4) and e["num_examples"] == 4
    with pytest.raises(Exception, match="no metrics defined"):
        M.compute_metrics("segmentation", y, s)


def test_roc_and_regression_plots_are_written(tmp_path):
    from kerastl.train.evaluate import write_plots

    y = np.array([0, 1, 1, 0])
    s = np.array([[0.1], [0.8], [0.6], [0.3]])
    m = M.compute_metrics("binary", y, s, ["a", "b"])
    written = write_plots(tmp_path / "bin", "binary", m, y, s, {"loss": [1.0, 0.5]})
    names = sorted(p.split("/")[-1] for p in written)
    assert names == ["confusion_matrix.png", "curves.png", "roc.png"]
    yr, pr = np.array([[1.0], [2.0], [3.0]]), np.array([[1.1], [1.9], [3.2]])
    mr = M.compute_metrics("regression", yr, pr)
    written = write_plots(tmp_path / "reg", "regression", mr, yr, pr, {"loss": [1.0]})
    assert [p.split("/")[-1] for p in written][-1] == "regression.png"
    for p in (
        tmp_path / "bin" / "plots" / "roc.png",
        tmp_path / "reg" / "plots" / "regression.png",
    ):
        assert Image.open(p).size[0] > 100  # a real PNG


# -- the run folder ------------------------------------------------------------


def _folder(root, n=8, size=36):
    x, y = _images(n, 3, size)
    for i, (img, c) in enumerate(zip(x, y)):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    (root / "class_1" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return root


@pytest.mark.heavy
def test_cli_train_writes_run_folder_then_evaluate(tmp_path, capsys):
    from kerastl.cli import main

    _folder(tmp_path / "imgs", n=4)
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"backbone": BACKBONE, "input_size": 32},
                "data": {"path": "imgs", "val_split": 0.25},
                "train": {"epochs": 1, "batch_size": 8, "verbose": 0, "early_stopping": 0},
                "finetune": {"epochs": 1, "freeze": "last:1"},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    assert main(["train", str(tmp_path / "run.yaml"), "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert "corrupt.jpg" in captured.err  # reported (a logged warning, on stderr)
    run = tmp_path / "runs" / "run"
    for f in (
        "config.yaml",
        "model.keras",
        "metrics.json",
        "README.md",
        "data_report.json",
        "logs/history.csv",
        "plots/curves.png",
        "plots/confusion_matrix.png",
    ):
        assert (run / f).exists(), f
    assert list((run / "logs" / "tensorboard").iterdir())
    assert not (run / "backup").exists()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["train"]["strategy"] == "auto"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"] == 3 and len(metrics["confusion_matrix"]) == 3
    assert {"accuracy", "macro_f1", "per_class"} <= set(metrics)
    report = json.loads((run / "data_report.json").read_text())
    assert [s["path"].split("/")[-1] for s in report["skipped"]] == ["corrupt.jpg"]
    history = (run / "logs" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 2  # header + 1 head epoch + 1 fine-tune epoch
    card = (run / "README.md").read_text()
    assert BACKBONE in card and "kerastl.load_model" in card and "| accuracy |" in card
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    # k-fold cross-validation of the same run config, from the CLI: each fold trains on
    # half and is scored on the rest; every example is scored exactly once.
    assert main(["evaluate", str(run), "--folds", "2", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n") :])
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2
    assert summary["num_examples"] == 12
    accs = [f["accuracy"] for f in summary["per_fold"]]
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert summary["std"]["accuracy"] == pytest.approx(np.std(accs), abs=1e-6)
    assert json.loads((run / "kfold.json").read_text())["folds"] == 2
    fold_metrics = [
        json.loads((run / "folds" / f"fold{i}" / "metrics.json").read_text()) for i in range(2)
    ]
    assert sum(m["num_examples"] for m in fold_metrics) == 12  # each example scored once
    assert [m["accuracy"] for m in fold_metrics] == pytest.approx(accs)


def test_precise_bn_averages_the_same_shuffled_batches_every_epoch():
    """A resumed run builds the dataset afresh: its epoch k must see what an uninterrupted
    run's epoch k saw, so the batches cannot depend on how many passes came before."""
    from kerastl.train.phases import _precise_bn

    x = np.arange(160, dtype=np.float32).reshape(160, 1, 1, 1) * np.ones((1, 8, 8, 3), np.float32)
    y = np.repeat(np.arange(2), 80)  # ordered by class, as folders are read
    ex = kdata.from_numpy(x, y)

    def dataset():
        ctx = types.SimpleNamespace(
            cfg={"seed": 0, "train": {"precise_bn": 2}, "model": {"channels": 3},
                 "data": {"cache": True}},
            train_ex=ex, global_batch=8, image_size=(8, 8),
        )  # fmt: skip
        ctx.dataset = lambda e, b, **kw: kdata.make_dataset(e, (8, 8), b, channels=3, **kw)
        (cb,) = _precise_bn(ctx)
        return cb.dataset

    def first_batch(ds) -> list[float]:
        return [float(v) for xb, _ in ds.take(1) for v in np.asarray(xb)[:, 0, 0, 0]]

    ds = dataset()
    epoch1, epoch2 = first_batch(ds), first_batch(ds)
    assert epoch1 == epoch2 == first_batch(dataset())  # every epoch, and after a resume
    assert len(epoch1) == 64 and sorted(epoch1) != list(range(64))  # shuffled, both classes


def test_data_cache_false_caches_no_pipeline(tmp_path, monkeypatch):
    """data.cache: false was read as true: the training, validation and precise-BN
    pipelines all cached every decoded example in memory."""
    from kerastl.train import train

    asked = []
    make = kdata.make_dataset

    def recording(ex, *args, cache=True, **kw):
        asked.append(cache)
        return make(ex, *args, cache=cache, **kw)

    monkeypatch.setattr(kdata, "make_dataset", recording)
    x, y = _images(4, 2)
    ex = kdata.from_numpy(x, y)
    cfg = _cfg(
        tmp_path,
        "nocache",
        model={"freeze": "none"},
        data={"cache": False},
        train={"epochs": 1, "precise_bn": 1, "cache_features": "off"},
    )
    train(cfg, examples=ex.split(0.25, seed=0), evaluate=False)
    assert len(asked) >= 3 and not any(asked), asked  # training, validation, precise BN


def test_a_finetune_policy_that_fits_no_layer_fails_before_phase_one_trains(tmp_path):
    from kerastl.train import train

    x, y = _images(4, 3)
    ex = kdata.from_numpy(x, y)
    cfg = _cfg(tmp_path, "ftregex", finetune={"epochs": 1, "freeze": "regex:^no_such_layer"})
    with pytest.raises(
        ConfigError, match=r"finetune.freeze: 'regex:\^no_such_layer' matches no layer"
    ):
        train(cfg, examples=(ex, None))
    assert not list((tmp_path / "runs").rglob("history.csv"))  # phase 1 never ran


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_a_frozen_random_backbone_is_refused_before_phase_one_trains(tmp_path, weights, cache):
    """Random init, backbone frozen, no fine-tuning: every example gets the same features,
    so the head would train to chance accuracy. Refused, on cached features and on the
    end-to-end path alike; with calibrated weights the same run trains."""
    from kerastl.train import train

    x, y = _images(8, 3)
    ex = kdata.from_numpy(x, y)
    cfg = _cfg(tmp_path, f"frozen-{cache}", train={"cache_features": cache})
    with pytest.raises(ConfigError) as err:
        train(cfg, examples=(ex, None), evaluate=False)
    msg = str(err.value)
    assert "model.weights: null (random init) with model.freeze: 'backbone'" in msg
    assert "same features (RMS" in msg and "chance accuracy" in msg
    assert "model.weights: imagenet" in msg and "model.freeze: none" in msg
    assert not list((tmp_path / "runs").rglob("history.csv"))  # no epoch trained
    # ...its calibrated stand-in for pretrained weights passes the same check and trains
    ok = train(_cfg(tmp_path, f"calibrated-{cache}", weights, train={"cache_features": cache}),
               examples=(ex, None), evaluate=False)  # fmt: skip
    assert len(ok.history["loss"]) == 2


def test_a_frozen_random_backbone_goes_on_when_fine_tuning_trains_it(tmp_path, caplog):
    from kerastl.train import train

    x, y = _images(8, 3)
    cfg = _cfg(tmp_path, "ft", finetune={"epochs": 1, "freeze": "none"})
    with caplog.at_level(logging.WARNING, logger="kerastl"):
        r = train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False)
    assert len(r.history["loss"]) == 3
    assert "Fine-tuning (finetune.freeze: 'none') then trains every layer" in caplog.text


def test_label_head_mismatch_is_caught_before_training(tmp_path):
    from kerastl.train import train

    x, y = _images(4, 3)
    ex = kdata.from_numpy(x, y)
    cfg = _cfg(tmp_path, "bad", model={"task": "regression"})
    with pytest.raises(DataError, match="encoded for task='classification'"):
        train(cfg, examples=(ex, None))


# -- cached features -----------------------------------------------------------


def test_cached_features_train_the_same_head_as_end_to_end(tmp_path, weights):
    """Same seed and data: the head trained on cached features equals end-to-end training."""
    from kerastl.train import train

    x, y = _images(10, 3)
    ex = kdata.from_numpy(x, y)
    tr, va = ex.split(0.2, seed=0)
    results = {}
    for mode in ("memory", "off"):
        cfg = _cfg(
            tmp_path,
            f"c_{mode}",
            weights,
            train={"epochs": 3, "cache_features": mode, "learning_rate": 1e-2},
        )
        results[mode] = train(cfg, examples=(tr, va), evaluate=False)
    info = results["memory"].timings["feature_cache"]
    assert info["mode"] == "memory"
    # The feature pass runs at the inference batch (32 px images: 128), not the training
    # one; features do not depend on the batch, so the two runs still agree.
    assert info["batch"] == 128 and info["batch"] > results["memory"].config["train"]["batch_size"]
    assert results["off"].timings["feature_cache"] == "no"
    w_cached = results["memory"].model.get_layer("logits").get_weights()
    w_e2e = results["off"].model.get_layer("logits").get_weights()
    for a, b in zip(w_cached, w_e2e):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5)
    h_c, h_e = results["memory"].history, results["off"].history
    np.testing.assert_allclose(h_c["loss"], h_e["loss"], rtol=1e-4)
    # it did train, on informative features: the loss fell well below chance (ln 3)
    assert h_c["loss"][-1] < h_c["loss"][0] and h_c["loss"][-1] < 0.9
    # the full model predicts like the end-to-end one
    np.testing.assert_allclose(
        results["memory"].model.predict(x[:5].astype("float32"), verbose=0),
        results["off"].model.predict(x[:5].astype("float32"), verbose=0),
        atol=1e-4,
    )


def test_feature_pass_traces_the_backbone_once_for_any_batch_and_dtype():
    """Train and validation passes, a partial last batch and uint8 input share one graph."""
    import keras
    import tensorflow as tf

    from kerastl.train._cache import compute_features

    traces = []

    class Counted(keras.layers.Layer):
        def call(self, x):
            traces.append(tuple(x.shape))  # runs at trace time only
            return keras.ops.mean(x, axis=(1, 2))

    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, Counted()(inp))
    x = np.random.default_rng(0).uniform(0, 255, (10, 8, 8, 3)).astype("float32")
    traces.clear()
    a, y = compute_features(
        model, tf.data.Dataset.from_tensor_slices((x, np.arange(10))).batch(4), verbose=0
    )
    x8 = x.astype("uint8")
    b, _ = compute_features(
        model, tf.data.Dataset.from_tensor_slices((x8, np.arange(10))).batch(3), verbose=0
    )
    assert len(traces) == 1, traces
    np.testing.assert_allclose(a, x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(b, x8.astype("float32").mean(axis=(1, 2)), rtol=1e-6)
    assert y.tolist() == list(range(10))


def test_augmentation_disables_the_cache_with_a_message(tmp_path, caplog, weights):
    from kerastl.train import train

    caplog.set_level(logging.INFO, logger="kerastl")

    x, y = _images(4, 2)
    ex = kdata.from_numpy(x, y)
    cfg = _cfg(tmp_path, "aug", weights, data={"augment": "light"}, train={"epochs": 1})
    r = train(cfg, examples=ex.split(0.25, seed=0), evaluate=False)
    assert r.timings["feature_cache"] == "no"
    assert "cached features disabled: augmentation ['flip']" in caplog.text
    # augmentation stays out of the model
    assert not [layer for layer in r.model._flatten_layers() if "Random" in type(layer).__name__]


def test_disk_cache_is_reused(tmp_path):
    from kerastl.builder import build
    from kerastl.train._cache import FeatureCache, split_model

    x, y = _images(3, 2)
    ex = kdata.from_numpy(x, y)
    model = build(
        BACKBONE, num_classes=2, input_shape=(32, 32, 3), freeze="backbone", compile=False
    )
    feats, head = split_model(model)
    assert head.output_shape == model.output_shape
    ds = kdata.make_dataset(ex, (32, 32), 4)
    c1 = FeatureCache("disk", tmp_path / "fc")
    a, _ = c1.get(model, feats, ex.fingerprint(), ds, verbose=0)
    FeatureCache.clear_memory()
    c2 = FeatureCache("disk", tmp_path / "fc")
    b, _ = c2.get(model, feats, ex.fingerprint(), ds, verbose=0)
    assert (c1.misses, c2.hits) == (1, 1) and np.array_equal(a, b)
    assert len(list((tmp_path / "fc").glob("*.npz"))) == 1
    # other data, other key
    c2.get(model, feats, ex.subset([0, 1]).fingerprint(), ds.take(1), verbose=0)
    assert c2.misses == 1


# -- the recipe ----------------------------------------------------------------


def test_two_phase_recipe_unfreezes_and_keeps_batchnorm_statistics(tmp_path, weights):
    from kerastl.train import train

    x, y = _images(6, 2)
    ex = kdata.from_numpy(x, y)
    cfg = _cfg(
        tmp_path,
        "two",
        weights,
        train={"epochs": 1},
        finetune={"epochs": 2, "freeze": "none", "gradual_every": 1},
    )
    import keras

    from kerastl.builder import build

    keras.utils.set_random_seed(1)
    ref = build(BACKBONE, num_classes=2, input_shape=(32, 32, 3), compile=False, weights=weights)
    r = train(cfg, examples=ex.split(0.25, seed=0), evaluate=False)
    bb, bb0 = r.model.get_layer("backbone"), ref.get_layer("backbone")
    moved = [
        not np.allclose(a.numpy(), b.numpy())
        for a, b in zip(bb.weights, bb0.weights)
        if "moving" not in a.path and "kernel" in a.path
    ]
    assert any(moved), "fine-tuning did not change the backbone"
    stats = [
        np.allclose(a.numpy(), b.numpy())
        for a, b in zip(bb.weights, bb0.weights)
        if "moving" in a.path
    ]
    assert stats and all(stats), "BatchNorm moving statistics changed"
    assert len(r.history["loss"]) == 3
    assert r.model.kerastl_config["freeze"] == "last:1"  # gradual: one group unfrozen at epoch 1


def test_discriminative_rates_in_the_fine_tune_phase(tmp_path):
    from kerastl.train import train

    x, y = _images(4, 2)
    cfg = _cfg(
        tmp_path,
        "ld",
        train={"epochs": 0},
        finetune={"epochs": 2, "layer_decay": 0.5, "gradual_every": 1},  # both at once
    )
    r = train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False)
    opt = r.model.optimizer
    import keras

    assert isinstance(opt, keras.optimizers.MultiOptimizer)
    rates = opt.kerastl_group_rates
    assert rates["head"] == pytest.approx(1e-4) and min(rates.values()) < 1e-4
    assert len(r.history["loss"]) == 2
    assert r.model.kerastl_config["freeze"] == "last:1"  # gradual: one group joined at epoch 1


def test_layer_decay_run_finishes_with_metrics_and_its_model_loads(tmp_path):
    """finetune.layer_decay: the best checkpoint (with its per-group optimizer) loads again."""
    import kerastl
    from kerastl.core.optimizers import GroupRatesOptimizer
    from kerastl.train import train

    x, y = _images(4, 2)
    cfg = _cfg(
        tmp_path,
        "ld_metrics",
        train={"epochs": 1},
        finetune={"epochs": 1, "freeze": "last:1", "layer_decay": 0.7},
    )
    r = train(cfg, examples=(kdata.from_numpy(x, y), kdata.from_numpy(x, y)))
    run = tmp_path / "runs" / "ld_metrics"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"] == 8 and "accuracy" in metrics
    loaded = kerastl.load_model(run / "model.keras")
    assert isinstance(loaded.optimizer, GroupRatesOptimizer)
    assert loaded.optimizer.kerastl_group_rates == pytest.approx(
        r.model.optimizer.kerastl_group_rates
    )
    assert loaded.optimizer.kerastl_group_rates["head"] == pytest.approx(1e-4)


def test_gradual_unfreezing_model_loads_with_its_optimizer_state(tmp_path):
    """Gradual unfreezing builds the optimizer on every variable that may become trainable;
    Keras rebuilds a loaded one on the trainable ones only and would drop the saved moments
    (with a warning). kerastl.load_model restores them, and training goes on from them."""
    import warnings
    import zipfile

    import h5py

    import kerastl
    from kerastl.core.model import OPTIMIZER_VARIABLES
    from kerastl.train import train

    x, y = _images(4, 2)
    cfg = _cfg(
        tmp_path,
        "ldg",
        train={"epochs": 1},
        finetune={"epochs": 2, "gradual_every": 1, "freeze": "last:2", "layer_decay": 0.7},
    )
    train(cfg, examples=(kdata.from_numpy(x, y), kdata.from_numpy(x, y)))
    path = tmp_path / "runs" / "ldg" / "model.keras"
    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as raw, h5py.File(raw) as h5:
        saved = [np.asarray(h5["optimizer/vars"][str(i)]) for i in range(len(h5["optimizer/vars"]))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = kerastl.load_model(path)
    assert not [w for w in caught if "optimizer" in str(w.message)]
    state = [np.asarray(v) for v in model.optimizer.variables]
    assert len(state) == len(saved) > len(model.trainable_variables)
    for got, want in zip(state, saved):
        np.testing.assert_array_equal(got, want)
    assert sum(float(np.abs(v).sum()) > 0 for v in state[1:]) > 50  # trained moments, not zeros
    steps = int(model.optimizer.iterations)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == steps + 1
    exported = kerastl.export(model, tmp_path / "out", formats=["saved_model"])
    assert OPTIMIZER_VARIABLES not in json.dumps(exported, default=str)


def test_evaluate_on_other_data_keeps_the_runs_metrics_and_records_the_data(
    tmp_path, capsys, weights
):
    """`kerastl evaluate RUN --data OTHER` writes evaluations/<stem>/, not the run's metrics."""
    from kerastl.cli import main
    from kerastl.train import train

    x, y = _images(4, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    other = tmp_path / "other.npz"
    xo, yo = _images(3, 2, seed=5)
    np.savez(other, x=xo, y=yo)
    cfg = _cfg(tmp_path, "ev", weights, data={"path": str(tmp_path / "d.npz"), "val_split": 0.25})
    train(cfg)
    run = tmp_path / "runs" / "ev"
    kept = ["metrics.json", "plots/confusion_matrix.png", "README.md"]
    before = {f: (run / f).read_bytes() for f in kept}
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(other)]) == 0
    out, err = capsys.readouterr()
    assert "training split" not in err  # new examples: nothing to warn about
    assert {f: (run / f).read_bytes() for f in kept} == before
    where = run / "evaluations" / "other"
    metrics = json.loads((where / "metrics.json").read_text())
    assert metrics["data"] == str(other.resolve()) and metrics["num_examples"] == 6
    assert (where / "plots" / "confusion_matrix.png").is_file()
    assert str(where / "metrics.json") in out and str(other.resolve()) in out
    # other data with the same name gets its own folder; the same data reuses its folder
    (tmp_path / "b").mkdir()
    np.savez(tmp_path / "b" / "other.npz", x=xo[:4], y=yo[:4])
    assert main(["evaluate", str(run), "--data", str(tmp_path / "b" / "other.npz"), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["metrics_path"] == str(run / "evaluations" / "other-2" / "metrics.json")
    assert json.loads((where / "metrics.json").read_text())["num_examples"] == 6
    assert main(["evaluate", str(run), "--data", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics_path"] == str(where / "metrics.json")
    # a held-out set without one of the classes is scored on the others, with a warning
    np.savez(tmp_path / "no1.npz", x=xo[yo == 0], y=yo[yo == 0])
    assert main(["evaluate", str(run), "--data", str(tmp_path / "no1.npz"), "--json"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["num_examples"] == 3 and "class(es) ['1']" in got.err, got.err
    # the run's whole data: the examples it trained on are counted and named
    assert main(["evaluate", str(run), "--data", str(tmp_path / "d.npz"), "--json"]) == 0
    err = capsys.readouterr().err
    assert "6 of its 8 examples are in the run's training split" in err, err
    # the run's own split, drawn again: the same data gives it; data grown since does not
    assert main(["evaluate", str(run)]) == 0
    before = (run / "metrics.json").read_bytes()
    xm, ym = _images(2, 2, seed=9)
    np.savez(tmp_path / "d.npz", x=np.concatenate([x, xm]), y=np.concatenate([y, ym]))
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not what the run trained beside" in err and "had 6 / 2" in err, err
    assert (run / "metrics.json").read_bytes() == before


# -- k-fold and export hook ------------------------------------------------------


@pytest.mark.slow
def test_kfold_reports_mean_and_spread(tmp_path, weights):
    from kerastl.train import cross_validate

    x, y = _images(4, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = _cfg(tmp_path, "kf", weights, data={"path": str(tmp_path / "d.npz")}, train={"epochs": 1})
    s = cross_validate(cfg, folds=2)
    assert s["folds"] == 2 and len(s["per_fold"]) == 2
    assert 0.0 <= s["mean"]["accuracy"] <= 1.0 and s["std"]["accuracy"] >= 0.0
    assert (tmp_path / "runs" / "kf" / "kfold.json").is_file()
    assert (tmp_path / "runs" / "kf" / "folds" / "fold1" / "metrics.json").is_file()


def _fake_fold_train(monkeypatch, calls):
    """kfold's train(): validates the fold config as train() does, records it, scores 0.5."""
    import copy

    from kerastl.train import kfold
    from kerastl.train._config import validate_config

    def fake_train(cfg, examples=None, **kw):
        calls.append(validate_config(copy.deepcopy(cfg)))
        return types.SimpleNamespace(metrics={"task": "classification", "accuracy": 0.5})

    monkeypatch.setattr(kfold, "train", fake_train)


def test_kfold_of_a_config_that_exports_and_quantizes_skips_export(tmp_path, monkeypatch, caplog):
    """The folds export nothing, and say so: the config's export section was dropped
    without a word."""
    from kerastl.train import cross_validate

    calls: list = []
    _fake_fold_train(monkeypatch, calls)
    x, y = _images(4, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = _cfg(
        tmp_path,
        "kq",
        data={"path": str(tmp_path / "d.npz")},
        export={
            "formats": ["saved_model", "tflite"],
            "quantize": ["int8", "float16"],
            "version": 2,
        },
    )
    caplog.set_level(logging.WARNING, logger="kerastl")
    s = cross_validate(cfg, folds=2)
    assert s["mean"]["accuracy"] == pytest.approx(0.5)
    said = (
        "k-fold exports nothing: the config's export (saved_model, tflite; quantize int8, float16)"
    )
    assert said in caplog.text and s["export"].startswith(said)
    assert len(calls) == 2
    for fold in calls:
        assert fold["export"]["formats"] == [] and fold["export"]["quantize"] == []
        assert fold["export"]["version"] is None


def test_kfold_log_names_each_folds_folder_and_keeps_tf_retracing_warnings_quiet(
    tmp_path, monkeypatch, caplog, capfd
):
    from kerastl.train import cross_validate

    calls: list = []
    _fake_fold_train(monkeypatch, calls)
    retrace = "5 out of the last 13 calls to <function f> triggered tf.function retracing."

    from kerastl.train import kfold

    fake = kfold.train

    def retracing_train(cfg, examples=None, **kw):  # what k models in one process provoke
        logging.getLogger("tensorflow").warning(retrace)
        return fake(cfg, examples, **kw)

    monkeypatch.setattr(kfold, "train", retracing_train)
    x, y = _images(3, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = _cfg(tmp_path, "kn", data={"path": str(tmp_path / "d.npz")})
    caplog.set_level(logging.DEBUG, logger="kerastl")
    s = cross_validate(cfg, folds=3)
    assert [c["name"] for c in calls] == ["fold0", "fold1", "fold2"]
    assert s["fold_runs"] == ["folds/fold0", "folds/fold1", "folds/fold2"]
    text = caplog.text
    assert "folds/fold0 (1 of 3): 4 training, 2 validation" in text
    assert "folds/fold2 (3 of 3): validation accuracy 0.5000" in text
    assert "fold 1/3" not in text
    assert "tf.function retracing" not in capfd.readouterr().err  # --debug shows it
    assert [r.levelno for r in caplog.records if "retracing" in r.getMessage()] == [
        logging.DEBUG
    ] * 3
    with pytest.raises(ConfigError, match=r"folds: expected a whole number of folds >= 2.*got 0"):
        cross_validate(cfg, folds=0)


def test_export_is_called_with_the_run_options(tmp_path, monkeypatch, weights):
    from kerastl.train import train

    calls = {}

    def fake_export(model, out_dir, formats, quantize, calibration_data, validation_data, **kw):
        calls.update(
            formats=formats,
            quantize=quantize,
            shape=calibration_data.shape,
            validation=validation_data,
            out_dir=out_dir,
            task=model.kerastl_config["task"],
            **kw,
        )
        return {"ok": True, "validation": {"samples": len(validation_data[0])}}

    fake = types.ModuleType("kerastl.export")
    fake.export = fake_export
    monkeypatch.setitem(sys.modules, "kerastl.export", fake)
    x, y = _images(4, 2)
    cfg = _cfg(
        tmp_path,
        "ex",
        weights,
        train={"epochs": 1},
        export={"formats": ["saved_model", "tflite"], "quantize": ["int8"], "version": 3},
    )
    r = train(cfg, examples=kdata.from_numpy(x, y).split(0.25, seed=0))
    assert r.exports["ok"] is True
    assert calls["formats"] == ["saved_model", "tflite"] and calls["quantize"] == ["int8"]
    assert calls["version"] == 3 and calls["name"] == "ex" and calls["shape"] == (6, 32, 32, 3)
    assert calls["overwrite"] is True  # a rerun's files replace the last run's once validated
    xv, yv = calls["validation"]  # validation data with labels: accuracy with and without int8
    assert xv.shape == (2, 32, 32, 3) and sorted(yv.tolist()) == [0, 1]
    assert r.exports["calibration"]["class_counts"] == {"0": 3, "1": 3}
    assert calls["out_dir"].endswith("ex/export")


def test_backup_carries_the_dropout_random_state_so_a_resume_ends_with_the_same_weights(tmp_path):
    """The weights file does not hold the dropout layers' generator counters; the backup does."""
    import keras

    from kerastl.train._callbacks import SafeBackupAndRestore

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")

    def fit(epochs: int, backup) -> list[np.ndarray]:
        keras.utils.clear_session()
        keras.utils.set_random_seed(0)  # what a rerun of the same config does
        inp = keras.Input((6,))
        h = keras.layers.Dropout(0.5)(keras.layers.Dense(16, activation="relu")(inp))
        model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dropout(0.3)(h)))
        model.compile(keras.optimizers.SGD(0.1), "mse")
        cb = SafeBackupAndRestore(str(backup))
        model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])
        return [w.numpy() for w in model.weights]

    whole = fit(3, tmp_path / "whole")
    fit(2, tmp_path / "killed")  # the run that was killed after its second epoch
    meta = json.loads((tmp_path / "killed" / "training_metadata.json").read_text())
    assert meta["epoch"] == 2 and len(meta["seeds"]) == 2 and meta["seeds"][0][1] > 0
    resumed = fit(3, tmp_path / "killed")  # the rerun: restores epoch 2, trains epoch 3
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)
    # without the generator state the third epoch draws the first epoch's masks again
    fit(2, tmp_path / "old")  # a backup of epoch 2 without seeds, as older kerastl wrote
    (tmp_path / "old" / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    stale = fit(3, tmp_path / "old")
    assert any(not np.array_equal(a, b) for a, b in zip(whole, stale))


def test_backup_carries_lora_factors_so_a_resumed_lora_run_ends_with_the_same_weights(
    tmp_path, caplog
):
    """Keras' weights file merges A @ B into a LoRA kernel and loads both factors as zero,
    so a resumed LoRA run trained its adapters no more (each factor's gradient is the
    other). The backup keeps the factors beside the weights; without them the adapters
    are reseeded, with a warning, and train on."""
    import keras

    from kerastl.train._callbacks import SafeBackupAndRestore

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")

    def fit(epochs: int, backup) -> tuple[list[np.ndarray], keras.Model]:
        keras.utils.clear_session()
        keras.utils.set_random_seed(0)
        inp = keras.Input((6,))
        query = keras.layers.Dense(8, name="query")
        model = keras.Model(inp, keras.layers.Dense(2)(query(inp)))
        query.enable_lora(2)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        cb = SafeBackupAndRestore(str(backup))
        model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])
        return [w.numpy() for w in model.weights], model

    whole, _ = fit(3, tmp_path / "whole")
    fit(2, tmp_path / "killed")
    assert (tmp_path / "killed" / "latest.weights.h5.lora.npz").is_file()
    resumed, _ = fit(3, tmp_path / "killed")
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)
    fit(2, tmp_path / "old")
    (tmp_path / "old" / "latest.weights.h5.lora.npz").unlink()  # a backup without them
    caplog.set_level(logging.WARNING, logger="kerastl")
    _, model = fit(3, tmp_path / "old")
    assert "no LoRA factors saved beside these weights" in caplog.text
    query = model.get_layer("query")
    assert np.any(query.lora_kernel_a.numpy()) and np.any(query.lora_kernel_b.numpy())


def test_backup_carries_early_stopping_so_a_resumed_run_stops_where_an_uninterrupted_one_does(
    tmp_path,
):
    """EarlyStopping restarts its count in every fit(); the backup carries wait and best."""
    import keras

    from kerastl.train._callbacks import SafeBackupAndRestore

    val = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]  # best at epoch 1, then worse

    class Scripted(keras.callbacks.Callback):  # the validation loss each epoch reports
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = val[epoch]

    class Kill(keras.callbacks.Callback):  # after the backup of epoch `at` is written
        def __init__(self, at):
            super().__init__()
            self.at = at

        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.at:
                raise KeyboardInterrupt

    def fit(backup, kill_at=None, stateful=True) -> int:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        stop = keras.callbacks.EarlyStopping(patience=2)
        cbs = [Scripted(), stop]
        cbs.append(SafeBackupAndRestore(str(backup), stateful=[stop] if stateful else ()))
        cbs += [Kill(kill_at)] if kill_at is not None else []
        h = model.fit(np.ones((4, 2)), np.ones(4), epochs=len(val), verbose=0, callbacks=cbs)
        return h.epoch[-1]

    assert fit(tmp_path / "whole") == 3  # 0.95, 0.96: two epochs without improvement
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "killed", kill_at=2)
    meta = json.loads((tmp_path / "killed" / "training_metadata.json").read_text())
    assert meta["callbacks"] == [{"wait": 1, "best": 0.9, "best_epoch": 1, "stopped_epoch": 0}]
    assert fit(tmp_path / "killed") == 3  # resumed at epoch 3, stops there
    # without the state the resumed count starts again: 0.96 is a new best
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "old", kill_at=2, stateful=False)
    assert fit(tmp_path / "old", stateful=False) == 5


def test_csv_log_drops_rows_a_resumed_epoch_will_rewrite(tmp_path):
    """A killed run may have logged epoch k (and half of k+1) before its backup of epoch k."""
    from kerastl.train._callbacks import ResumableCSVLogger

    path = tmp_path / "history.csv"
    path.write_text(
        "epoch,loss,val_loss\n0,1.5,1.6\n1,1.2,1.3\n2,1.0,1.1\n3,0."
    )  # rows 2 and a torn row 3
    logger = ResumableCSVLogger(str(path))
    logger.on_train_begin()
    logger.on_epoch_begin(2)  # the backup holds epochs 0-1: fit() resumes at epoch 2
    logger.on_epoch_end(2, {"loss": 0.9, "val_loss": 1.0})
    logger.on_epoch_begin(3)
    logger.on_epoch_end(3, {"loss": 0.8, "val_loss": 0.9})
    logger.on_train_end()
    rows = ["0,1.5,1.6", "1,1.2,1.3", "2,0.9,1.0", "3,0.8,0.9"]
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", *rows]
    # The csv module ends rows with "\r\n": rows kept from the killed run keep them too, so
    # a resumed log has one line ending throughout.
    path.write_bytes(b"epoch,loss,val_loss\r\n0,1.5,1.6\r\n1,1.2,1.3\r\n")
    logger = ResumableCSVLogger(str(path))
    logger.on_train_begin()
    logger.on_epoch_begin(1)
    logger.on_epoch_end(1, {"loss": 1.1, "val_loss": 1.2})
    logger.on_train_end()
    assert path.read_bytes() == b"epoch,loss,val_loss\r\n0,1.5,1.6\r\n1,1.1,1.2\r\n"

    fresh = ResumableCSVLogger(str(tmp_path / "new.csv"))  # first run: header, then rows
    fresh.on_train_begin()
    fresh.on_epoch_begin(0)
    fresh.on_epoch_end(0, {"loss": 2.0, "val_loss": 2.1})
    fresh.on_train_end()
    assert (tmp_path / "new.csv").read_text().splitlines() == ["epoch,loss,val_loss", "0,2.0,2.1"]


@pytest.mark.heavy
def test_jit_compile_trains_like_the_plain_graph(tmp_path):
    """train.jit_compile=True: XLA-compiled steps, the same numbers as without XLA.

    VGG-16: few, large layers, so XLA compiles its training step in seconds (MobileNetV3's
    hundreds of small ops took a minute); the flag's path through the run is the same."""
    from kerastl.train import train

    x, y = _images(4, 2)
    ex = (kdata.from_numpy(x, y), None)
    runs = {}
    for jit in (False, True):
        cfg = _cfg(
            tmp_path,
            f"jit{int(jit)}",
            model={"backbone": "vgg16", "input_size": 32, "freeze": "none", "dropout": 0.0},
            train={"epochs": 1, "jit_compile": jit, "cache_features": "off"},
            finetune={"epochs": 0},
        )
        runs[jit] = train(cfg, examples=ex, evaluate=False)
    assert runs[True].model.jit_compile is True and runs[False].model.jit_compile is False
    loss_plain, loss_xla = runs[False].history["loss"][0], runs[True].history["loss"][0]
    assert np.isfinite(loss_xla) and loss_xla == pytest.approx(loss_plain, rel=1e-3)
    for a, b in zip(runs[False].model.weights, runs[True].model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=a.path)


def test_deferred_best_checkpoint_writes_the_best_epoch_once(tmp_path):
    """On cached features an epoch is cheaper than a save: keep the best, write it at the end."""
    import keras

    from kerastl.train._callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    path = tmp_path / "best.keras"
    best = BestCheckpoint(str(path), monitor="loss", mode="min", verbose=0)
    best.defer = True
    values = iter([3.0, 1.0, 2.0])
    saved_during_fit = []

    class FakeLoss(keras.callbacks.Callback):  # runs before BestCheckpoint in the list
        def on_epoch_end(self, epoch, logs=None):
            logs["loss"] = next(values)
            self.model.layers[0].kernel.assign(np.full((2, 1), float(epoch), "float32"))

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved_during_fit.append(path.exists())

    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[FakeLoss(), best, Watch()])
    assert saved_during_fit == [False, False, False] and path.is_file()
    kernel = keras.saving.load_model(path).layers[0].kernel.numpy()
    np.testing.assert_array_equal(kernel, np.full((2, 1), 1.0))  # epoch 1 had the best loss
    assert model.layers[0].kernel.numpy()[0, 0] == 2.0  # the live model is left as it was


@pytest.mark.parametrize("keep, epoch", [("best", 1), ("last", 2)])
def test_train_keep_chooses_the_best_or_the_last_epoch(tmp_path, keep, epoch):
    """train.keep: last keeps the final epoch although an earlier one scored better, so
    the validation data chose nothing (the demo scores its held-out images this way)."""
    import keras

    from kerastl.train._callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    path, record = tmp_path / "model.keras", tmp_path / "best.json"
    best = BestCheckpoint(str(path), monitor="val_accuracy", verbose=0, keep=keep, record=record)
    best.defer = keep == "last"  # as phase_callbacks sets it: one write, when fit() ends
    values = iter([0.5, 0.9, 0.7])

    class FakeAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_accuracy"] = next(values)
            self.model.layers[0].kernel.assign(np.full((2, 1), float(epoch), "float32"))

    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[FakeAccuracy(), best])
    assert best.restore()
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.full((2, 1), float(epoch)))
    kernel = keras.saving.load_model(path).layers[0].kernel.numpy()
    np.testing.assert_array_equal(kernel, np.full((2, 1), float(epoch)))
    # a resumed run: keep best compares with the saved best; keep last trusts the live
    # weights BackupAndRestore brought back, never an older model.keras
    again = BestCheckpoint(str(path), monitor="val_accuracy", verbose=0, keep=keep)
    assert again.resume(record, path) == (keep == "best")


def test_train_keep_names_its_choices():
    from kerastl.train._config import validate_config

    with pytest.raises(ConfigError, match=r"train\.keep.*'best'.*'last'"):
        validate_config({"model": {"backbone": "efficientnet_lite0"}, "data": {"path": "d"},
                         "train": {"keep": "final"}})  # fmt: skip


def test_best_checkpoint_refuses_a_monitor_the_run_does_not_log(tmp_path):
    """'val_top5' passes the config (a classification metric) but a run of 5 classes or
    fewer logs no top5: the checkpoint saw no value each epoch and kept the last weights."""
    from kerastl.train._callbacks import BestCheckpoint

    best = BestCheckpoint(str(tmp_path / "m.keras"), monitor="val_top5", verbose=0)
    logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4}
    with pytest.raises(ConfigError) as info:
        best.on_epoch_end(0, logs)
    text = str(info.value)
    assert text.startswith("train.monitor: 'val_top5'")
    assert "accuracy, loss, val_accuracy, val_loss" in text


def test_best_checkpoint_resumes_from_the_model_an_earlier_process_saved(tmp_path):
    """A resumed process compares with the recorded best and, seeing nothing better,
    restores the weights of the saved best model, not its own last epoch's."""
    import keras

    from kerastl.train._callbacks import BestCheckpoint

    def fit(best, losses):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        best.target = model
        values = iter(losses)

        class FakeLoss(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs["loss"] = next(values)
                self.model.layers[0].kernel.assign(np.full((2, 1), logs["loss"], "float32"))

        x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
        model.fit(x, y, epochs=len(losses), verbose=0, callbacks=[FakeLoss(), best])
        return model

    path, record = tmp_path / "model.keras", tmp_path / "state" / "best.json"
    first = BestCheckpoint(str(path), monitor="loss", verbose=0, record=record)
    fit(first, [3.0, 1.0, 2.0])  # "killed" after its third epoch: model.keras holds epoch 1
    assert json.loads(record.read_text()) == {"best": 1.0, "epoch": 1}

    again = BestCheckpoint(str(path), monitor="loss", verbose=0, record=record)
    assert not again.resume(record, tmp_path / "missing.keras")  # no model: nothing resumed
    assert again.resume(record, path) and again.best == 1.0 and again.saved
    model = fit(again, [1.5])  # worse than the recorded best: model.keras is not rewritten
    assert again.best_weights is None
    assert again.restore()
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.full((2, 1), 1.0))
    fresh = BestCheckpoint(str(path), monitor="loss", verbose=0, record=record)
    assert not fresh.saved and not fresh.restore()  # a fresh run trusts no earlier file


def test_model_card_is_a_hugging_face_card_with_metrics_datasets_and_base_model():
    from huggingface_hub import ModelCard

    from kerastl.train._config import validate_config
    from kerastl.train.card import model_card

    cfg = validate_config(
        {"name": "flowers", "model": {"backbone": "mobilenet_v3_small"}, "data": {"path": "d/fl"}}
    )
    metrics = M.classification_metrics(np.array([0, 1, 1]), np.eye(2)[[0, 1, 0]], ["a", "b"])
    report = {"modality": "image", "class_names": ["a", "b"], "input_shape": [224, 224, 3]}
    exports = {"artifacts": [{"path": "m.tflite", "passed": True, "size_bytes": 123}]}
    text = model_card(cfg, metrics, report, {"total_seconds": 1.0}, exports, "runs/flowers")
    card = ModelCard(text)  # parses and validates the YAML front matter
    assert card.data.base_model == "mobilenet_v3_small"
    assert card.data.datasets == ["fl"] and card.data.library_name == "keras"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == pytest.approx(2 / 3) and "macro_f1" in results
    assert card.data.pipeline_tag == "image-classification"
    assert "| `m.tflite` | passed | 123 |" in card.text and "{'artifacts'" not in card.text
    assert "| accuracy |" in card.text  # the body is unchanged


def test_confusion_and_roc_plots_come_from_sklearn_displays(tmp_path, monkeypatch):
    import sklearn.metrics

    from kerastl.train._plots import plot_confusion, plot_roc

    used = []
    for cls in ("ConfusionMatrixDisplay", "RocCurveDisplay"):
        real = getattr(sklearn.metrics, cls)
        spy = type(
            cls,
            (real,),
            {"plot": lambda self, *a, _r=real, **k: used.append(self) or _r.plot(self, *a, **k)},
        )
        monkeypatch.setattr(sklearn.metrics, cls, spy)
    plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png")
    y = np.array([[1, 0], [0, 0], [1, 0]])  # class 1 never occurs: no curve, no error
    plot_roc(y, np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.7]]), ["x", "y"], tmp_path / "roc.png")
    assert [type(u).__name__ for u in used] == ["ConfusionMatrixDisplay", "RocCurveDisplay"]
    for name in ("cm.png", "roc.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


# -- grouped convolutions as depthwise (ConvNeXt) -------------------------------


def test_a_training_step_through_depthwise_convs_equals_keras_grouped_conv():
    """One SGD step inside ``grouped_convs_as_depthwise`` moves every weight as Keras'
    own (XLA-compiled) grouped convolution does, the grouped kernel included."""
    import keras

    from kerastl.core.convs import grouped_convs_as_depthwise

    def step(patched: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((9, 9, 4))
        x = keras.layers.Conv2D(8, 3, groups=4, padding="same")(inputs)  # 2 filters a group
        x = keras.layers.Conv2D(8, 1)(keras.layers.Activation("gelu")(x))
        outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(True))
        start = model.weights[0].numpy()  # the grouped kernel
        rng = np.random.default_rng(1)
        x, y = rng.normal(size=(6, 9, 9, 4)).astype("float32"), np.arange(6) % 3
        if patched:
            with grouped_convs_as_depthwise():
                model.train_on_batch(x, y)
        else:
            model.train_on_batch(x, y)
        return start, [w.numpy() for w in model.weights]

    from keras.src.backend.tensorflow import nn as backend_nn

    start, keras_step = step(False)
    depthwise = backend_nn.depthwise_conv
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return depthwise(*args, **kwargs)

    backend_nn.depthwise_conv = counted
    try:
        _, depthwise_step = step(True)
    finally:
        backend_nn.depthwise_conv = depthwise
    assert calls  # the grouped conv went the depthwise way
    assert np.abs(keras_step[0] - start).max() > 1e-3  # the step moved the grouped kernel
    assert max(np.abs(a - b).max() for a, b in zip(depthwise_step, keras_step)) < 1e-5


@pytest.mark.heavy
def test_convnext_trains_through_depthwise_convs_and_keras_is_restored(tmp_path, monkeypatch):
    import keras
    from keras.src.backend.tensorflow import nn as backend_nn

    from kerastl.train import train

    seen, depthwise_calls = [], []
    depthwise = backend_nn.depthwise_conv

    def counted(*args, **kwargs):
        depthwise_calls.append(1)
        return depthwise(*args, **kwargs)

    monkeypatch.setattr(backend_nn, "depthwise_conv", counted)

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(getattr(backend_nn.conv, "_kerastl_depthwise", False))

    keras_conv = backend_nn.conv
    x, y = _images(4, 2)
    cfg = _cfg(tmp_path, "cnx", train={"epochs": 1}, finetune={"epochs": 1})
    cfg["model"]["backbone"] = "convnext_tiny"
    r = train(cfg, examples=(kdata.from_numpy(x, y), None), callbacks=[Spy()], evaluate=False)
    assert seen and all(seen)
    assert len(depthwise_calls) >= 18  # ConvNeXt-T's 18 blocks, traced at least once
    assert backend_nn.conv is keras_conv
    assert np.isfinite(r.history["loss"]).all()


# -- new-user findings -----------------------------------------------------------


def test_train_applies_overrides_to_a_copy_of_the_callers_config(tmp_path):
    import copy

    from kerastl.errors import ConfigError
    from kerastl.train import train

    base = _cfg(tmp_path, "mut")
    before = copy.deepcopy(base)
    with pytest.raises(ConfigError, match="nothing to train"):  # rejected after the overrides
        train(base, {"train.epochs": 0, "finetune.epochs": 0, "data.val_split": 0.5})
    assert base == before


def test_random_init_run_trains_batchnorm_through_the_config(tmp_path):
    """weights: null, train_batchnorm unset: the backbone's BatchNorm trains (not collapsed)."""
    import keras

    from kerastl.train import train

    x, y = _images(4, 3)
    cfg = _cfg(tmp_path, "scratch", model={"freeze": "none"}, train={"epochs": 1})
    result = train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False)
    assert result.config["model"]["train_batchnorm"] is None
    assert result.model.kerastl_config["train_batchnorm"] is True
    bns = [
        layer
        for layer in result.model.get_layer("backbone")._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bns and all(layer.trainable for layer in bns)
    # In inference mode (validation, export) the features differ between images: the
    # moving statistics are recomputed each epoch (train.precise_bn: auto). Frozen initial
    # BatchNorm, or one epoch of moving averages alone, gives the same features (spread
    # ~1e-10) for every image.
    features = keras.Model(result.model.inputs, result.model.get_layer("logits").input)
    spread = features.predict(x.astype("float32"), verbose=0).std(axis=0).mean()
    assert spread > 1e-2


def test_validation_split_without_a_class_is_warned(caplog):
    from kerastl.train.context import warn_missing_classes

    x, y = _images(6, 3)
    ex = kdata.from_numpy(x, y, class_names=["a", "b", "rare"])
    train_ex, val_ex = ex.subset(np.arange(14)), ex.subset(np.arange(14, 16))
    with caplog.at_level(logging.WARNING, logger="kerastl"):
        assert warn_missing_classes(train_ex, val_ex) == ["a", "b"]
    assert "no validation example of class(es) 'a' (6 training), 'b' (6 training)" in caplog.text
    caplog.clear()
    assert warn_missing_classes(ex, ex) == [] and not caplog.text


def _kill_after_first_epoch():
    """A callback that stops the process' training once epoch 1 is backed up (a kill)."""
    import keras

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("killed")

    return Kill()


def test_unfinished_run_is_evaluated_with_a_note_and_resumes_with_a_line(tmp_path, caplog):
    from kerastl.train import evaluate_run, train

    _folder(tmp_path / "imgs", n=4)
    cfg = _cfg(
        tmp_path,
        "killed",
        train={"epochs": 3, "cache_features": "off"},
        finetune={"epochs": 2},
        data={"val_split": 0.25, "verify": True},
    )
    cfg["data"]["path"] = str(tmp_path / "imgs")
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, callbacks=[_kill_after_first_epoch()])
    run = tmp_path / "runs" / "killed"
    with caplog.at_level(logging.INFO, logger="kerastl"):
        metrics = evaluate_run(run)
    note = "run not finished: phase 1, epoch 1 of 5 backed up; scoring its best checkpoint"
    assert note in caplog.text
    assert metrics["unfinished_run"]["phase"] == 1
    assert json.loads((run / "metrics.json").read_text())["unfinished_run"]["epochs_planned"] == 5
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kerastl"):
        result = train(cfg, evaluate=True)
    assert "resuming phase 1 from epoch 2 (1 of 3 done)" in caplog.text
    assert "unfinished_run" not in result.metrics


def _early_stopping_cfg(tmp_path, name: str, weights: str) -> dict:
    """Phase 1 (6 epochs) and phase 2 (3) at rate 0, patience 1: the validation loss never
    improves after its first epoch, so early stopping ends each phase after 2 epochs."""
    _folder(tmp_path / "imgs", n=4)
    cfg = _cfg(
        tmp_path,
        name,
        weights,
        train={"epochs": 6, "learning_rate": 0.0, "early_stopping": 1},
        finetune={"epochs": 3, "learning_rate": 0.0, "freeze": "backbone"},
        data={"val_split": 0.25},
    )
    cfg["model"]["dropout"] = 0.0
    cfg["data"]["path"] = str(tmp_path / "imgs")
    return cfg


def test_unfinished_run_counts_the_epochs_early_stopping_left(tmp_path, caplog, weights):
    """Phase 1 stopped early after 2 of 6 epochs, the run was killed in phase 2's first
    epoch: `kerastl evaluate` said "epoch 3 of 9" (6 + 3 configured); 2 + 3 are left."""
    import keras

    from kerastl.train import evaluate_run, train

    class KillInPhase2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:  # the first fine-tuning epoch, once it is backed up
                raise RuntimeError("killed")

    cfg = _early_stopping_cfg(tmp_path, "es_killed", weights)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, callbacks=[KillInPhase2()])
    with caplog.at_level(logging.INFO, logger="kerastl"):
        metrics = evaluate_run(tmp_path / "runs" / "es_killed")
    note = metrics["unfinished_run"]
    assert (note["phase"], note["epochs_backed_up"], note["epochs_planned"]) == (2, 3, 5)
    assert not note["training_finished"] and note["stopped_early"]
    assert "phase 2, epoch 3 of 5 backed up (early stopping ended phase 1 after 2 of 6" in (
        caplog.text
    )


def test_rerun_of_a_run_without_phase_1_killed_after_phase_2_takes_its_result(
    tmp_path, caplog, monkeypatch, weights
):
    """train.epochs: 0 writes no phase-1 state; phase 2's end must still be seen."""
    from kerastl.train import run, train

    monkeypatch.setattr(run, "_report", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    cfg = _early_stopping_cfg(tmp_path, "no_phase1", weights)
    cfg["train"]["epochs"] = 0
    with pytest.raises(RuntimeError):
        train(cfg)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="kerastl"):
        result = train(cfg)
    assert "resuming: phase 2 already done (2 epochs in all)" in caplog.text
    assert len(result.history["loss"]) == 2


def test_run_killed_after_early_stopping_ended_its_training(tmp_path, caplog, monkeypatch, weights):
    """Early stopping ended both phases (2 + 2 epochs of 6 + 3); the run was killed while
    it was scored. `kerastl evaluate` said "phase 2, epoch 4 of 9": its training was over."""
    from kerastl.train import evaluate_run, run, train

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(run, "_report", killed)
    cfg = _early_stopping_cfg(tmp_path, "es_done", weights)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="kerastl"):
        metrics = evaluate_run(tmp_path / "runs" / "es_done")
    note = metrics["unfinished_run"]
    assert note["training_finished"] and note["stopped_early"]
    assert (note["phase"], note["epochs_backed_up"], note["epochs_planned"]) == (2, 4, 4)
    assert "early stopping ended its training after 4 of 9 epochs" in caplog.text
    # the rerun takes that result: no epoch the uninterrupted run did not train
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kerastl"):
        result = train(cfg)
    assert "resuming: phase 2 already done (4 epochs in all)" in caplog.text
    assert len(result.history["loss"]) == 4 and result.metrics


def test_a_regression_run_starts_at_the_targets_mean(tmp_path, weights):
    """Targets far from zero: from a zero bias the head spent its first epochs climbing to
    their level. The head's bias starts at the training mean, so one epoch already
    predicts close to the mean predictor."""
    from kerastl.train import train

    x, cls = _images(6, 2, seed=4)
    y = (100.0 + 4.0 * cls).astype("float32")[:, None]  # 100 or 104
    tr = kdata.from_numpy(x, y, task="regression")
    cfg = _cfg(tmp_path, "reg", weights, model={"task": "regression"}, train={"epochs": 1})
    result = train(cfg, examples=(tr, tr))
    bias = result.model.get_layer("predictions").bias.numpy()
    assert abs(float(bias[0]) - 102.0) < 1.0, bias  # 1 epoch at lr 1e-3 moves it little
    mean_predictor_mae = float(np.mean(np.abs(y - y.mean())))  # 2.0
    assert result.metrics["mae"] < 3 * mean_predictor_mae, result.metrics


def test_validation_examples_that_are_also_training_examples_are_counted(tmp_path, caplog, weights):
    """Duplicated rows split onto both sides made val_accuracy partly unearned, silently."""
    from kerastl.train import train

    caplog.set_level(logging.WARNING, logger="kerastl")
    x, y = _images(4, 2, seed=6)
    tr = kdata.from_numpy(x, y)
    va = kdata.from_numpy(np.concatenate([x[:3], x[-1:] + 1]), np.concatenate([y[:3], y[-1:]]))
    train(_cfg(tmp_path, "dup", weights, train={"epochs": 1}), examples=(tr, va), evaluate=False)
    assert "3 of the 4 validation examples are also training examples" in caplog.text
    caplog.clear()
    train(
        _cfg(tmp_path, "nodup", weights, train={"epochs": 1}),
        examples=(tr, kdata.from_numpy(x[[0, -1]] + 1, y[[0, -1]])),
        evaluate=False,
    )
    assert "also training examples" not in caplog.text


def test_model_card_gives_phase_twos_learning_rate_when_it_is_derived():
    """The card said 'lr None' for a fine-tune phase whose rate is phase 1's / 10."""
    from kerastl.train.card import _training_lines

    cfg = {
        "model": {"freeze": "backbone"},
        "train": {"epochs": 2, "optimizer": "adam", "learning_rate": 1e-3, "schedule": "cosine",
                  "batch_size": 8,
                  "warmup_epochs": 0},
        "finetune": {"epochs": 1, "freeze": "none", "learning_rate": None, "gradual_every": 0,
                     "layer_decay": None},
    }  # fmt: skip
    text = "\n".join(_training_lines(cfg, {}))
    assert "lr 0.0001 (phase 1's / 10)" in text and "lr None" not in text, text
    cfg["finetune"]["learning_rate"] = 3e-5
    assert "lr 3e-05" in "\n".join(_training_lines(cfg, {}))


def _traced_steps(model) -> list:
    """Count the traces of ``model``'s training step (its Python body runs once per trace)."""
    traces, step = [], model.train_step

    def counted(data):
        traces.append(1)
        return step(data)

    model.train_step = counted
    return traces


@pytest.mark.parametrize("kind", ["image", "text"])
def test_the_first_fit_traces_the_training_step_once(kind, monkeypatch):
    """Keras builds the optimizer and metrics inside the first traced step when no
    tf.distribute strategy is set; that trace creates variables, so the step was traced a
    second time (half of a first epoch's time on a 500-layer backbone). The control: Keras'
    own deferred build put back traces it twice. Same losses either way."""
    import keras

    import kerastl
    from kerastl.core.model import KerastlModel

    if kind == "image":
        x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
        kw = dict(input_shape=(32, 32, 3))
        name = "mobilenet_v3_small"
    else:
        pytest.importorskip("keras_hub")
        x = np.array(["a good film", "a bad film", "fine", "awful"] * 2, dtype=object)
        from test_keras_hub import tiny_kwargs

        kw, name = tiny_kwargs("bert_tiny_en_uncased"), "bert_tiny_en_uncased"
    y = np.arange(8) % 2
    losses = {}
    for way in ("kerastl", "keras"):
        if way == "keras":
            monkeypatch.setattr(
                KerastlModel, "_maybe_symbolic_build", keras.Model._maybe_symbolic_build
            )
        keras.utils.set_random_seed(0)
        model = kerastl.build(name, num_classes=2, weights=None, freeze="none", **kw)
        traces = _traced_steps(model)
        losses[way] = model.fit(x, y, batch_size=4, epochs=2, verbose=0).history["loss"]
        assert len(traces) == (1 if way == "kerastl" else 2), (way, len(traces))
        model.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(losses["kerastl"], losses["keras"], rtol=1e-6)
