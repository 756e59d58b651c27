"""The forgetting report: source-task agreement and per-group weight drift, measured.

Uses the real EfficientNet-Lite0 ImageNet checkpoint (its classifier is the source
task) on scikit-learn digits and scikit-image photos at 64 px.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kerastl
from kerastl import data as kdata
from kerastl import forgetting as F

SIZE = 64


def test_agreement_and_drift_by_hand():
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    same = F.agreement(p, p)
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    q = np.array([[0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    moved = F.agreement(p, q)
    assert moved["top1_agreement"] == 0.5 and moved["mean_kl"] > 0.1
    assert F.relative_drift([np.array([3.0, 4.0])], [np.array([3.0, 4.0])]) == 0.0
    assert F.relative_drift([np.array([3.0, 4.0])], [np.array([0.0, 0.0])]) == 1.0


@pytest.fixture(scope="module")
def images():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images[:48], np.ones((SIZE // 8, SIZE // 8)))[..., None] * (255.0 / 16)
    return np.repeat(x, 3, -1).astype("float32"), d.target[:48] % 3


@pytest.fixture(scope="module")
def reference():
    return kerastl.build(
        "efficientnet_lite0",
        weights="imagenet",
        pretrained_head=True,
        input_shape=(SIZE, SIZE, 3),
        compile=False,
    )


def _tuned(freeze, images, steps_lr=1e-2):
    x, y = images
    keras.utils.set_random_seed(0)
    m = kerastl.build(
        "efficientnet_lite0",
        num_classes=3,
        weights="imagenet",
        input_shape=(SIZE, SIZE, 3),
        freeze=freeze,
        learning_rate=steps_lr,
    )
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return m


def test_untouched_backbone_has_full_agreement_and_zero_drift(reference, images):
    m = _tuned("backbone", images)
    r = F.forgetting_report(m, reference, images[0][:16])
    assert r["top1_agreement"] == 1.0 and r["mean_kl"] < 1e-6
    assert r["weight_drift"]["all"] == 0.0


def test_full_fine_tuning_drifts_and_changes_source_predictions(reference, images):
    m = _tuned("none", images)
    r = F.forgetting_report(m, reference, images[0][:16])
    drift = r["weight_drift"]
    assert drift["all"] > 0 and r["mean_kl"] > 1e-3
    assert r["top1_agreement"] < 1.0
    # the reference is left as it was
    before = reference.predict(images[0][:4], verbose=0)
    np.testing.assert_array_equal(before, reference.predict(images[0][:4], verbose=0))


def test_partial_freezing_drifts_only_the_trained_groups(reference, images):
    m = _tuned("last:1", images)
    r = F.forgetting_report(m, reference, images[0][:8])
    trains = kerastl.freeze.trainable_groups(m)
    drift = r["weight_drift"]
    assert drift["all"] > 0
    assert [g for g, on in trains.items() if on] == [g for g in trains if drift[g] > 0]
    assert sum(trains.values()) == 1


def test_run_evaluation_and_model_card_show_the_report(tmp_path, images, reference, capsys):
    from kerastl.cli import main
    from kerastl.train import train

    x, y = images
    ex = kdata.from_numpy(x.astype("uint8"), y)
    tr, va = ex.split(0.25, seed=0)
    cfg = {
        "output_dir": str(tmp_path / "runs"),
        "name": "fg",
        "seed": 1,
        "model": {"backbone": "efficientnet_lite0", "input_size": SIZE, "weights": "imagenet"},
        "data": {"path": "<memory>"},
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "verbose": 0,
            "tensorboard": False,
            "early_stopping": 0,
        },
    }
    train(cfg, examples=(tr, va))
    run = tmp_path / "runs" / "fg"
    metrics = json.loads((run / "metrics.json").read_text())
    report = metrics["forgetting"]
    assert report["num_examples"] == len(va)
    assert 0.0 <= metrics["source_top1_agreement"] <= 1.0
    # the run trained the head only (backbone frozen, features cached): nothing forgotten
    best = kerastl.load_model(run / "model.keras").get_layer("backbone").get_weights()
    start = reference.get_layer("backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(start, best))
    assert metrics["backbone_weight_drift"] == 0.0 and metrics["source_top1_agreement"] == 1.0
    card = (run / "README.md").read_text()
    assert "## Forgetting (source task)" in card and "relative weight drift" in card
    assert f"{metrics['source_top1_agreement']:.4f}" in card
    np.savez(tmp_path / "va.npz", x=x[:12].astype("uint8"), y=y[:12])
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(tmp_path / "va.npz")]) == 0
    out = capsys.readouterr().out
    assert "source_top1_agreement" in out and "backbone_weight_drift" in out
