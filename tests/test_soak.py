"""Soak: repeated load_artifact(...).predict and 1,000 SavedModel requests, memory bounded.

Runs in a subprocess so the resident-set size is the artifact's, not the test
session's. The bound: after a warm-up third of the calls, RSS may grow by at
most ``GROWTH_MB`` over the rest, and every answer equals the first one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

GROWTH_MB = 64

SCRIPT = textwrap.dedent("""
    import json, sys, gc
    import numpy as np, psutil
    import kerastl
    out, loads, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import keras
    keras.utils.set_random_seed(0)
    m = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3),
                      class_names=["a", "b", "c"])
    # BatchNorm statistics measured on images: a random-init model with the default ones
    # gives every input the same output, and "the same answer every call" would be empty.
    calib = np.random.default_rng(1).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    calib[8:] *= 0.3  # dark and bright images
    bns = [l for l in m._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    for b in bns:
        b.trainable, b.momentum = True, 0.0
    m(calib, training=True)
    for b in bns:
        b.trainable = False
    report = kerastl.export(m, out, formats=["saved_model", "tflite", "onnx"])
    import os
    paths = [os.path.join(out, a["path"]) for a in report["artifacts"]]
    x = calib[[0, 8]]  # one bright, one dark image
    spread = float(np.abs(np.diff(m.predict(x, verbose=0), axis=0)).max())
    proc = psutil.Process()
    rss, first, same = [], {}, True
    for i in range(loads):
        path = paths[i % len(paths)]
        pred = kerastl.load_artifact(path).predict(x)
        probs = np.asarray(pred["probabilities"])
        if path not in first:
            first[path] = probs
        same &= bool(np.array_equal(probs, first[path]))
        gc.collect()
        rss.append(proc.memory_info().rss / 2**20)
    sm = kerastl.load_artifact(paths[0])
    one = x[:1]
    ref = np.asarray(sm.predict(one)["probabilities"])
    rss_req = []
    for i in range(requests):
        got = np.asarray(sm.predict(one)["probabilities"])
        same &= bool(np.array_equal(got, ref))
        if i % 50 == 0:
            rss_req.append(proc.memory_info().rss / 2**20)
    print(json.dumps({"paths": paths, "rss": rss, "rss_requests": rss_req, "same": same,
                      "spread": spread, "ref": ref.tolist(), "first": first[paths[0]].tolist()}))
""")


def _soak(tmp_path, loads: int, requests: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "out"), str(loads), str(requests)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["spread"] > 1e-3, "the model answers every input alike: the check would be empty"
    assert r["same"], "an answer changed between calls"
    # ...and the answers are the model's own: the single request equals row 0 of the batch
    np.testing.assert_allclose(r["ref"][0], r["first"][0], rtol=1e-4, atol=1e-6)
    assert len(r["paths"]) == 4  # SavedModel, TFLite, its MediaPipe copy, ONNX
    warm = loads // 3
    growth = max(r["rss"][warm:]) - r["rss"][warm]
    growth_req = max(r["rss_requests"]) - r["rss_requests"][0]
    summary = {
        "loads": loads,
        "requests": requests,
        "rss_after_warmup_mb": round(r["rss"][warm]),
        "growth_mb": round(growth, 1),
        "request_growth_mb": round(growth_req, 1),
    }
    if os.environ.get("KERASTL_FAULT_LOG"):
        with open(os.environ["KERASTL_FAULT_LOG"], "a") as f:
            f.write(json.dumps({"campaign": "soak", **summary}) + "\n")
    assert growth < GROWTH_MB, summary
    assert growth_req < GROWTH_MB, summary
    return summary


@pytest.mark.heavy
def test_soak_fast_subset(tmp_path):
    _soak(tmp_path, loads=16, requests=200)  # each artifact loaded 4 times


@pytest.mark.slow
def test_soak_200_loads_and_1000_requests(tmp_path):
    _soak(tmp_path, loads=200, requests=1000)
