"""Registry-driven tests: every entry builds, predicts and matches its declared data; the
smallest entry of each builder module trains a step and reloads (every entry: ``-m slow``).

Parametrised over ``list_models()``, so a new entry is covered with no edit here.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kerastl
from kerastl.zoo import all_specs, get_spec, list_models

KERAS_APP_NAMES = list_models(source="keras.applications")
# Entries whose one-step fit + save/reload costs more than ~20 s here: their
# build and metadata checks stay in the default run, the fit/save tier is opt-in.
LARGE = {s.name for s in all_specs() if s.params > 80_000_000}
#: Entries whose fit + save + reload took over 60 s in a full run here (pytest --durations,
#: two workers): they are built and run in CI with LARGE, and fitted in the slow tier.
SLOW_FIT = LARGE | {
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_m", "densenet169", "densenet201",
}  # fmt: skip


def _builder_module(name: str) -> str:
    """The module whose code builds the entry: siblings in it share every block."""
    import keras

    ctor = get_spec(name).constructor
    return getattr(getattr(keras.applications, ctor, None), "__module__", "kerastl.native")


def _graph_fit_entries() -> set[str]:
    """The smallest entry of each builder module: it runs in a compiled graph, as users run it.

    Its siblings (ResNet-101 and -152 beside ResNet-50, EfficientNet-B1..B3 beside B0)
    run the same block code with more or wider blocks. They run eagerly, which exercises
    the same layers, gradients, save and reload at a third of the time: tracing a
    500-layer training step costs more than the step.
    """
    smallest: dict[str, str] = {}
    for name in KERAS_APP_NAMES:
        module = _builder_module(name)
        if module not in smallest or get_spec(name).params < get_spec(smallest[module]).params:
            smallest[module] = name
    return set(smallest.values())


GRAPH_FIT = _graph_fit_entries()
#: Entries fitted, saved and reloaded in the default run: the smallest of each builder module.
#: Their siblings (same block code, more or wider blocks) build and predict there and are
#: fitted in the slow tier (`-m slow`), with SLOW_FIT.
DEFAULT_FIT = GRAPH_FIT - SLOW_FIT


def _nearest_stride(size: int, h: int) -> int:
    return min((1, 2, 4, 8, 16, 32, 64), key=lambda s: abs(s - size / h))


def test_all_40_keras_applications_registered():
    import keras

    constructors = {n for n in dir(keras.applications) if n[0].isupper()}
    assert len(constructors) == 40
    registered = {get_spec(n).constructor for n in KERAS_APP_NAMES}
    # EfficientNet-Lite sits beside them: built by kerastl (keras.applications has none).
    from kerastl.zoo.sources.native import LITE_VARIANTS

    assert registered == constructors | set(LITE_VARIANTS)
    # The Keras class name resolves to the snake-case entry.
    for ctor in constructors:
        spec = get_spec(ctor)
        assert spec.constructor == ctor
        assert spec.name == spec.name.lower()


@pytest.mark.parametrize("name", KERAS_APP_NAMES)
def test_entry_declares_what_the_built_backbone_has(name):
    """Feature dim, params, groups and taps agree with a freshly built backbone."""
    from kerastl.zoo import get_adapter

    spec = get_spec(name)
    adapter = get_adapter(spec)
    # valid-padding nets (min input > 32) shrink unevenly: check them at their usual size
    size = 64 if spec.min_input_size <= 32 else 224
    backbone = adapter.backbone((size, size, 3), None)
    assert backbone.output.shape[-1] == spec.feature_dim
    assert backbone.count_params() == spec.params

    # Anchors must be names Keras did not generate: those change with the session's counters.
    import re

    import keras
    from keras.src.utils.naming import to_snake_case

    auto = {to_snake_case(n) for n in dir(keras.layers) if n[:1].isupper()} | {"input_layer"}
    for anchor in [a for _, a in spec.groups] + [t.layer for t in spec.taps]:
        base = re.fullmatch(r"(.*?)(_\d+)?", anchor).group(1)
        assert base not in auto, f"{anchor!r} is an auto-generated layer name"

    groups = adapter.layer_groups(backbone)
    assert list(groups) == spec.group_names
    members = [layer for layers in groups.values() for layer in layers]
    assert len(members) == len(backbone.layers) == len({id(m) for m in members})
    for gname, layers in groups.items():
        assert any(layer.weights for layer in layers), f"group {gname} has no weights"

    assert spec.taps, "every image entry declares multi-scale taps"
    strides = [t.stride for t in spec.taps]
    assert strides == sorted(strides) and strides[-1] == 32
    for tap in spec.taps:
        out = backbone.output if tap.layer == "@output" else backbone.get_layer(tap.layer).output
        assert out.shape[-1] == tap.channels, tap
        assert _nearest_stride(size, out.shape[1]) == tap.stride, (tap, out.shape)


def _build_and_predict(name: str, num_classes: int, **kwargs):
    spec = get_spec(name)
    s = spec.min_input_size
    model = kerastl.build(
        name, num_classes=num_classes, input_shape=(s, s, 3), weights=None, **kwargs
    )
    model.run_eagerly = name not in GRAPH_FIT
    x = np.random.default_rng(0).uniform(0, 255, (2, s, s, 3)).astype("float32")
    # called eagerly: the reloaded model's predict() below traces the inference graph once
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (2, num_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.kerastl_config["backbone"] == name
    return model, x


@pytest.mark.parametrize("name", sorted(set(KERAS_APP_NAMES) - DEFAULT_FIT))
def test_entry_builds_at_minimum_input_and_runs(name):
    """Entries not fitted in the default run build and predict here; the fit/reload tier
    below is opt-in for them."""
    _build_and_predict(name, num_classes=3)


@pytest.mark.heavy
@pytest.mark.parametrize(
    "name",
    [n if n in DEFAULT_FIT else pytest.param(n, marks=pytest.mark.slow) for n in KERAS_APP_NAMES],
)
def test_entry_builds_fits_one_step_and_reloads(name, tmp_path):
    """One build per entry: predict, one training step, save, reload, same predictions."""
    model, x = _build_and_predict(name, num_classes=2, freeze="last:1")
    y = np.array([0, 1])
    hist = model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = kerastl.load_model(path)
    assert loaded.kerastl_config == model.kerastl_config
    # the reloaded model through predict(): one inference graph traced per entry (fit()
    # traces the training graph only)
    loaded.run_eagerly = model.run_eagerly
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0),
        np.asarray(model(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_list_models_filters_and_wildcards():
    assert list_models("mobilenet_v3*", source="keras.applications") == [
        "mobilenet_v3_large",
        "mobilenet_v3_small",
    ]
    hub = list_models("mobilenet_v3*", source="keras_hub")
    assert hub and all(n.startswith("mobilenet_v3_") for n in hub)
    assert list_models("mobilenet_v3*") == sorted(
        ["mobilenet_v3_large", "mobilenet_v3_small", *hub]
    )
    assert list_models("RESNET50") == ["resnet50"]
    image = list_models(modality="image")
    assert set(KERAS_APP_NAMES) <= set(image)
    assert list_models("*", source="keras.applications", pretrained="imagenet") == KERAS_APP_NAMES
    assert list_models("no_such_*") == []
    with pytest.raises(kerastl.UnknownNameError, match="modality='imgae'.*Did you mean 'image'"):
        list_models(modality="imgae")


def test_unknown_model_suggests_close_matches():
    with pytest.raises(kerastl.UnknownNameError) as err:
        get_spec("resnet5")
    msg = str(err.value)
    assert "Unknown model 'resnet5'" in msg
    assert "Did you mean 'resnet50'" in msg
    with pytest.raises(kerastl.UnknownNameError, match="Did you mean 'efficientnet_b0'"):
        kerastl.build("efficentnet_b0", num_classes=2)
    # three distinct models, though aliases of the first two match the typo too
    with pytest.raises(kerastl.UnknownNameError) as err:
        get_spec("efficientnet_lit0")
    assert all(f"'efficientnet_lite{i}'" in str(err.value) for i in range(3)), err.value


def test_model_info_is_json_ready():
    import json

    info = kerastl.model_info("ResNet50")
    assert info["name"] == "resnet50"
    assert info["feature_dim"] == 2048
    assert info["preprocessing"] == "caffe"
    assert [g[0] for g in info["groups"]] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    json.dumps(info)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys, time; t = time.perf_counter(); from kerastl.cli import main; rc = main("
        + repr(list(args))
        + "); print('TF_IMPORTED', 'tensorflow' in sys.modules, 'keras' in sys.modules);"
        "print('SECONDS', time.perf_counter() - t); sys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_cli_models_and_info_do_not_import_tensorflow():
    res = _run_cli("models", "resnet*")
    assert res.returncode == 0, res.stderr
    assert "resnet152_v2" in res.stdout
    assert "TF_IMPORTED False False" in res.stdout
    res = _run_cli("info", "mobilenet_v3_small")
    assert res.returncode == 0
    assert "in_model" in res.stdout and "TF_IMPORTED False False" in res.stdout


def test_cli_info_numbers_the_taps_rank_names(capsys):
    """``NAME:tapK`` counts taps from 0: info numbers them; a text encoder's are its layers."""
    from kerastl.cli import main

    assert main(["info", "all_minilm_l6_v2_en"]) == 0
    taps = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("taps"))
    assert "0: transformer_layer_0 (384-d)" in taps and "5: transformer_layer_5" in taps, taps
    assert main(["info", "efficientnet_lite0"]) == 0
    assert "3: block5c_add (112ch, /16)" in capsys.readouterr().out
    assert main(["info", "albert_base_en_uncased"]) == 0
    assert "taps            none" in capsys.readouterr().out


def test_cli_unknown_model_exits_2_with_one_line():
    res = _run_cli("info", "resnet5")
    assert res.returncode == 2
    assert "Did you mean 'resnet50'" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_help_is_tensorflow_free():
    res = subprocess.run(
        [sys.executable, "-m", "kerastl.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    assert "models" in res.stdout and "export" in res.stdout
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from kerastl.cli import build_parser; build_parser();"
            "print('tensorflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.stdout.strip() == "False"


def test_every_image_entry_minimum_size_is_a_legal_size():
    """An entry's smallest input is a multiple of its patch (and window) size: ViT-H's
    patches are 14 px, so 32 px could not build; its minimum is 42."""
    from kerastl.zoo._keras_hub_family import side_multiple

    hub_images = [
        s for s in map(get_spec, list_models()) if s.modality == "image" and s.source == "keras_hub"
    ]
    assert len(hub_images) > 50
    for spec in hub_images:
        step = side_multiple(spec.extra.get("config") or {})
        assert spec.min_input_size % step == 0, (spec.name, spec.min_input_size, step)
    assert get_spec("vit_huge_patch14_224_imagenet21k").min_input_size == 42
    assert get_spec("swin_base_patch4_window7_224").min_input_size == 224  # 4 x 7 x 2**3


def test_unknown_model_suggests_names_that_start_with_or_contain_the_query():
    """`kerastl info bert`: the ten bert_* names, not only close spellings."""
    with pytest.raises(kerastl.UnknownNameError) as err:
        get_spec("bert")
    msg = str(err.value)
    bert = list_models("bert*")
    assert len(bert) == 10
    assert all(repr(n) in msg for n in bert), msg
    assert "Unknown model 'bert' (argument 'name')" in msg
    with pytest.raises(kerastl.UnknownNameError, match="'all_minilm_l6_v2_en'"):
        get_spec("minilm_l6")  # contained, not a prefix
    res = _run_cli("info", "bert")
    assert res.returncode == 2 and "'bert_base_en'" in res.stderr


def test_cli_models_unknown_weight_tag_suggests_the_valid_tag():
    """An unknown tag is bad input: exit 2 and the one-line `kerastl models: error:` form of
    the other usage errors (it printed the bare message and exited 1)."""
    res = _run_cli("models", "--pretrained", "imagenett")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(
        "kerastl models: error: Unknown weight tag --pretrained 'imagenett'. "
        "Did you mean 'imagenet'?"
    )
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Valid tags: 'imagenet'" in res.stderr
    assert "'*'" not in res.stderr and "TF_IMPORTED False False" in res.stdout
    res = _run_cli("models", "--modality", "audio", "--pretrained", "imagenet")
    assert res.returncode == 1
    assert "No model matches --modality audio --pretrained imagenet." in res.stderr
    assert "'*'" not in res.stderr
