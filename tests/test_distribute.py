"""tf.distribute and resume, each in subprocesses so device setup and kills stay contained.

- MirroredStrategy on two logical CPU devices gives the same weights as one
  device for the same global batch.
- MultiWorkerMirroredStrategy with two local workers (TF_CONFIG on 127.0.0.1)
  trains and only the chief writes the model.
- A training process SIGKILLed mid-epoch resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# The comparison with one device runs both sides on oneDNN's kernels, which TensorFlow turns
# on by itself only on CPUs with AVX-512. On an AMD EPYC without it (Eigen's kernels), the
# one-device reference's epoch losses were 0.747 / 0.728, while two workers read 0.699 / 0.694
# with or without oneDNN, and one device with oneDNN 0.699 / 0.694 too: the one-device
# Eigen run is the odd one out, cause not found (an open item, not a tolerance).
ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "1"}

COMMON = textwrap.dedent("""
    import json, os, sys
    import numpy as np

    def data():
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.random((8, 32, 32, 3)) * 80, rng.random((8, 32, 32, 3)) * 80 + 150])
        return x.astype("uint8"), np.repeat([0, 1], 8)

    def one_image_per_batch():
        # Each global batch of 8 is one image 8 times, so any split of it across replicas has
        # the batch's BatchNorm statistics: two workers x 4 must then train exactly like one
        # device x 8 (gradients, loss and the all-reduced moving statistics alike).
        x, y = data()
        return np.repeat(x[[0, 8]], 8, axis=0), np.repeat([0, 1], 8)

    sys.path.insert(0, TESTS_DIR)  # conftest's helpers
    from conftest import calibrate_backbone

    def calibrated(path):
        # a stand-in for pretrained weights: a random backbone with frozen BN learns nothing
        return calibrate_backbone(path, seed=5, images=data()[0])

    def config(out, name, strategy, batch, epochs=2, weights=None, **train):
        return {"output_dir": out, "name": name, "seed": 0,
                "model": {"backbone": "mobilenet_v3_small", "input_size": 32, "dropout": 0.0,
                          "freeze": "none", "weights": weights},
                "data": {"path": "<memory>", "val_split": 0.0, "shuffle": False},
                "train": {"epochs": epochs, "batch_size": batch, "strategy": strategy,
                          "verbose": 0, "tensorboard": False, "early_stopping": 0,
                          "cache_features": "off", "learning_rate": 1e-3, **train}}
""").replace("TESTS_DIR", repr(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, *args: str, timeout: int = 420, env: dict | None = None):
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


MIRRORED = COMMON + textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kerastl import data as kdata
    from kerastl.train import train
    x, y = data()
    ex = kdata.from_numpy(x, y)
    out = sys.argv[1]
    w = calibrated(os.path.join(out, "calibrated.weights.h5"))
    one = train(config(out, "one", "one_device", 8, weights=w), examples=(ex, None), evaluate=False)
    two = train(config(out, "two", "mirrored", 4, weights=w), examples=(ex, None), evaluate=False)
    assert two.timings["replicas"] == 2, two.timings
    assert one.timings["replicas"] == 1, one.timings
    w1, w2 = one.model.get_weights(), two.model.get_weights()
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2))
    # the same seeded initial weights, to show that training moved them
    import keras
    from kerastl.builder import build
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    w0 = build("mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3), dropout=0.0,
               freeze="none", class_names=["0", "1"], compile=False, weights=w).get_weights()
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w0))
    print(json.dumps({"diff": diff, "moved": moved, "loss1": one.history["loss"],
                      "loss2": two.history["loss"], "strategy": two.timings["strategy"]}))
""")


@pytest.mark.heavy
def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path):
    out = _run(MIRRORED, str(tmp_path))
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["strategy"] == "MirroredStrategy"
    np.testing.assert_allclose(r["loss1"], r["loss2"], rtol=1e-3)
    assert r["moved"] > 1e-3, "training did not change the weights; the comparison is empty"
    assert r["diff"] < 0.05 * r["moved"], r  # far below how much training moved them


MIRRORED_ODD = COMMON + textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kerastl import data as kdata
    from kerastl.train import train
    x, y = data()
    out = sys.argv[1]
    w = calibrated(os.path.join(out, "calibrated.weights.h5"))
    tr = kdata.from_numpy(x[:13], y[:13])  # 13 = 8 + 5: a last batch split 3 / 2
    pick = [0, 1, 2, 3, 8, 9, 10, 11, 12]  # 9 validation examples
    va = kdata.from_numpy(x[pick], y[pick])
    done = {}
    for name, cache in (("cached", "auto"), ("images", "off")):
        cfg = config(out, name, "mirrored", 4, epochs=2, weights=w, cache_features=cache)
        cfg["model"]["freeze"] = "backbone"
        r = train(cfg, examples=(tr, va))
        fc = r.timings.get("feature_cache")
        done[name] = {"replicas": r.timings["replicas"], "accuracy": r.metrics["accuracy"],
                      "mode": fc.get("mode") if isinstance(fc, dict) else fc}
    print(json.dumps(done))
""")


@pytest.mark.heavy
def test_mirrored_trains_on_cached_features_and_validates_a_set_of_odd_size(tmp_path):
    """On two replicas the head on cached features failed ("You must feed a value for
    placeholder tensor": a whole epoch per execution), and 9 validation examples at a
    global batch of 8 failed (a replica given none; at batch 7, a first batch split 4 / 3)."""
    out = _run(MIRRORED_ODD, str(tmp_path))
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["cached"]["replicas"] == r["images"]["replicas"] == 2, r
    assert r["cached"]["mode"] == "memory" and r["images"]["mode"] != "memory", r
    for run in r.values():
        assert 0.0 <= run["accuracy"] <= 1.0


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


WORKER = COMMON + textwrap.dedent("""
    import hashlib
    from kerastl import data as kdata
    from kerastl.builder import load_model
    from kerastl.train import train

    def digest(weights):
        return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in weights)).hexdigest()

    out, variant = sys.argv[1], sys.argv[2]
    x, y = one_image_per_batch() if variant == "full" else data()
    if variant == "full":  # the whole model trains, BatchNorm too (moving statistics all-reduced)
        w = os.path.join(os.path.dirname(out), "calibrated.weights.h5")
        cfg = config(out, "mw", "multi_worker", 4, weights=w, cache_features="off")
        cfg["model"]["train_batchnorm"] = True
    else:  # the head alone, on cached features of the frozen (calibrated) backbone
        cfg = config(out, "mw", "multi_worker", 4, weights=sys.argv[3], cache_features="memory")
        cfg["model"]["freeze"] = "backbone"
    r = train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False)
    weights = digest(r.model.get_weights())
    chief = r.run_dir == os.path.join(out, "mw")
    if chief and variant == "full":
        np.savez(os.path.join(os.path.dirname(out), "mw.npz"), *r.model.get_weights())
    print(json.dumps({"run_dir": r.run_dir, "replicas": r.timings["replicas"],
                      "strategy": r.timings["strategy"], "cache": r.timings["feature_cache"],
                      "loss": r.history["loss"], "weights": weights,
                      "saved": digest(load_model(r.model_path).get_weights()) if chief else None}))
""")


TWICE = COMMON + textwrap.dedent("""
    import time
    from kerastl import data as kdata
    from kerastl.train import runfolder, train
    from kerastl.train._strategy import is_chief

    out, weights = sys.argv[1], sys.argv[2]
    if is_chief():  # the chief marks its first run finished late: the other worker looks first
        close = runfolder.RunFolder.close
        def late_close(self):
            time.sleep(8)
            close(self)
        runfolder.RunFolder.close = late_close
    x, y = data()
    names = []
    for _ in range(2):  # the same name twice: the second run must not replace the first
        cfg = config(out, "mw", "multi_worker", 4, epochs=1, weights=weights,
                     cache_features="memory")
        cfg["model"]["freeze"] = "backbone"
        r = train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False)
        names.append(r.config["name"])
    print(json.dumps({"names": names, "loss": r.history["loss"]}))
""")


ONE_DEVICE = COMMON + textwrap.dedent("""
    from kerastl import data as kdata
    from kerastl.train import train
    import keras
    from kerastl.builder import build
    root = sys.argv[1]
    x, y = one_image_per_batch()
    w = calibrated(os.path.join(root, "calibrated.weights.h5"))
    keras.utils.set_random_seed(0)
    w0 = build("mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3), dropout=0.0,
               freeze="none", class_names=["0", "1"], compile=False, weights=w).get_weights()
    keras.utils.clear_session()
    cfg = config(os.path.join(root, "one"), "one", "one_device", 8, weights=w, cache_features="off")
    cfg["model"]["train_batchnorm"] = True
    r = train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False)
    np.savez(os.path.join(root, "one.npz"), *r.model.get_weights())
    np.savez(os.path.join(root, "start.npz"), *w0)
    print(json.dumps({"loss": r.history["loss"]}))
""")


# "full" (the whole model, BatchNorm moving statistics all-reduced) runs in CI and is compared
# with one device on the same global batch; "head" (cached features) is the slow tier.
@pytest.mark.heavy
@pytest.mark.parametrize("variant", ["full", pytest.param("head", marks=pytest.mark.slow)])
def test_multi_worker_two_local_workers_write_one_model(tmp_path, variant, weights):
    root = tmp_path
    tmp_path = root / "mw_out"
    tmp_path.mkdir()
    one = None
    if variant == "full":  # the one-device reference also writes the calibrated weights
        one = json.loads(
            _run(ONE_DEVICE, str(root), env={**ENV, **ONEDNN}).stdout.strip().splitlines()[-1]
        )
    extra = ONEDNN if variant == "full" else None
    chief, other = _two_workers(WORKER, str(tmp_path), variant, weights, extra_env=extra)
    assert chief["strategy"] == other["strategy"] == "MultiWorkerMirroredStrategy"
    assert chief["replicas"] == other["replicas"] == 2
    if variant == "full":
        assert chief["cache"] == "no"
    else:
        assert chief["cache"]["mode"] == "memory", chief["cache"]
    assert len(chief["loss"]) == 2 and all(np.isfinite(chief["loss"])), chief
    assert chief["loss"] == other["loss"], "per-epoch logs were not reduced across workers"
    assert chief["weights"] == other["weights"], "workers disagree after training"
    assert chief["saved"] == chief["weights"], "the chief's model.keras holds other weights"
    run = tmp_path / "mw"
    assert chief["run_dir"] == str(run) and other["run_dir"] != str(run)
    assert (run / "model.keras").is_file() and (run / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mw"]  # worker 1 wrote elsewhere
    assert not os.path.exists(other["run_dir"]), "worker 1 left its temporary run folder"
    assert not (run / "backup").exists()
    if one is not None:
        _compare_with_one_device(root, chief, one)


def _two_workers(
    script: str, *args: str, timeout: int = 420, extra_env: dict | None = None
) -> list[dict]:
    """Run ``script`` as worker 0 (the chief) and worker 1 of one job; each one's last line."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {
            **ENV,
            **(extra_env or {}),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


@pytest.mark.heavy
def test_multi_worker_run_twice_under_one_name_every_worker_takes_the_chiefs_folder(
    tmp_path, weights
):
    """The chief marks its first run finished 8 s late, so the other worker looks at the
    shared folder first and, alone, would take ``mw`` again (and resume the finished run)
    while the chief takes ``mw-2``; it must take the chief's choice."""
    chief, other = _two_workers(TWICE, str(tmp_path), weights, timeout=300)
    assert chief["names"] == other["names"] == ["mw", "mw-2"], (chief, other)
    assert chief["loss"] == other["loss"] and len(chief["loss"]) == 1, (chief, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mw", "mw-2"]
    assert (tmp_path / "mw-2" / "model.keras").is_file()


BEHIND = COMMON + textwrap.dedent("""
    import hashlib, shutil
    import keras
    from kerastl import data as kdata
    from kerastl.train import train
    from kerastl.train._strategy import is_chief

    class Killed(keras.callbacks.Callback):  # both workers stop before epoch 3
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("killed")

    out, weights = sys.argv[1], sys.argv[2]
    x, y = data()
    cfg = config(out, "mw", "multi_worker", 4, epochs=4, weights=weights)
    try:
        train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False, callbacks=[Killed()])
    except RuntimeError:
        pass
    if not is_chief():  # killed before its own backup of the last epoch: one behind the chief
        shutil.rmtree(os.path.join(out, "mw", "backup", "worker1"))
    r = train(cfg, examples=(kdata.from_numpy(x, y), None), evaluate=False)
    digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in r.model.get_weights()))
    print(json.dumps({"weights": digest.hexdigest(), "epochs": r.timings.get("phase1_epochs"),
                      "loss": r.history["loss"]}))
""")


@pytest.mark.heavy
def test_multi_worker_resume_with_a_worker_behind_takes_the_chiefs_backup(tmp_path, weights):
    """A worker killed between the chief's backup of an epoch and its own resumed an epoch
    behind the chief: the chief paired its collectives with the wrong steps and reported
    success while the worker died. The worker now resumes from the chief's backup."""
    chief, other = _two_workers(BEHIND, str(tmp_path), weights, timeout=400)
    assert chief["weights"] == other["weights"], (chief, other)
    assert other["loss"] == chief["loss"][-len(other["loss"]) :], (chief, other)
    assert len(chief["loss"]) == 4, chief  # 2 epochs before the kill, 2 after the resume


def _compare_with_one_device(root, chief, one) -> None:
    """Two workers x batch 4 train like one device x batch 8 (BatchNorm training too), far
    closer than training moved the weights; not bit-equal (the all-reduce sums in another order).
    """
    load = lambda name: list(np.load(root / name).values())  # noqa: E731
    mw, ref, start = load("mw.npz"), load("one.npz"), load("start.npz")
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(mw, ref))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, start))
    assert moved > 1e-3, "training did not change the weights; the comparison is empty"
    np.testing.assert_allclose(chief["loss"], one["loss"], rtol=1e-3)
    assert diff < 0.05 * moved, {"diff": diff, "moved": moved}


RESUMABLE = COMMON + textwrap.dedent("""
    import time
    import keras
    from kerastl import data as kdata
    from kerastl.train import train

    class Progress(keras.callbacks.Callback):
        # Records (epoch, batch) so the test can kill us mid-epoch; slows steps down a little.
        def __init__(self, path):
            super().__init__()
            self.path, self.epoch = path, None
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            with open(self.path + ".epochs", "a") as f:
                f.write(f"{epoch}\\n")
        def on_train_batch_begin(self, batch, logs=None):
            with open(self.path, "w") as f:
                f.write(f"{self.epoch} {batch}")
            time.sleep(0.25)

    x, y = data()
    out, progress = sys.argv[1], sys.argv[2]
    r = train(config(out, "resume", "one_device", 2, epochs=4), examples=(kdata.from_numpy(x, y), None),
              callbacks=[Progress(progress)], evaluate=False)
    print(json.dumps({"loss": r.history["loss"]}))
""")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_continues_from_last_epoch(tmp_path):
    progress = tmp_path / "progress"
    p = subprocess.Popen(
        [sys.executable, "-c", RESUMABLE, str(tmp_path), str(progress)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 400
    killed_at = None
    try:
        while time.time() < deadline and p.poll() is None:
            if progress.exists():
                parts = progress.read_text().split()
                if len(parts) == 2 and parts[0] == "2" and int(parts[1]) >= 3:
                    killed_at = (2, int(parts[1]))
                    os.kill(p.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert killed_at is not None, "training never reached epoch 2: " + p.stderr.read()[-3000:]
    assert p.returncode == -signal.SIGKILL
    meta = json.loads(
        (tmp_path / "resume" / "backup" / "chief" / "phase1" / "training_metadata.json").read_text()
    )
    assert meta["epoch"] == 2  # epochs 0 and 1 finished before the kill
    (tmp_path / "progress.epochs").write_text("")
    out = _run(RESUMABLE, str(tmp_path), str(progress))
    epochs_run = [int(e) for e in (tmp_path / "progress.epochs").read_text().split()]
    assert epochs_run == [2, 3], epochs_run  # continued from the last epoch, not from 0
    history = (tmp_path / "resume" / "logs" / "history.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in history[1:]] == [0, 1, 2, 3]
    # the result's history is the whole run's: the killed process's epochs, then the rerun's
    header = history[0].split(",")
    logged = [float(r.split(",")[header.index("loss")]) for r in history[1:]]
    assert json.loads(out.stdout.strip().splitlines()[-1])["loss"] == pytest.approx(logged)
    assert not (tmp_path / "resume" / "backup").exists()
