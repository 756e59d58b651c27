"""Faults survived with nothing lost: SIGKILL, Ctrl-C, a full disk, a diverging loss.

The kill tests run the real ``kerastl`` command in a subprocess and kill it at
seeded random moments. The default run does a fast subset (2 kills each); the
full 10-kill campaigns run with ``-m slow``. Each campaign appends its figures to
``bench/faults.jsonl`` when ``KERASTL_FAULT_LOG`` is set (the note quotes them).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import calibrate_backbone
from PIL import Image

import kerastl

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
KERASTL = [sys.executable, "-m", "kerastl.cli"]


def _log(record: dict) -> None:
    path = os.environ.get("KERASTL_FAULT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _images(root: Path, n=12) -> Path:
    rng = np.random.default_rng(0)
    for c, lo in (("dark", 0), ("light", 150)):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = (rng.random((32, 32, 3)) * 100 + lo).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ training --
@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("learnable")
    data = _images(root / "data", n=20)
    # with these the head learns dark vs light in one epoch, so a lost or repeated
    # epoch shows in the numbers
    x = np.stack([np.asarray(Image.open(f)) for f in sorted(data.rglob("*.png"))])
    return data, Path(calibrate_backbone(root / "calibrated.weights.h5", seed=5, images=x))


RUN_YAML = """
name: run
output_dir: {out}
seed: 0
model: {{backbone: mobilenet_v3_small, input_size: 32, freeze: backbone, dropout: 0.3,
        weights: {weights}}}
data: {{path: {data}, val_split: 0.25, shuffle: false}}
train: {{epochs: {epochs}, batch_size: 4, tensorboard: false, early_stopping: 0,
        cache_features: {cache}, learning_rate: 0.01, verbose: 0}}
finetune: {{epochs: {epochs}, freeze: none, learning_rate: 0.0001}}
"""


def _train_cmd(tmp: Path, learnable, epochs: int, cache: str = "off") -> list[str]:
    data, weights = learnable
    cfg = tmp / "run.yaml"
    text = RUN_YAML.format(out=tmp / "runs", data=data, weights=weights, epochs=epochs, cache=cache)
    cfg.write_text(text)
    return [*KERASTL, "train", str(cfg)]


def _history(run: Path) -> list[list[float]]:
    hist = run / "logs" / "history.csv"
    if not hist.is_file():
        return []
    rows = hist.read_text().strip().splitlines()[1:]
    return [[float(v) for v in row.split(",")] for row in rows if row.strip()]


def _epochs_logged(run: Path) -> list[int]:
    return [int(row[0]) for row in _history(run)]


def _phase(run: Path, epochs: int) -> str:
    """Where a training process was when it was killed, from what it had logged."""
    n = len(_epochs_logged(run))
    if (run / "metrics.json").is_file():
        return "done"
    if n == 0:
        return "start-up"
    return "phase 1" if n < epochs else ("phase 2" if n < 2 * epochs else "evaluation")


def _backup_epoch(run: Path, phase: str) -> int:
    meta = run / "backup" / "chief" / phase / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


def _phase1_saved(run: Path) -> bool:
    """Phase 1 is over and saved (its weights and ``state.json``): phase 2 is starting."""
    try:
        return bool(json.loads((run / "state" / "state.json").read_text()).get("phase1_done"))
    except (OSError, ValueError):
        return False


def _ready(run: Path, phase: str, epoch: int):
    """When a plan step's kill is due (:func:`_train_campaign`)."""
    if phase == "phase1 saved":
        return lambda: _phase1_saved(run)
    return lambda: _backup_epoch(run, phase) >= epoch


def _kill_when(cmd, ready, delay: float) -> tuple[int, float]:
    """Run ``cmd``; once ``ready()`` holds, wait ``delay`` s and SIGKILL."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            if ready():
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, time.perf_counter() - t0


def _check_run_folder(run: Path) -> dict:
    """What a killed run left must be whole: no epoch twice, checkpoints that load."""
    logged = _epochs_logged(run)
    assert logged == sorted(set(logged)), f"an epoch was logged twice: {logged}"
    if (run / "model.keras").exists():
        kerastl.load_model(run / "model.keras", compile=False)
    resumable = {}
    for meta in sorted(run.glob("backup/*/phase*/training_metadata.json")):
        resumable[meta.parent.name] = json.loads(meta.read_text())["epoch"]
    return resumable


def _train_campaign(tmp_path: Path, learnable, plan: list[tuple], seed: int) -> dict:
    """Kill ``kerastl train`` as ``plan`` says, then rerun it to the end.

    A step ``(phase, epoch, delay)`` starts the command and kills it ``delay`` seconds
    after the backup of ``phase`` (``"phase1"``, ``"phase2"``) records ``epoch`` epochs
    done (at once, in start-up, when a killed process had got that far already), or,
    for ``"phase1 saved"``, after phase 1's end is saved (between the phases).

    The resumed run must end where an uninterrupted one ends: the same epochs with the
    same losses and the same final weights (shuffle off, so the order of the examples
    does not depend on how many epochs a process ran).
    """
    epochs = 3  # per phase: the head on a frozen backbone, then fine-tuning
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    t0 = time.perf_counter()
    ref = subprocess.run(
        _train_cmd(ref_dir, learnable, epochs), env=ENV, capture_output=True, text=True, timeout=900
    )
    ref_seconds = time.perf_counter() - t0
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_run = ref_dir / "runs" / "run"
    ref_metrics = json.loads((ref_run / "metrics.json").read_text())
    # Chance is 0.5; 10 validation images: well above chance means at most 2 wrong.
    assert ref_metrics["accuracy"] >= 0.8, "the task must be learnt, or resume is not tested"

    work = tmp_path / "work"
    work.mkdir()
    run = work / "runs" / "run"
    cmd = _train_cmd(work, learnable, epochs)
    kills = []
    for phase, epoch, delay in plan:
        code, _ = _kill_when(cmd, _ready(run, phase, epoch), delay)
        resumable = _check_run_folder(run)
        kills.append({"landed": code == -signal.SIGKILL, "phase": _phase(run, epochs), **resumable})
    final = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    _check_run_folder(run)
    metrics = json.loads((run / "metrics.json").read_text())
    record = {
        "campaign": "train",
        "kills": sum(k["landed"] for k in kills),
        "phases": [k["phase"] for k in kills if k["landed"]],
        "seed": seed,
        "epochs": 2 * epochs,
        "epochs_logged": len(_epochs_logged(run)),
        "accuracy": metrics["accuracy"],
        "accuracy_uninterrupted": ref_metrics["accuracy"],
        "resumed_from": [
            {k: v for k, v in kill.items() if k.startswith("phase")} for kill in kills
        ],
        "uninterrupted_seconds": round(ref_seconds, 1),
    }
    _log(record)
    assert record["kills"] == len(plan), record
    # Exact resume: every epoch once, with the loss and metrics of the uninterrupted run
    # (a lost or repeated epoch moves these by far more than the tolerance), and the same model.
    np.testing.assert_allclose(_history(run), _history(ref_run), rtol=1e-4, atol=1e-6)
    got = kerastl.load_model(run / "model.keras", compile=False).get_weights()
    want = kerastl.load_model(ref_run / "model.keras", compile=False).get_weights()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert metrics["accuracy"] == ref_metrics["accuracy"]
    return record


@pytest.mark.heavy
def test_train_sigkill_in_each_phase_resumes_exactly(tmp_path, learnable):
    """Three kills that land: mid phase 1 (once its first epoch is backed up), between
    the phases (once phase 1's end is saved, before fine-tuning backs up an epoch: the
    rerun starts phase 2 from that saved state, dropout masks included) and mid
    fine-tuning (once the run's fourth epoch, the first of fine-tuning, is backed up)."""
    plan = [("phase1", 1, 0.0), ("phase1 saved", 3, 0.0), ("phase2", 4, 0.0)]
    record = _train_campaign(tmp_path, learnable, plan=plan, seed=1)
    assert record["phases"] == ["phase 1", "phase 2", "phase 2"], record
    # Each rerun resumed from a backup, not from the start of its phase.
    assert record["resumed_from"][0].get("phase1", 0) >= 1, record
    assert record["resumed_from"][1].get("phase1", 0) == 3, record
    assert "phase2" not in record["resumed_from"][1], record
    assert record["resumed_from"][2].get("phase2", 0) >= 4, record


@pytest.mark.slow
def test_train_survives_ten_sigkills(tmp_path, learnable):
    """Ten kills at seeded moments: in start-up, mid phase 1, mid fine-tuning, and in the
    last epoch and evaluation (up to 1 s after the fifth epoch's backup)."""
    rng = random.Random(10)
    moments = [("phase1", 1), ("phase1", 2), ("phase2", 4), ("phase2", 5)]
    plan = [(*m, rng.uniform(0.0, 1.0)) for m in sorted(rng.choices(moments, k=10))]
    record = _train_campaign(tmp_path, learnable, plan=plan, seed=10)
    assert {"phase 1", "phase 2"} <= set(record["phases"]), record


def test_ctrl_c_during_training_exits_130_and_keeps_the_backup(tmp_path, learnable):
    cmd = _train_cmd(tmp_path, learnable, epochs=30)
    run = tmp_path / "runs" / "run"
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(_epochs_logged(run)) < 2:
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert "Traceback" not in err
    assert any((run / "backup").rglob("*")), "the last good backup is kept"
    assert (run / "model.keras").is_file()
    kerastl.load_model(run / "model.keras", compile=False)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, weights):
    import keras

    from kerastl import data as kdata
    from kerastl.train import train
    from kerastl.train._callbacks import TrainingDiverged

    class PoisonAtEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                w = self.model.get_layer("logits")
                w.kernel.assign(np.full(w.kernel.shape, np.nan, "float32"))

    rng = np.random.default_rng(0)
    x = (rng.random((16, 32, 32, 3)) * 255).astype("uint8")
    y = np.repeat([0, 1], 8)
    cfg = {
        "output_dir": str(tmp_path),
        "name": "nan",
        "seed": 0,
        "model": {
            "backbone": "mobilenet_v3_small",
            "input_size": 32,
            "freeze": "backbone",
            "weights": weights,
        },
        "data": {"path": "<memory>", "val_split": 0.25},
        "train": {
            "epochs": 4,
            "batch_size": 4,
            "tensorboard": False,
            "early_stopping": 0,
            "cache_features": "off",
            "verbose": 0,
        },
    }
    ex = kdata.from_numpy(x, y)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 3.*model.keras"):
        train(cfg, examples=ex.split(0.25, seed=0), callbacks=[PoisonAtEpoch2()])
    run = tmp_path / "nan"
    model = kerastl.load_model(run / "model.keras", compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert _epochs_logged(run) == [0, 1]


# -------------------------------------------------------------------- export --
@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.keras"
    m = kerastl.build(
        "mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3), class_names=["a", "b"]
    )
    m.save(path)
    return path


def _versions(out: Path) -> list[Path]:
    base = out / "saved_model"
    if not base.exists():
        return []
    return sorted(p for p in base.glob("*/*") if p.name.isdigit())


def _complete(version: Path) -> bool:
    return (version / "saved_model.pb").is_file() and (
        version / "variables" / "variables.index"
    ).is_file()


def _export_campaign(
    tmp_path: Path, model: Path, kills: int, seed: int, window=(0.05, 0.8)
) -> dict:
    out = tmp_path / "serving"
    cmd = [
        *KERASTL,
        "export",
        str(model),
        "--out",
        str(out),
        "--formats",
        "saved_model,tflite",
        "--overwrite",
    ]
    t0 = time.perf_counter()
    first = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    v1 = _versions(out)
    assert len(v1) == 1 and _complete(v1[0])
    v1_files = _tree(v1[0])

    def check():
        for v in _versions(out):
            assert _complete(v), f"partial version published: {v}"
        assert _tree(v1[0]) == v1_files, "an earlier version was touched"
        for tfl in out.glob("*.tflite"):  # replaced only by a validated file, atomically
            from ai_edge_litert.interpreter import Interpreter

            Interpreter(model_path=str(tfl)).allocate_tensors()

    rng = random.Random(seed)
    phases = []
    for _ in range(kills):
        before = len(_versions(out))
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(*window) * seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        staged = any(out.glob(".kerastl-staging-*"))
        published = len(_versions(out)) > before
        if proc.returncode == -signal.SIGKILL:
            phases.append("publishing" if published else "converting" if staged else "start-up")
        check()
    final = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    check()
    assert not list(out.glob(".kerastl-staging-*")), "the rerun left the killed runs' staging"
    versions = _versions(out)
    record = {
        "campaign": "export",
        "kills": len(phases),
        "phases": phases,
        "seed": seed,
        "versions": [v.name for v in versions],
        "export_seconds": round(seconds, 1),
    }
    _log(record)
    assert record["kills"] == kills, record
    assert len(versions) >= 2  # the rerun published a new version
    return record


@pytest.mark.heavy
def test_export_survives_sigkill_fast_subset(tmp_path, small_model):
    record = _export_campaign(tmp_path, small_model, kills=2, seed=2, window=(0.45, 0.8))
    # Staging folders a kill left behind are not versions, and never block the next export.
    assert "converting" in record["phases"] or "publishing" in record["phases"], record


@pytest.mark.slow
def test_export_survives_ten_sigkills(tmp_path, small_model):
    _export_campaign(tmp_path, small_model, kills=10, seed=20)


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size)`` mounts a size-limited tmpfs at a fresh folder: a real full disk."""
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
        target = tmp_path / f"disk{len(mounted)}"
        target.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.mark.heavy
def test_full_disk_during_training_leaves_a_resumable_run(tmp_path, learnable, small_disk):
    """Checkpoints and run files on an 8 MB disk: the run stops, what it wrote is whole or
    absent, and once there is space the rerun resumes and completes."""
    disk = small_disk("8M")  # model.keras with its optimizer state is ~12 MB
    cmd = _train_cmd(disk, learnable, epochs=1, cache="auto")
    run = disk / "runs" / "run"
    full = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert full.returncode != 0
    assert "kerastl train: failed: No space left on device" in full.stderr, full.stderr[-3000:]
    assert not re.search(r'File ".*kerastl/.*", line', full.stderr), "a traceback, not one line"
    assert not (run / "metrics.json").exists()
    _check_run_folder(run)  # model.keras and backups, where present, load
    subprocess.run(["mount", "-o", "remount,size=200M", str(disk)], check=True)
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _epochs_logged(run) == [0, 1]
    kerastl.load_model(run / "model.keras", compile=False)
    assert not (run / "backup").exists()
    assert full.returncode == 1, full.stderr[-3000:]


@pytest.mark.parametrize("fmt", ["saved_model", "tflite", "onnx"])
def test_full_disk_during_export_is_clean(tmp_path, small_model, small_disk, fmt):
    """A real full disk (tmpfs) mid-file: a clear error, staging removed, nothing published,
    the published version untouched; with space again the same call publishes."""
    model = kerastl.load_model(small_model, compile=False)
    out = small_disk("64M")
    kerastl.export(model, out, formats=["saved_model"], latency_runs=1)
    before = _tree(out)
    filler = _fill(out, leave=256 * 1024)  # each artifact is ~4 MB
    with pytest.raises(kerastl.ExportError) as err:
        kerastl.export(model, out, formats=[fmt], overwrite=True, latency_runs=1)
    assert "No space left on device" in str(err.value)
    filler.unlink()
    after = _tree(out)
    failed = {"export_report.failed.json", "export_report.failed.md"}  # may be written
    assert {k: v for k, v in after.items() if k not in failed} == before, "nothing published"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == [], leftovers
    report = kerastl.export(model, out, formats=[fmt], overwrite=True, latency_runs=1)
    assert report["status"] == "passed"


def test_a_swallowed_ctrl_c_is_raised_again_at_the_next_step():
    """Keras' bare ``except:`` blocks can eat a KeyboardInterrupt; the run must still stop."""
    import keras

    from kerastl.core import interrupt as _interrupt
    from kerastl.train._callbacks import InterruptCheck

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    previous = signal.getsignal(signal.SIGINT)
    _interrupt.install()
    try:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what a bare `except:` in a library does
        assert _interrupt.requested()
        steps = []
        counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: steps.append(b))
        with pytest.raises(KeyboardInterrupt):
            model.fit(
                x, y, batch_size=2, epochs=3, verbose=0, callbacks=[counter, InterruptCheck()]
            )
        assert steps == [], "training went on after Ctrl-C"
    finally:
        _interrupt.reset()
        signal.signal(signal.SIGINT, previous)
