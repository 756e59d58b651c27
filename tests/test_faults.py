"""Faults survived with nothing lost: SIGKILL, Ctrl-C, a full disk, a diverging loss.

The kill tests run the real ``kerastl`` command in a subprocess and kill it at
seeded random moments. The default run does a fast subset (2 kills each); the
full 10-kill campaigns run with ``-m slow``. Each campaign appends its figures to
``bench/faults.jsonl`` when ``KERASTL_FAULT_LOG`` is set (the note quotes them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
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
RUN_YAML = """
name: run
output_dir: {out}
seed: 0
model: {{backbone: mobilenet_v3_small, input_size: 32, freeze: backbone, dropout: 0.0,
        train_batchnorm: true}}
data: {{path: {data}, val_split: 0.25}}
train: {{epochs: {epochs}, batch_size: 4, tensorboard: false, early_stopping: 0,
        cache_features: auto, learning_rate: 0.001, verbose: 0}}
finetune: {{epochs: {epochs}, freeze: none, learning_rate: 0.0001}}
"""


def _train_cmd(tmp: Path, data: Path, epochs: int) -> list[str]:
    cfg = tmp / "run.yaml"
    cfg.write_text(RUN_YAML.format(out=tmp / "runs", data=data, epochs=epochs))
    return [*KERASTL, "train", str(cfg)]


def _epochs_logged(run: Path) -> list[int]:
    hist = run / "logs" / "history.csv"
    if not hist.is_file():
        return []
    lines = hist.read_text().strip().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines if line]


def _kill_campaign(
    cmd: list[str],
    kills: int,
    seed: int,
    window: tuple[float, float],
    done: callable,
    check: callable,
) -> dict:
    """Start ``cmd``, SIGKILL it after a seeded random delay, check, repeat; then finish."""
    rng = random.Random(seed)
    killed = attempts = 0
    while killed < kills and attempts < 3 * kills and not done():
        attempts += 1
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delay = rng.uniform(*window)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        check()
    t = time.perf_counter()
    final = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    check()
    return {"kills": killed, "final_seconds": round(time.perf_counter() - t, 1)}


def _train_campaign(tmp_path: Path, kills: int, seed: int) -> dict:
    data = _images(tmp_path / "data")
    epochs = 3  # per phase: cached-feature head training, then fine-tuning
    # Reference: one uninterrupted run.
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    t0 = time.perf_counter()
    ref = subprocess.run(
        _train_cmd(ref_dir, data, epochs), env=ENV, capture_output=True, text=True, timeout=900
    )
    ref_seconds = time.perf_counter() - t0
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_metrics = json.loads((ref_dir / "runs" / "run" / "metrics.json").read_text())

    work = tmp_path / "work"
    work.mkdir()
    run = work / "runs" / "run"
    cmd = _train_cmd(work, data, epochs)

    def check():
        logged = _epochs_logged(run)
        assert logged == sorted(set(logged)), f"an epoch was logged twice: {logged}"
        model = run / "model.keras"
        if model.exists():  # a checkpoint that exists is a complete, loadable one
            kerastl.load_model(model, compile=False)

    def done():
        return (run / "metrics.json").is_file()

    # Random moments over the whole run: start-up, feature caching, both phases, checkpoints.
    stats = _kill_campaign(cmd, kills, seed, (3.0, max(6.0, ref_seconds * 0.6)), done, check)
    logged = _epochs_logged(run)
    assert logged == _epochs_logged(ref_dir / "runs" / "run"), logged
    metrics = json.loads((run / "metrics.json").read_text())
    diff = abs(metrics["accuracy"] - ref_metrics["accuracy"])
    record = {
        "campaign": "train",
        "kills": stats["kills"],
        "seed": seed,
        "epochs": epochs,
        "epochs_logged": len(logged),
        "accuracy": metrics["accuracy"],
        "accuracy_uninterrupted": ref_metrics["accuracy"],
        "difference": round(diff, 4),
        "uninterrupted_seconds": round(ref_seconds, 1),
    }
    _log(record)
    # 6 validation images: one image is 0.167; a resumed run may differ by one or two.
    assert diff <= 0.34, record
    return record


def test_train_survives_sigkill_fast_subset(tmp_path):
    _train_campaign(tmp_path, kills=2, seed=1)


@pytest.mark.slow
def test_train_survives_ten_sigkills(tmp_path):
    _train_campaign(tmp_path, kills=10, seed=10)


def test_ctrl_c_during_training_exits_130_and_keeps_the_backup(tmp_path):
    data = _images(tmp_path / "data")
    cmd = _train_cmd(tmp_path, data, epochs=30)
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


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
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
        "model": {"backbone": "mobilenet_v3_small", "input_size": 32, "freeze": "backbone"},
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


def _export_campaign(tmp_path: Path, model: Path, kills: int, seed: int) -> dict:
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

    stats = _kill_campaign(cmd, kills, seed, (2.0, seconds), lambda: False, check)
    versions = _versions(out)
    assert len(versions) >= 2  # the rerun published a new version
    record = {
        "campaign": "export",
        "kills": stats["kills"],
        "seed": seed,
        "versions": [v.name for v in versions],
        "export_seconds": round(seconds, 1),
    }
    _log(record)
    return record


def test_export_survives_sigkill_fast_subset(tmp_path, small_model):
    _export_campaign(tmp_path, small_model, kills=2, seed=2)


@pytest.mark.slow
def test_export_survives_ten_sigkills(tmp_path, small_model):
    _export_campaign(tmp_path, small_model, kills=10, seed=20)


def test_full_disk_during_export_is_clean(tmp_path, small_model, monkeypatch):
    """ENOSPC injected in the writer mid-file: a clear error, staging removed, nothing published."""
    from kerastl.export.formats import saved_model as sm

    model = kerastl.load_model(small_model, compile=False)
    out = tmp_path / "serving"
    kerastl.export(model, out, formats=["saved_model"])
    before = _tree(out)

    def disk_full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 1024)  # the disk fills up part-way through the file
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sm, "write_warmup_requests", disk_full)
    with pytest.raises(kerastl.ExportError) as err:
        kerastl.export(model, out, formats=["saved_model", "tflite"])
    assert "No space left on device" in str(err.value)
    assert _tree(out) == before, "nothing new published, nothing changed"
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == [], leftovers


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
