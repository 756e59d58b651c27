"""Quantized files are gated, not just reported: top-1 agreement with the float model, the
accuracy drop on labelled data, and a spread floor that refuses a constant-output file for
every classifier head (softmax, one sigmoid, sigmoid per label) and for embeddings."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kerastl.export.validate import TOLERANCES, spread, validate


class _Fixed:
    """An artifact whose main output is ``fn(x)``."""

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def run(self, x):
        return {self.name: self.fn(x).astype(np.float32)}

    def run_batched(self, x, bs):
        return {
            self.name: np.concatenate(
                [self.run(x[i : i + bs])[self.name] for i in range(0, len(x), bs)]
            )
        }


def _x(n=40, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 4)).astype(np.float32)


def _heads(x):
    """Keras-like outputs of three heads; 95% of examples fall in one class / label state."""
    score = x[:, 0]
    binary = np.where(score > 0.05, 0.55 + 0.4 * score, 0.45 - 0.4 * score)[:, None]
    logits = np.stack([3 * score + 2, score, 1 - score], -1)
    multiclass = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    multilabel = np.stack([0.55 + 0.4 * x[:, 1], 0.45 - 0.4 * x[:, 2] ** 4], -1)
    return {"binary": binary, "classification": multiclass, "multilabel": multilabel}


def _flipping(x, k):
    """Multi-class outputs reversed (another top-1) on the k examples with the smallest x[:, 3]."""
    threshold = np.sort(x[:, 3])[k - 1]

    def fn(v):
        out = _heads(v)["classification"]
        flip = v[:, 3] <= threshold
        out[flip] = out[flip, ::-1]
        return out

    return fn


@pytest.mark.parametrize("task", ["binary", "classification", "multilabel"])
def test_constant_output_classifier_is_refused(task):
    x = _x()
    ref = _heads(x)[task].astype(np.float32)
    constant = np.broadcast_to(ref.mean(0), ref.shape).copy()
    art = _Fixed(lambda v: np.broadcast_to(constant[0], (len(v), ref.shape[1])), "probabilities")
    res = validate(art, {"probabilities": ref}, x, "tflite/int8", task)
    # The old gates could not see it: high agreement (one dominant class) and cosine near 1.
    assert res["agreement"] >= 0.9 and res["cosine"] > 0.9, res
    assert not res["passed"]
    assert any("outputs collapsed" in f for f in res["failures"]), res["failures"]
    assert res["spread"]["artifact"] == 0.0 and res["spread"]["keras"] > 0.02


@pytest.mark.parametrize("task", ["binary", "classification", "multilabel"])
def test_a_faithful_quantized_classifier_passes(task):
    x = _x()
    ref = _heads(x)[task].astype(np.float32)
    art = _Fixed(lambda v: np.round(_heads(v)[task] * 255) / 255, "probabilities")
    res = validate(art, {"probabilities": ref}, x, "tflite/int8", task)
    assert res["passed"], res["failures"]
    assert res["agreement"] == 1.0


def test_agreement_gate_is_on_by_default_and_overridable():
    x = _x()
    ref = _heads(x)["classification"].astype(np.float32)

    shuffled = _flipping(x, 6)  # wrong class on 6 of the 40 examples

    art = _Fixed(shuffled, "probabilities")
    res = validate(art, {"probabilities": ref}, x, "tflite/dynamic", "classification")
    assert res["agreement"] == pytest.approx(34 / 40)
    assert (
        not res["passed"]
        and "top-1 agreement with Keras 0.850 < 0.9 (one of 40 examples may differ)"
        in res["failures"]
    )
    loose = validate(
        art,
        {"probabilities": ref},
        x,
        "tflite/dynamic",
        "classification",
        overrides={"tflite/dynamic": {"min_agreement": 0.8}},
    )
    assert loose["passed"], loose["failures"]
    assert TOLERANCES["tflite/int8"].min_agreement == 0.9


def test_accuracy_drop_gate_with_labels():
    x = _x(50, seed=1)
    ref = _heads(x)["classification"].astype(np.float32)
    labels = ref.argmax(-1)  # Keras is right on all 50

    two_flipped = _flipping(x, 2)  # agreement 48/50 = 0.96 passes; accuracy drops by 0.04
    four_flipped = _flipping(x, 4)  # agreement 0.92 still passes; accuracy drops by 0.08 > 0.05

    ok = validate(
        _Fixed(two_flipped, "probabilities"),
        {"probabilities": ref},
        x,
        "tflite/int8",
        "classification",
        labels,
    )
    assert ok["passed"], ok["failures"]
    assert ok["metric"]["delta"] == pytest.approx(-0.04)
    bad = validate(
        _Fixed(four_flipped, "probabilities"),
        {"probabilities": ref},
        x,
        "tflite/int8",
        "classification",
        labels,
    )
    assert bad["agreement"] == pytest.approx(0.92)
    assert not bad["passed"]
    assert bad["failures"] == [
        "accuracy 0.920 vs Keras 1.000: drop 0.080 > max_metric_drop 0.05 "
        "(one of 50 examples may differ)"
    ]


def test_a_small_validation_set_lets_one_example_differ_and_not_two():
    """With 12 labelled examples one flip is a 0.083 accuracy drop and 0.917 agreement: a
    quantized file that changed one near-tie was refused by the 0.05 limit; two flips
    still fail both gates."""
    x = _x(12, seed=2)
    ref = _heads(x)["classification"].astype(np.float32)
    labels = ref.argmax(-1)
    one = validate(
        _Fixed(_flipping(x, 1), "probabilities"),
        {"probabilities": ref},
        x,
        "tflite/int8",
        "classification",
        labels,
    )
    assert one["metric"]["delta"] == pytest.approx(-1 / 12)
    assert one["passed"], one["failures"]
    two = validate(
        _Fixed(_flipping(x, 2), "probabilities"),
        {"probabilities": ref},
        x,
        "tflite/int8",
        "classification",
        labels,
    )
    assert two["failures"] == [
        "top-1 agreement with Keras 0.833 < 0.9 (one of 12 examples may differ)",
        "accuracy 0.833 vs Keras 1.000: drop 0.167 > max_metric_drop 0.05 "
        "(one of 12 examples may differ)",
    ]


def test_accuracy_drop_gate_judges_one_hot_labels_as_their_class_ids():
    """One-hot labels (image_dataset_from_directory(label_mode="categorical")) are scored
    like the same labels as ids: the gate is not skipped."""
    x = _x(50, seed=1)
    ref = _heads(x)["classification"].astype(np.float32)
    ids = ref.argmax(-1)
    art = _Fixed(_flipping(x, 4), "probabilities")
    by_ids = validate(art, {"probabilities": ref}, x, "tflite/int8", "classification", ids)
    one_hot = np.eye(ref.shape[1])[ids]
    got = validate(art, {"probabilities": ref}, x, "tflite/int8", "classification", one_hot)
    assert got["failures"] == by_ids["failures"]
    assert got.get("metric") == by_ids["metric"]
    assert got["failures"] == [
        "accuracy 0.920 vs Keras 1.000: drop 0.080 > max_metric_drop 0.05 "
        "(one of 50 examples may differ)"
    ]


def test_constant_embedding_is_refused_even_when_it_points_the_right_way():
    x = _x()
    ref = np.stack([1 + 0.5 * x[:, 0], 1 + 0.5 * x[:, 1]], -1).astype(np.float32)
    art = _Fixed(lambda v: np.ones((len(v), 2)), "embedding")
    res = validate(art, {"embedding": ref}, x, "tflite/int8", "embedding")
    assert res["cosine"] > 0.9  # the cosine floor alone lets it through
    assert not res["passed"] and "outputs collapsed" in res["failures"][0]


def test_spread_of_a_near_constant_model_is_not_judged():
    x = _x()
    ref = (0.5 + 0.001 * x[:, :1]).astype(np.float32)  # Keras itself barely moves
    art = _Fixed(lambda v: np.full((len(v), 1), 0.5), "probabilities")
    res = validate(art, {"probabilities": ref}, x, "tflite/int8", "binary")
    assert not any("collapsed" in f for f in res["failures"])
    assert spread(ref) < 0.02


def test_a_one_value_regression_output_that_drifts_from_keras_is_refused():
    """Cosine similarity of one-value outputs is 1 whatever their size; the error gate is not."""
    x = _x(60)
    ref = (0.3 + 0.05 * x[:, :1]).astype(np.float32)  # Keras varies by 0.05 across inputs

    def fine(v):  # an int8 file off by about 0.002 (4% of Keras' range)
        return 0.3 + 0.05 * v[:, :1] + 0.002 * np.sin(100 * v[:, 1:2])

    good = validate(_Fixed(fine, "outputs"), {"outputs": ref}, x, "tflite/int8", None)
    assert good["passed"], good["failures"]
    assert good["error_ratio"] < 0.2
    # miscalibrated: a squeezed, shifted copy that still points the same way and spreads 30%
    drifted = _Fixed(lambda v: 0.55 + 0.3 * 0.05 * v[:, :1], "outputs")
    bad = validate(drifted, {"outputs": ref}, x, "tflite/int8", "regression")
    assert bad["cosine"] == pytest.approx(1.0) and bad["spread"]["artifact"] > 0.1 * 0.05
    assert not bad["passed"] and "outputs drift from Keras'" in bad["failures"][0]
    assert bad["error_ratio"] > 10
    # classifiers are judged by top-1 agreement, not by this gate
    probs = _heads(x)["classification"]
    shifted = _Fixed(lambda v: _heads(v)["classification"] * 0.9 + 0.0333, "probabilities")
    res = validate(shifted, {"probabilities": probs}, x, "tflite/int8", "classification")
    assert "error_ratio" not in res and res["passed"], res["failures"]


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"tflite/float32": {"max_rel_err": "1e-3"}}, "['max_rel_err']: expected a finite number"),
        ({"tflite/float32": {"max_rel_err": -1}}, "got -1"),
        ({"tflite/float32": {"max_rel_err": float("nan")}}, "got nan"),
        ({"tflite/float32": {"max_rel_err": True}}, "got True"),
        ({"tflite/int8": {"min_agreement": 1.5}}, "expected a number in [0, 1] or None"),
        ({"tflite/int8": {"min_cosine": -1.5}}, "expected a number in [-1, 1] or None"),
        ({"tflite/int8": {"determinism_rel_err": None}}, "a finite number >= 0, got None"),
        ({"tflite/float32": 0.1}, "tolerances['tflite/float32']: expected a dict of fields"),
        ([("tflite/float32", 1)], "tolerances: expected a dict {'format/precision'"),
    ],
)
def test_tolerance_values_are_checked_before_any_work(overrides, words):
    from kerastl.errors import ConfigError
    from kerastl.export.validate import check_overrides

    with pytest.raises(ConfigError) as err:
        check_overrides(overrides)
    assert words in str(err.value)


def test_valid_tolerance_overrides_pass_the_check():
    from kerastl.export.validate import check_overrides

    check_overrides(
        {"tflite/int8": {"min_agreement": np.float32(0.8), "max_error_ratio": np.int64(1)}}
    )

    check_overrides({"tflite/int8": {"min_agreement": 0.8, "max_error_ratio": None},
                     "onnx/float32": {"max_rel_err": 1e-3}})  # fmt: skip
    check_overrides({"tflite/int8": {"min_cosine": -1.0}})  # cosine runs from -1: "any"
    check_overrides(None)


def test_class_labels_must_be_ids_of_the_model_classes():
    from kerastl.errors import DataError
    from kerastl.export.validate import check_labels

    pred = np.full((6, 4), 0.25)
    check_labels(pred, np.array([0, 1, 2, 3, 0, 1]), "classification", "validation_data")
    check_labels(pred, np.eye(4)[[0, 1, 2, 3, 0, 1]], "classification", "validation_data")
    for labels, words in (
        (np.array([0, 1, 2, 3, 4, 13]), "class ids must be in 0..3 (the model has 4 classes)"),
        (np.array(["cat", "dog", "owl"] * 2), "must be integer class ids 0..3, got str"),
        (np.array([0.5, 1, 2, 3, 0, 1]), "must be integer class ids 0..3, got float64"),
    ):
        with pytest.raises(DataError, match=re.escape(words)):
            check_labels(pred, labels, "classification", "validation_data")
    for labels in (np.array([0, 1, 2]), np.array([[0], [1], [2]])):  # (n,) and (n, 1) alike
        with pytest.raises(DataError, match=re.escape("0..1 (the model has 2 classes)")):
            check_labels(np.full((3, 1), 0.5), labels, "binary", "validation_data")
    with pytest.raises(DataError, match="must be integer class ids 0..1, got float64"):
        check_labels(np.full((3, 1), 0.5), np.array([[0.7], [1.0], [0.0]]), "binary", "labels")


def test_a_folder_whose_sub_folders_give_no_labels_says_why(tmp_path, caplog):
    from PIL import Image

    from kerastl.data.files import load_data_path

    for name in ("cat", "Owl"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0.png")
    with caplog.at_level("WARNING", logger="kerastl"):
        assert len(load_data_path(tmp_path, "validation_data", ["cat", "dog", "owl"])) == 2
    assert "sub-folders ['Owl'] are not among the model's class names" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kerastl"):
        load_data_path(tmp_path, "validation_data", None)
    assert "the model has no class names" in caplog.text
    caplog.clear()
    (tmp_path / "Owl").rename(tmp_path / "owl")
    x, y = load_data_path(tmp_path, "validation_data", ["cat", "dog", "owl"])
    assert y.tolist() == [0, 2] and not caplog.text


def test_labels_given_for_a_model_of_unknown_task_are_reported_unscored(tmp_path, caplog):
    import keras

    import kerastl

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inp))
    model = keras.Model(inp, out)  # plain Keras: no task, an unnamed output
    x = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3)).astype("float32")
    with caplog.at_level("WARNING", logger="kerastl"):
        report = kerastl.export(
            model, tmp_path, formats=["onnx"], validation_data=(x, np.arange(6)), latency_runs=1
        )
    assert any("validation labels not scored" in n for n in report["notes"])
    assert "validation labels not scored" in caplog.text


@pytest.mark.parametrize("arg", ["overwrite", "allow_flex"])
def test_yes_no_arguments_must_be_booleans(tmp_path, arg):
    import kerastl
    from kerastl.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{arg}: expected True or False, got 'no'"):
        kerastl.export(object(), tmp_path, formats=["onnx"], **{arg: "no"})  # before the model


def test_out_dir_inside_a_file_and_an_unreadable_npy_are_refused_by_name(tmp_path):
    import kerastl
    from kerastl.data.files import load_data_path
    from kerastl.errors import ConfigError, DataError

    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ConfigError, match="out_dir: .*afile/sub.* is inside .*afile.*a file"):
        kerastl.export(object(), tmp_path / "afile" / "sub", formats=["onnx"])
    np.save(tmp_path / "obj.npy", np.array(["a.png"], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", x=np.array(["a.png"], dtype=object))
    for name in ("obj.npy", "obj.npz"):
        with pytest.raises(
            DataError, match=f"validation_data: cannot read .*{name}.* without pickle"
        ):
            load_data_path(tmp_path / name, "validation_data", None)
    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 4)), y=np.array([0, 1]))
    x, y = load_data_path(tmp_path / "ok.npz", "validation_data", None)
    assert x.shape == (2, 4) and y.tolist() == [0, 1]


def test_the_error_gate_judges_one_value_outputs_and_regression_not_embeddings():
    x = _x(60)
    emb = np.stack([1 + 0.05 * x[:, 0], 1 - 0.05 * x[:, 1], 2 + 0.0 * x[:, 2]], -1)
    shifted = _Fixed(
        lambda v: np.stack([1.2 + 0.05 * v[:, 0], 1 - 0.05 * v[:, 1], 2.1 + 0 * v[:, 2]], -1),
        "embedding",
    )
    res = validate(shifted, {"embedding": emb.astype(np.float32)}, x, "tflite/int8", "embedding")
    assert "error_ratio" not in res and res["passed"], res["failures"]  # cosine and spread rule
    flat = np.full((60, 1), 0.4, np.float32)  # Keras does not vary: no scale, nothing judged
    res = validate(
        _Fixed(lambda v: np.full((len(v), 1), 0.5), "y"),
        {"y": flat},
        x,
        "tflite/int8",
        "regression",
    )
    assert res["error_ratio"] is None and not any("drift" in f for f in res["failures"])
