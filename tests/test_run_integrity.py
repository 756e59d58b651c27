"""Runs that never mislead: stale state is not resumed, export failures fail the command,
int8 calibration is a stratified sample of the training data, options are combined or refused.
Tiny models (mobilenet_v3_small at 32 px, random init, 1-2 epochs, a few images)."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from test_train import _cfg, _images

from kerastl import data as kdata
from kerastl.errors import ConfigError, ExportError


def _examples(seed=0, n=4, classes=2):
    x, y = _images(n, classes, seed=seed)
    return kdata.from_numpy(x, y)


def _two_phase(tmp_path, name, **sections):
    return _cfg(tmp_path, name, train={"epochs": 1}, finetune={"epochs": 1}, **sections)


def test_a_finished_run_is_kept_and_a_rerun_of_its_name_takes_the_next_folder(
    tmp_path, caplog, weights
):
    """Nothing already written is lost: a rerun of a finished run's name writes name-2 (and
    its files are named after it); exist_ok: true replaces the finished run instead."""
    caplog.set_level(logging.INFO, logger="kerastl")  # messages are logged
    from kerastl.train import train

    cfg = _cfg(tmp_path, "rerun", weights, train={"epochs": 1})
    first = train(cfg, examples=(_examples(0), None), evaluate=False)
    runs = tmp_path / "runs"
    marker = json.loads((runs / "rerun" / "state" / "run.json").read_text())
    assert marker["finished"] is True and "phase1_seconds" in first.timings
    kept = (runs / "rerun" / "model.keras").read_bytes()
    caplog.clear()
    again = train(cfg, examples=(_examples(1), None), evaluate=False)  # other data, same name
    assert "resuming" not in caplog.text and "phase1_seconds" in again.timings
    assert "holds a finished run, which is kept: this run is" in caplog.text
    assert again.run_dir.endswith("rerun-2") and (runs / "rerun-2" / "model.keras").is_file()
    assert (runs / "rerun" / "model.keras").read_bytes() == kept
    assert "name: rerun-2" in (runs / "rerun-2" / "config.yaml").read_text()
    other = runs / "rerun-3" / "state" / "run.json"  # another config's interrupted run
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps({"fingerprint": "another run", "finished": False}))
    third = train(cfg, examples=(_examples(1), None), evaluate=False)
    assert third.run_dir.endswith("rerun-4")  # rerun-3 is not this run's: left as it was
    assert json.loads(other.read_text())["fingerprint"] == "another run"
    caplog.clear()
    replaced = train({**cfg, "exist_ok": True}, examples=(_examples(1), None), evaluate=False)
    assert replaced.run_dir.endswith("rerun") and "phase1_seconds" in replaced.timings
    assert "starting fresh (the earlier run with this name finished)" in caplog.text
    new = json.loads((runs / "rerun" / "state" / "run.json").read_text())
    assert new["fingerprint"] != marker["fingerprint"]


def test_a_replaced_run_keeps_nothing_the_earlier_run_reported(tmp_path, caplog, weights):
    """exist_ok: a run without validation data, replacing one with it, leaves no metrics,
    plots or export of the earlier run beside its model, and its card says no best epoch."""
    caplog.set_level(logging.INFO, logger="kerastl")
    from kerastl.train import train

    cfg = _cfg(tmp_path, "swap", weights, train={"epochs": 1}, export={"formats": ["tflite"]})
    first = train(cfg, examples=(_examples(0, n=8), _examples(1)))
    run = tmp_path / "runs" / "swap"
    assert (run / "metrics.json").is_file() and (run / "plots").is_dir()
    assert "(best checkpoint)" in (run / "README.md").read_text()
    assert first.exports and (run / "export").is_dir()
    caplog.clear()
    cfg_no_export = {**cfg, "exist_ok": True, "export": {"formats": []}}
    train(cfg_no_export, examples=(_examples(2, n=8), None))
    assert not (run / "metrics.json").exists() and not (run / "plots").exists()
    assert not (run / "export").exists()
    assert "removed the earlier run's" in caplog.text
    card = (run / "README.md").read_text()
    assert "(the epoch of the best training loss: no validation data)" in card, card
    assert "metrics.json" not in card


@pytest.mark.heavy
def test_interrupted_run_resumes_only_with_the_same_config_and_data(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="kerastl")  # messages are logged
    from kerastl.train import phases, train

    real_phase2 = phases.phase2

    def killed(run, done1):
        raise RuntimeError("killed in phase 2")

    monkeypatch.setattr(phases, "phase2", killed)
    cfg = _two_phase(tmp_path, "kill")
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, examples=(_examples(0), None), evaluate=False)
    monkeypatch.setattr(phases, "phase2", real_phase2)
    caplog.clear()
    resumed = train(cfg, examples=(_examples(0), None), evaluate=False)  # unchanged: resume
    assert "resuming: phase 1 already done" in caplog.text
    assert "phase1_seconds" not in resumed.timings

    cfg = _two_phase(tmp_path, "kill2")  # "kill" finished: a rerun would go to kill-2
    monkeypatch.setattr(phases, "phase2", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, examples=(_examples(0), None), evaluate=False)
    monkeypatch.setattr(phases, "phase2", real_phase2)
    caplog.clear()
    changed = train(cfg, examples=(_examples(2), None), evaluate=False)  # data changed: fresh
    out = caplog.text
    assert "resuming" not in out and "phase1_seconds" in changed.timings
    assert "the config or data changed since the interrupted run" in out


@pytest.mark.heavy
def test_kfold_rerun_with_another_k_reuses_no_fold_state(tmp_path, caplog, weights):
    caplog.set_level(logging.INFO, logger="kerastl")  # messages are logged
    from kerastl.train import cross_validate

    x, y = _images(3, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = _cfg(tmp_path, "kf", weights, data={"path": str(tmp_path / "d.npz")}, train={"epochs": 1})
    cfg["evaluate"] = {"top_k": 1}
    cross_validate(cfg, folds=2)
    fold0 = tmp_path / "runs" / "kf" / "folds" / "fold0" / "state" / "run.json"
    before = json.loads(fold0.read_text())
    caplog.clear()
    cross_validate(cfg, folds=3)
    out = caplog.text
    assert "resuming" not in out
    assert out.count("starting fresh") == 2  # fold0 and fold1 had state from the 2-fold run
    assert json.loads(fold0.read_text())["fingerprint"] != before["fingerprint"]


# -- export failures and calibration ---------------------------------------------------


def _fake_export_module(monkeypatch, fail: bool, calls: dict):
    def fake_export(model, out_dir, formats, quantize, calibration_data, validation_data, **kw):
        calls.update(calibration=calibration_data, validation=validation_data, **kw)
        if fail:
            raise ExportError("version: 'runs/x/export/saved_model/x/1' already exists")
        return {"validation": {"samples": len(validation_data[0])}, "artifacts": []}

    import kerastl.export.pipeline  # noqa: F401 - the config check reads NAME_RE from it

    fake = types.ModuleType("kerastl.export")
    fake.export = fake_export
    monkeypatch.setitem(sys.modules, "kerastl.export", fake)


def test_failed_export_keeps_the_model_and_fails_the_command(
    tmp_path, monkeypatch, capsys, weights
):
    from kerastl.cli import main
    from kerastl.train import train

    _fake_export_module(monkeypatch, fail=True, calls={})
    cfg = _cfg(tmp_path, "exf", weights, train={"epochs": 1}, export={"formats": ["saved_model"]})
    with pytest.raises(ExportError, match="model is kept at .*model.keras.*already exists") as err:
        train(cfg, examples=_examples(0).split(0.25, seed=0))
    run = tmp_path / "runs" / "exf"
    assert (run / "model.keras").is_file() and (run / "README.md").is_file()
    assert err.value.result.metrics["accuracy"] >= 0.0  # the run result is attached
    assert "failed" in err.value.result.exports

    x, y = _images(4, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    args = ["train", "--backbone", "mobilenet_v3_small", "--data", str(tmp_path / "d.npz")]
    args += ["--input-size", "32", "--epochs", "1", "--export", "saved_model", "--name", "cli"]
    args += ["--output-dir", str(tmp_path / "runs"), "--weights", weights]
    capsys.readouterr()
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "runs" / "cli" / "model.keras").is_file()


def test_export_version_defaults_to_auto_increment():
    from kerastl.train._config import validate_config

    cfg = validate_config({"model": {"backbone": "mobilenet_v3_small"}, "data": {"path": "x"}})
    assert cfg["export"]["version"] is None


def test_calibration_is_a_stratified_sample_of_the_training_data():
    from kerastl.train.export_step import CALIBRATION_SAMPLES, sample_indices

    # Folder data is ordered by class: 700 / 200 / 100. The first 64 were all class 0.
    y = np.repeat([0, 1, 2], [700, 200, 100])
    ex = kdata.Examples("arrays", np.zeros((1000, 1, 1, 3), "uint8"), y, class_names=list("abc"))
    idx = sample_indices(ex, CALIBRATION_SAMPLES, seed=0)
    assert CALIBRATION_SAMPLES == 300 and len(idx) == 300
    assert np.bincount(y[idx]).tolist() == [210, 60, 30]
    assert np.bincount(y[:64], minlength=3).tolist() == [64, 0, 0]  # what the old sample was
    assert sample_indices(ex.subset(np.arange(10)), 300, seed=0).tolist() == list(range(10))


def test_run_export_calibrates_on_training_and_validates_on_labelled_validation(
    tmp_path, monkeypatch, weights
):
    from kerastl.train import train

    calls: dict = {}
    _fake_export_module(monkeypatch, fail=False, calls=calls)
    x, y = _images(8, 3)  # ordered by class
    train_ex, val_ex = kdata.from_numpy(x, y).split(0.25, seed=0)
    cfg = _cfg(
        tmp_path,
        "cal",
        weights,
        train={"epochs": 1},
        export={"formats": ["tflite"], "quantize": ["int8"]},
    )
    r = train(cfg, examples=(train_ex, val_ex))
    assert calls["calibration"].shape[0] == len(train_ex) == 18
    assert r.exports["calibration"]["class_counts"] == {"0": 6, "1": 6, "2": 6}
    xv, yv = calls["validation"]
    assert len(xv) == len(val_ex) == 6 and np.bincount(yv).tolist() == [2, 2, 2]
    # The validation images are the validation examples, not training ones.
    assert np.allclose(np.sort(xv.reshape(6, -1).mean(1)), np.sort(val_ex.x.reshape(6, -1).mean(1)))
    assert calls["max_calibration_samples"] == 300


def test_a_run_without_validation_data_says_its_export_checks_ran_on_training_examples(
    tmp_path, caplog, weights
):
    """With no validation data the exported files are checked on training examples: the
    log said 'validation examples', export_report 'validation_data', and the card listed
    metrics.json and plots/, which were not written."""
    caplog.set_level(logging.INFO, logger="kerastl")
    from kerastl.train import train

    cfg = _cfg(tmp_path, "noval", weights, train={"epochs": 1}, export={"formats": ["onnx"]})
    r = train(cfg, examples=(_examples(0), None))
    run = tmp_path / "runs" / "noval"
    said = "training examples (no validation data)"
    assert f"on 8 {said}" in caplog.text and "validation examples" not in caplog.text
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert (
        report["validation"]["source"].startswith(said)
        and said in r.exports["validation"]["source"]
    )
    assert f"8 samples ({said}" in (run / "export" / "export_report.md").read_text()
    assert not (run / "metrics.json").exists() and not (run / "plots").exists()
    card = (run / "README.md").read_text()
    files = card.split("Files in this folder:")[1].split("\n")[0]
    assert "metrics.json" not in files and "plots/" not in files and "`export/`" in files
    assert "None: the run had no validation data." in card
    assert f"Validated on 8 {said}" in card


# -- fine-tuning options: combined, not dropped ----------------------------------------


def test_gradual_unfreezing_stops_at_finetune_freeze(tmp_path):
    from kerastl.train import train

    cfg = _cfg(
        tmp_path,
        "grad",
        train={"epochs": 0},
        finetune={"epochs": 3, "gradual_every": 1, "freeze": "last:1"},
    )
    r = train(cfg, examples=(_examples(0), None), evaluate=False)
    # Epoch 1 opens the last group; epoch 2 would open a second one without the limit.
    assert r.model.kerastl_config["freeze"] == "last:1"


def test_gradual_unfreezing_refuses_a_policy_it_cannot_combine(tmp_path):
    from kerastl.train._config import validate_config

    for freeze in ("regex:^conv", "backbone"):
        cfg = _cfg(tmp_path, "g", finetune={"epochs": 2, "gradual_every": 1, "freeze": freeze})
        with pytest.raises(ConfigError, match="cannot be combined with finetune.gradual_every"):
            validate_config(cfg)


def test_layer_decay_keeps_schedule_warmup_and_weight_decay(tmp_path):
    from kerastl.train import train

    cfg = _cfg(
        tmp_path,
        "ld",
        train={"epochs": 0, "weight_decay": 0.01, "optimizer": "sgd"},
        finetune={"epochs": 2, "layer_decay": 0.5, "schedule": "cosine", "warmup_epochs": 1},
    )
    r = train(cfg, examples=(_examples(0), None), evaluate=False)
    opt = r.model.optimizer
    assert isinstance(opt, keras.optimizers.MultiOptimizer)
    inner = opt._inner_optimizers
    assert len(inner) == len(opt.kerastl_group_rates)
    for o in inner:
        assert isinstance(o, keras.optimizers.SGD) and o.weight_decay == pytest.approx(0.01)
        sched = o._learning_rate
        assert isinstance(sched, keras.optimizers.schedules.CosineDecay)
        assert sched.warmup_steps == 1 and sched.initial_learning_rate == 0.0
    targets = sorted(o._learning_rate.warmup_target for o in inner)
    assert targets == pytest.approx(sorted(opt.kerastl_group_rates.values()))


def test_l2sp_is_training_time_only_and_says_so(tmp_path):
    import kerastl
    from kerastl.freeze import L2SP, apply_l2sp

    model = kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3))
    assert apply_l2sp(model, alpha=0.1) > 0
    x = _images(2, 2)[0].astype("float32")
    kernel = next(v for v in model.get_layer("backbone").trainable_variables if len(v.shape) >= 2)
    kernel.assign(kernel + 0.1)
    model(x)
    assert float(sum(model.losses)) > 0  # the pull towards the start is in the training loss
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )
    reloaded(x)
    assert reloaded.losses == []  # no penalty after reload: documented, not silent
    assert "not saved" in L2SP.__doc__ and "apply_l2sp" in L2SP.__doc__
    assert apply_l2sp(reloaded, alpha=0.1) > 0  # re-applied: anchored at the loaded weights
    reloaded(x)
    assert float(sum(reloaded.losses)) == pytest.approx(0.0, abs=1e-6)


# -- every key and value checked before TensorFlow or any file --------------------------

_BAD_FLAGS = [
    (["--augment", "heavy"], "data.augment", "'strong'"),
    (["--freeze", "last:x"], "model.freeze", "whole number of groups"),
    (["--freeze", "up_to:stage9"], "model.freeze", "'up_to:stage4'"),
    (["--weights", "imagnet"], "model.weights", "Did you mean 'imagenet'"),
    (["--weights", "missing/w.weights.h5"], "model.weights", "no file or folder"),
    (["--quantize", "int4"], "export.quantize", "'int8'"),
    (["--input-size", "8"], "model.input_size", "below the minimum of mobilenet_v3_small (32"),
    (["--data", "no/such/folder"], "data.path", "no file or folder at"),
    (["--set", "export.version=2"], "export.version", "applies to saved_model only"),
]


def test_bad_values_exit_2_before_tensorflow_and_before_any_file(tmp_path):
    import subprocess
    import textwrap

    (tmp_path / "imgs").mkdir()
    code = textwrap.dedent(f"""
        import sys
        from kerastl.cli import main
        base = ["train", "--backbone", "mobilenet_v3_small", "--data", "{tmp_path / "imgs"}",
                "--output-dir", "{tmp_path / "runs"}", "--export", "tflite"]
        for extra in {[flags for flags, _, _ in _BAD_FLAGS]!r}:
            for pc in ([], ["--print-config"]):
                rc = main(base + extra + pc)
                assert rc == 2, (extra, pc, rc)
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("kerastl train: error:")]
    assert len(lines) == 2 * len(_BAD_FLAGS)
    for (flags, key, choices), line in zip(_BAD_FLAGS, lines[::2]):
        assert key in line and choices in line, (flags, line)
    assert not (tmp_path / "runs").exists()  # no run folder, no config.yaml


def test_config_augment_choices_match_the_pipeline():
    from kerastl.data import _pipeline
    from kerastl.train import _config

    assert set(_config.AUGMENT_PRESETS) == set(_pipeline.AUGMENT_PRESETS)
    assert set(_config.AUGMENT_BLOCKS) == set(_pipeline.AUGMENTATIONS)
    from kerastl.export import FORMATS, QUANTIZE

    assert _config.QUANTIZE == QUANTIZE
    assert set(_config.EXPORT_FORMATS) == set(FORMATS)  # a format the export step writes


def test_config_task_metrics_match_the_heads():
    from kerastl.core.heads import TASKS
    from kerastl.train import _config

    assert set(_config.TASK_METRICS) == set(TASKS)
    for name, task in TASKS.items():
        logged = ["loss"] + [m.name for m in task.metrics(10)]
        assert set(_config.TASK_METRICS[name]) == set(logged), name


@pytest.mark.parametrize("shots", ["0", "-3", "two"])
def test_demo_shots_is_checked_before_training(shots, capsys):
    from kerastl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--shots", shots, "--output-dir", "/nonexistent/demo"])
    assert exit_.value.code == 2
    assert f"--shots: expected a whole number >= 1, got {shots!r}" in capsys.readouterr().err


def test_demo_unknown_backbone_is_checked_before_training(capsys):
    from kerastl.cli import main

    assert main(["demo", "--backbone", "mobilenet_v9", "--output-dir", "/nonexistent/d"]) == 2
    assert "mobilenet_v9" in capsys.readouterr().err


def test_exist_ok_is_not_part_of_what_a_run_trains(tmp_path):
    """A run killed under --exist-ok resumes when rerun without it (and the other way)."""
    from kerastl.train.context import resolve_config, run_fingerprint

    cfg = _cfg(tmp_path, "fp", train={"epochs": 1})
    ex = _examples(0)
    plain = resolve_config(cfg, None, (ex, None))
    forced = resolve_config({**cfg, "exist_ok": True}, None, (ex, None))
    assert run_fingerprint(plain, ex, None) == run_fingerprint(forced, ex, None)
    other = resolve_config({**cfg, "train": {**cfg["train"], "keep": "last"}}, None, (ex, None))
    assert run_fingerprint(other, ex, None) != run_fingerprint(plain, ex, None)


@pytest.mark.parametrize(
    "keep, scored",
    [
        ("best", "scoring its best checkpoint so far"),
        ("last", "scoring the model phase 1 ended with (keep: last"),
    ],
)
def test_an_unfinished_run_says_which_model_it_scores(tmp_path, keep, scored):
    """Killed in phase 2: under keep: last, model.keras is phase 1's model (written once per
    phase), not a best checkpoint so far as the note used to say."""
    from kerastl.train.runfolder import unfinished_progress

    state = tmp_path / "run" / "state"
    state.mkdir(parents=True)
    (state / "run.json").write_text(json.dumps({"fingerprint": "f", "finished": False}))
    (state / "state.json").write_text(json.dumps({"phase1_done": True, "phase1_epochs": 3}))
    (state / "phase1.weights.h5").write_bytes(b"")
    cfg = {"train": {"epochs": 3, "keep": keep}, "finetune": {"epochs": 2}}
    got = unfinished_progress(tmp_path / "run", cfg)
    assert got["phase"] == 2 and not got["training_finished"], got
    assert scored in got["message"], got["message"]


def test_exporting_a_runs_model_again_checks_and_calibrates_on_the_runs_data(
    tmp_path, capsys, weights
):
    """`kerastl export runs/x/model.keras` validated on 16 synthetic inputs (a good float16
    file of a trained head failed there) and refused int8 without --calibration-data,
    though the run's own export used its data: a re-export now takes the run's validation
    sample and training sample as the run's export did; when the data is gone it says so."""
    from kerastl.cli import main
    from kerastl.train import train

    x, y = _images(12, 2, seed=3)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = _cfg(tmp_path, "again", weights, train={"epochs": 1}, export={"formats": ["tflite"]})
    cfg["data"] = {"path": str(tmp_path / "d.npz"), "val_split": 0.25}
    train(cfg)
    model = tmp_path / "runs" / "again" / "model.keras"
    capsys.readouterr()
    assert main(["export", str(model), "--formats", "tflite", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    seen = json.loads((model.parent / "data_report.json").read_text())
    assert f"checked on {seen['num_val']} of the run's validation examples" in out, out
    report = json.loads((model.parent / "export" / "export_report.json").read_text())
    assert report["validation"]["source"].startswith("the run's validation examples")
    assert report["validation"]["samples"] == seen["num_val"] == 6
    assert report["calibration"]["samples"] == seen["num_train"] == 18
    (tmp_path / "d.npz").rename(tmp_path / "moved.npz")
    assert main(["export", str(model), "--formats", "tflite", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--quantize int8 needs --calibration-data: the run's training data" in err, err
    assert main(["export", str(model), "--formats", "tflite"]) == 0
    captured = capsys.readouterr()
    assert "the run's data could not be loaded as it was" in captured.err
    assert "checked on 16 synthetic inputs" in captured.out


def test_a_worker_that_fails_deletes_its_temporary_folder_and_one_killed_is_emptied_next_time(
    tmp_path, monkeypatch, weights
):
    """A non-chief worker writes into a temporary folder that only keeps the collectives in
    step. A worker that raised left it behind (one per failed run, never deleted); one
    killed leaves it until the same worker of the same run starts again."""
    import tempfile

    from kerastl.train import train
    from kerastl.train._strategy import write_dir

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    )
    cfg = _cfg(tmp_path, "worker", weights, train={"epochs": 2, "strategy": "one_device"})
    killed = Path(write_dir(str(tmp_path / "runs" / "worker")))  # an earlier, killed start
    (killed / "model.keras").write_text("left by a killed worker")
    seen = []

    class Fail(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([p.name for p in scratch.glob("kerastl_*")])
            seen.append([p.read_bytes() for p in killed.rglob("*") if p.is_file()])
            raise RuntimeError("worker failed")

    with pytest.raises(RuntimeError, match="worker failed"):
        train(cfg, examples=(_examples(0), None), callbacks=[Fail()], evaluate=False)
    assert seen[0] == [killed.name]  # the same folder...
    assert b"left by a killed worker" not in seen[1]  # ...emptied
    assert not list(scratch.glob("kerastl_*"))  # and deleted when the worker failed
