"""``kerastl.export`` is both the package and the public function: every spelling runs the
same pipeline function, whether or not the package was imported before the attribute was
first read (then Python binds ``kerastl.export`` to the package, which is callable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_CHECK = """
from kerastl.export import export
from kerastl.export.pipeline import export as canonical

assert export is canonical
for call in (kerastl.export, export):
    try:
        call("model.keras", "out", formats=["nope"])
    except kerastl.ConfigError as exc:
        print(type(kerastl.export).__name__, type(exc).__name__, str(exc).splitlines()[0])
"""

_FIRST = {
    "function": "import kerastl\nassert kerastl.export.__module__ == 'kerastl.export.pipeline'\n",
    "package": "import kerastl.export.formats\nimport kerastl\n"
    "assert kerastl.export is sys.modules['kerastl.export']\n",
}


@pytest.mark.parametrize("first", sorted(_FIRST))
def test_both_spellings_of_export_call_the_pipeline(tmp_path, first):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-c", "import sys\n" + _FIRST[first] + _CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and len(set(lines)) == 1, lines
    assert "UnknownNameError" in lines[0] and "'nope'" in lines[0] and "saved_model" in lines[0]


# ------------------------------------------------- plain Keras models a new user brings --
def _conv_head(x, units: int = 3, name: str | None = None):
    from keras import layers

    x = layers.Rescaling(1 / 255.0)(x)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(units, activation="softmax", name=name)(x)


@pytest.mark.parametrize(
    "shape, why",
    [
        ((10,), r"\(batch, 10\).*export to ONNX and TFLite with validation_data"),
        ((3, 32, 32), r"\(batch, 3, 32, 32\).*channels-first.*keras\.Input\(\(32, 32, 3\)\)"),
        ((32, 32, 5), r"\(batch, 32, 32, 5\).*1 or 3 channels"),
    ],
)
def test_inputs_other_than_nhwc_images_are_refused_before_any_work(tmp_path, shape, why):
    import keras

    import kerastl

    inp = keras.Input(shape)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)), name="odd")
    with pytest.raises(kerastl.ConfigError, match=r"model: 'odd' takes inputs of shape " + why):
        kerastl.export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_one_key_dict_output_is_exported_under_its_key(tmp_path):
    import keras
    import numpy as np

    import kerastl

    inp = keras.Input((16, 16, 3))
    model = keras.Model(inp, {"probs": _conv_head(inp)}, name="dictout")
    report = kerastl.export(model, tmp_path, formats="tflite")
    assert report["model"]["outputs"] == ["probs", "class_id"]
    assert all(a["passed"] for a in report["artifacts"])
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    got = kerastl.load_artifact(tmp_path / "dictout.tflite").predict(x)
    want = model.predict(x, verbose=0)["probs"]
    np.testing.assert_allclose(got["probs"], want, atol=1e-5)
    assert list(got["class_id"]) == list(want.argmax(-1))


def test_several_outputs_are_refused_with_what_to_do(tmp_path):
    import keras

    import kerastl

    inp = keras.Input((16, 16, 3))
    feats = keras.layers.GlobalAveragePooling2D()(inp)
    cls, box = keras.layers.Dense(3, name="cls")(feats), keras.layers.Dense(2, name="box")(feats)
    two = keras.Model(inp, [cls, box], name="two")
    with pytest.raises(kerastl.ConfigError, match=r"'two' has 2 \(cls, box\).*one model per") as e:
        kerastl.export(two, tmp_path / "out")
    assert "features_only" not in str(e.value)


def test_a_lambda_file_says_how_each_caller_loads_it_unsafely(tmp_path, capsys):
    import keras

    import kerastl
    from kerastl.cli import main

    inp = keras.Input((16, 16, 3))
    model = keras.Model(inp, _conv_head(keras.layers.Lambda(lambda t: t * 1.0)(inp)))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(kerastl.KerastlError) as e:
        kerastl.export(str(path), tmp_path / "out")
    assert f"kerastl.load_model({str(path)!r}, safe_mode=False) and pass the model" in str(e.value)
    assert "--unsafe" not in str(e.value)
    assert main(["export", str(path), "--formats", "tflite"]) == 1
    assert "If you trust the file, rerun with --unsafe." in capsys.readouterr().err


def test_a_model_name_with_a_space_exports_under_name(tmp_path, capsys):
    import keras

    import kerastl
    from kerastl.cli import main

    inp = keras.Input((16, 16, 3))
    model = keras.Model(inp, _conv_head(inp), name="my model")
    with pytest.raises(kerastl.ConfigError, match=r"name: 'my model' is not usable"):
        kerastl.export(model, tmp_path / "refused")  # no name: the file names would hold a space
    report = kerastl.export(model, tmp_path, name="ok_name", formats="tflite")
    assert [a["path"] for a in report["artifacts"]] == ["ok_name.tflite"]
    assert report["artifacts"][0]["passed"] and model.name == "my model"
    model.save(tmp_path / "spaced.keras")
    assert main(["export", str(tmp_path / "spaced.keras"), "--formats", "tflite"]) == 2
    assert "--name: the model's own name 'my model'" in capsys.readouterr().err
    bad = keras.Model(inp, _conv_head(inp, name="my dense"), name="ok")
    with pytest.raises(kerastl.ConfigError, match=r"layer names \['my dense'\] of 'ok'"):
        kerastl.export(bad, tmp_path / "bad")


def test_load_artifact_of_a_missing_file_lists_the_folders_artifacts(tmp_path):
    import kerastl

    for name in ("net.onnx", "net.tflite", "net_int8.tflite", "export_report.json"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "saved_model" / "net" / "1").mkdir(parents=True)
    (tmp_path / "saved_model" / "net" / "1" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(kerastl.ConfigError) as info:
        kerastl.load_artifact(tmp_path / "model.onnx")
    msg = str(info.value)
    assert f"Did you mean {str(tmp_path / 'net.onnx')!r}?" in msg
    assert "net.onnx, net.tflite, net_int8.tflite, saved_model/net." in msg
    assert "export_report" not in msg
    with pytest.raises(kerastl.ConfigError, match="There is no folder"):
        kerastl.load_artifact(tmp_path / "nope" / "model.onnx")


def test_load_artifact_of_a_missing_file_skips_a_subfolder_it_may_not_read(tmp_path, monkeypatch):
    """Listing the folder's artifacts probed every subfolder: one without read permission
    raised PermissionError instead of the missing-path ConfigError (chmod does not stop
    root, so the refusal is simulated)."""
    from pathlib import Path

    import kerastl

    (tmp_path / "net.onnx").write_bytes(b"")
    (tmp_path / "locked").mkdir()
    (tmp_path / "saved_model" / "private").mkdir(parents=True)
    real_is_file, real_iterdir = Path.is_file, Path.iterdir

    def refused(path):
        if path.name in ("locked", "private") or path.parent.name in ("locked", "private"):
            raise PermissionError(13, "Permission denied", str(path))

    def is_file(path):
        refused(path)
        return real_is_file(path)

    def iterdir(path):
        refused(path)
        return real_iterdir(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(kerastl.ConfigError) as info:
        kerastl.load_artifact(tmp_path / "model.onnx")
    msg = str(info.value)
    assert msg.startswith(f"path: nothing at {str(tmp_path / 'model.onnx')!r}.")
    assert f"Artifacts in {str(tmp_path)!r}: net.onnx." in msg
