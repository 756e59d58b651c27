"""Large float16 TFLite files validated through their float32 upcast
(kerastl/export/formats/tflite_upcast.py), on small models with the size threshold lowered."""

from __future__ import annotations

import numpy as np
import pytest
from test_tflite_parts import _conv_classifier

from kerastl.errors import ExportError


def _float16_file(tmp_path, seed=0):
    """A conv classifier's float16 file written by ``kerastl.export`` (converted whole)."""
    import kerastl

    model = _conv_classifier(seed)
    images = np.random.default_rng(seed).uniform(0, 255, (12, 24, 24, 3)).astype("float32")
    report = kerastl.export(
        model,
        tmp_path / "whole",
        formats=["tflite"],
        quantize=["float16"],
        validation_data=images[:6],
        latency_runs=1,
    )
    assert report["status"] == "passed", report
    return model, images, tmp_path / "whole" / "parts_net_float16.tflite"


def _xnnpack(path, x):
    from ai_edge_litert.interpreter import Interpreter

    run = Interpreter(model_path=str(path), num_threads=2).get_signature_runner("serving_default")
    return run(image=x)


def test_the_upcast_runs_bit_for_bit_as_the_float16_file_in_xnnpack(tmp_path):
    """Every float16 weight becomes a float32 constant (no DEQUANTIZE, no float16 tensor
    read), and XNNPACK gives the same bits on the upcast as on the file, at batch 1 and 4."""
    from ai_edge_litert import schema_py_generated as schema

    from kerastl.export.formats.tflite_upcast import upcast

    _, images, f16 = _float16_file(tmp_path)
    source = schema.ModelT.InitFromPackedBuf(f16.read_bytes(), 0)
    halves = [t for t in source.subgraphs[0].tensors if t.type == schema.TensorType.FLOAT16]
    assert len(halves) >= 5  # the convolutions' and the head's weights
    target = tmp_path / "up.tflite"
    assert upcast(f16, target) == len(halves)
    up = schema.ModelT.InitFromPackedBuf(target.read_bytes(), 0)
    sub = up.subgraphs[0]
    read = {i for op in sub.operators for i in op.inputs}
    assert not [i for i in read if i >= 0 and sub.tensors[i].type == schema.TensorType.FLOAT16]
    assert len(sub.operators) == len(source.subgraphs[0].operators) - len(halves)
    kept = [up.buffers[t.buffer] for t in sub.tensors if t.type == schema.TensorType.FLOAT16]
    assert all(b.data is None and not b.size for b in kept)  # the float16 copies are left out
    for x in (images[6:7], images[6:10]):
        want, got = _xnnpack(f16, x), _xnnpack(target, x)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_upcasting_holds_one_weight_at_a_time(tmp_path):
    """The upcast streams: Python's allocations peak at a fraction of the file (one weight
    and a copy buffer; 40 weights of 2 MB here: 40 MB in float16, 80 MB in float32)."""
    import tracemalloc

    import tensorflow as tf

    from kerastl.export.formats.tflite_upcast import upcast

    weights = [tf.Variable(np.full((512, 1024), k / 40, np.float32)) for k in range(40)]
    module = tf.Module()
    module.weights_ = weights

    @tf.function(input_signature=[tf.TensorSpec((1, 512))])
    def f(x):
        return {"y": tf.add_n([x @ w for w in weights])}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], module)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    (tmp_path / "f16.tflite").write_bytes(conv.convert())
    tracemalloc.start()
    try:
        assert upcast(tmp_path / "f16.tflite", tmp_path / "f32.tflite") == 40
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one = 512 * 1024 * 4
    assert peak < 8 * one, f"{peak / 1e6:.1f} MB at the peak for 40 weights of {one / 1e6} MB"
    assert (tmp_path / "f32.tflite").stat().st_size > 40 * one


def test_a_large_model_float16_file_is_validated_through_its_upcast(tmp_path, monkeypatch):
    """Over the size threshold the report's runtime says how the float16 file was checked
    (its upcast run in XNNPACK, the file itself loaded, not run); under it, the file
    itself runs in XNNPACK. Both pass with the same outputs, and no upcast is left."""
    import kerastl
    from kerastl.export.formats import tflite_parts

    model = _conv_classifier(2)
    images = np.random.default_rng(2).uniform(0, 255, (8, 24, 24, 3)).astype("float32")
    kwargs = {"formats": ["tflite"], "quantize": ["float16"], "validation_data": images}
    small = kerastl.export(model, tmp_path / "small", latency_runs=1, **kwargs)
    monkeypatch.setattr(tflite_parts, "PARTS_MIN_BYTES", 0)
    monkeypatch.setattr(tflite_parts, "PART_BYTES", 10**9)  # one part: the same file
    large = kerastl.export(model, tmp_path / "large", latency_runs=1, **kwargs)
    assert small["status"] == "passed" and large["status"] == "passed", large
    small_rt = next(a["runtime"] for a in small["artifacts"] if a["precision"] == "float16")
    large_rt = next(a["runtime"] for a in large["artifacts"] if a["precision"] == "float16")
    assert "upcast" not in small_rt, small_rt
    assert "float32 upcast" in large_rt and "not run" in large_rt, large_rt
    small_f16, large_f16 = (
        next(a for a in r["artifacts"] if a["precision"] == "float16") for r in (small, large)
    )
    assert large_f16["parity"]["rel_err"] == small_f16["parity"]["rel_err"]  # bit for bit
    assert small_f16["parity"]["max_rel_err"] > 0  # (float16 weights: not the Keras outputs)
    assert not list((tmp_path / "large").rglob("*as_float32*"))


def test_an_upcast_that_does_not_match_the_model_fails_validation(tmp_path, monkeypatch):
    """Validation of the upcast is validation: with its weights halved the export fails,
    says why, and publishes nothing."""
    import kerastl
    from kerastl.export.formats import tflite_parts, tflite_upcast

    drop = tflite_upcast._drop_dequantize

    def halved(model):
        pending = drop(model)
        return {
            i: (np.frombuffer(v, np.float16) / 2).astype(np.float16).view(np.uint8)
            for i, v in pending.items()
        }

    monkeypatch.setattr(tflite_upcast, "_drop_dequantize", halved)
    monkeypatch.setattr(tflite_parts, "PARTS_MIN_BYTES", 0)
    monkeypatch.setattr(tflite_parts, "PART_BYTES", 10**9)
    model = _conv_classifier(3)
    images = np.random.default_rng(3).uniform(0, 255, (8, 24, 24, 3)).astype("float32")
    with pytest.raises(ExportError, match="parts_net_float16.tflite: .*rel_err"):
        kerastl.export(
            model,
            tmp_path / "out",
            formats=["tflite"],
            quantize=["float16"],
            validation_data=images,
            latency_runs=1,
        )
    assert not list((tmp_path / "out").glob("*.tflite"))  # float32's passed: nothing published
