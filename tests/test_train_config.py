"""Run-config validation: errors point at the key and suggest close matches (no TensorFlow)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from kerastl.errors import ConfigError
from kerastl.train._config import load_config, parse_override, validate_config

BASE = {"model": {"backbone": "mobilenet_v3_small"}, "data": {"path": "imgs"}}


def _with(section: str, **kw):
    cfg = {k: dict(v) for k, v in BASE.items()}
    cfg.setdefault(section, {}).update(kw)
    return cfg


def test_defaults_filled_in():
    cfg = validate_config(BASE)
    assert cfg["train"]["epochs"] == 10
    assert cfg["train"]["strategy"] == "auto"
    assert cfg["model"]["freeze"] == "backbone"
    assert cfg["finetune"]["epochs"] == 0
    assert cfg["export"]["formats"] == []


def test_misspelt_key_names_it_and_suggests():
    with pytest.raises(ConfigError) as e:
        validate_config(_with("train", epoch=3))
    msg = str(e.value)
    assert "'train.epoch'" in msg and "Did you mean 'train.epochs'?" in msg


def test_key_in_wrong_section_says_where_it_belongs():
    with pytest.raises(ConfigError, match=r"unknown key 'model.epochs'.*'train.epochs'"):
        validate_config(_with("model", epochs=3))


def test_bad_choice_lists_valid_choices():
    with pytest.raises(ConfigError) as e:
        validate_config(_with("train", strategy="mirored"))
    msg = str(e.value)
    assert "train.strategy" in msg and "'mirrored'" in msg and "'multi_worker'" in msg


def test_wrong_type_and_bounds():
    with pytest.raises(ConfigError, match=r"train.epochs: expected integer, got str 'ten'"):
        validate_config(_with("train", epochs="ten"))
    with pytest.raises(ConfigError, match=r"train.batch_size: expected >= 1"):
        validate_config(_with("train", batch_size=0))
    with pytest.raises(ConfigError, match=r"train.epochs: expected integer, got bool"):
        validate_config(_with("train", epochs=True))


def test_unknown_backbone_and_missing_keys():
    with pytest.raises(ConfigError, match=r"model.backbone.*mobilenet_v3_small"):
        validate_config({"model": {"backbone": "mobilenet_v3_smal"}, "data": {"path": "x"}})
    with pytest.raises(ConfigError, match=r"missing required key 'model.backbone'"):
        validate_config({"data": {"path": "x"}})
    with pytest.raises(ConfigError, match=r"data.path"):
        validate_config({"model": {"backbone": "resnet50"}})


def test_export_formats_checked_and_split():
    cfg = validate_config(_with("export", formats="saved_model,tflite"))
    assert cfg["export"]["formats"] == ["saved_model", "tflite"]
    with pytest.raises(ConfigError, match=r"export.formats.*'onxx'.*Did you mean 'onnx'"):
        validate_config(_with("export", formats=["onxx"]))


def test_yaml_file_overrides_and_relative_paths(tmp_path):
    (tmp_path / "run.yaml").write_text(
        textwrap.dedent("""
        model: {backbone: resnet50, input_size: 64}
        data: {path: images, augment: light}
        train: {epochs: 4}
    """)
    )
    cfg = load_config(tmp_path / "run.yaml", {"train.epochs": 2, "finetune.epochs": 1})
    assert cfg["name"] == "run"
    assert cfg["train"]["epochs"] == 2 and cfg["finetune"]["epochs"] == 1
    assert cfg["data"]["path"] == str((tmp_path / "images").resolve())
    (tmp_path / "bad.yaml").write_text("model: {backbone: resnet50}\ndata: {path: x}\ntrian: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'trian'. Did you mean 'train'"):
        load_config(tmp_path / "bad.yaml")


def test_parse_override():
    assert parse_override("finetune.layer_decay=0.7") == ("finetune.layer_decay", 0.7)
    assert parse_override("export.formats=[onnx, tflite]") == ("export.formats", ["onnx", "tflite"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_cli_print_config_and_error_exit_without_tensorflow(tmp_path):
    """`kerastl train --print-config` validates without importing TensorFlow; bad keys exit 2."""
    code = textwrap.dedent(f"""
        import sys
        from kerastl.cli import main
        rc = main(["train", "--backbone", "resnet50", "--data", "{tmp_path}", "--epochs", "2",
                   "--print-config"])
        assert rc == 0, rc
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        rc = main(["train", "--backbone", "resnet50", "--data", "{tmp_path}",
                   "--set", "train.epoch=2"])
        assert rc == 2, rc
        assert "tensorflow" not in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "epochs: 2" in out.stdout
    assert "Did you mean 'train.epochs'?" in out.stderr


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    """PyYAML reads 1e-3 (no dot) as a string; number fields take it as the number."""
    (tmp_path / "run.yaml").write_text(
        "model: {backbone: mobilenet_v3_small}\ndata: {path: imgs}\n"
        "train: {learning_rate: 1e-3, weight_decay: 5E-5, epochs: 1e1}\n"
        "finetune: {learning_rate: 1e-4}\n"
    )
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg["train"]["learning_rate"] == 0.001 and cfg["train"]["weight_decay"] == 5e-5
    assert cfg["train"]["epochs"] == 10 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["finetune"]["learning_rate"] == 1e-4
    assert load_config(None, {**_flat(BASE), "train.learning_rate": "2e-3"})["train"][
        "learning_rate"
    ] == pytest.approx(2e-3)
    for key, text in (("train.epochs", "2.5e0"), ("train.learning_rate", "fast")):
        with pytest.raises(ConfigError, match=f"{key}: expected .*{text}"):
            load_config(None, {**_flat(BASE), key: text})
    assert validate_config(_with("data", path="1e3"))["data"]["path"] == "1e3"  # a string field


def _flat(cfg):
    return {f"{s}.{k}": v for s, sub in cfg.items() for k, v in sub.items()}


def test_train_batchnorm_defaults_to_null_meaning_by_weights():
    assert validate_config(BASE)["model"]["train_batchnorm"] is None
    assert validate_config(BASE)["train"]["precise_bn"] == "auto"
    with pytest.raises(ConfigError, match="train.precise_bn: expected auto.*'always'"):
        validate_config(_with("train", precise_bn="always"))
    assert (
        validate_config(_with("model", train_batchnorm=False))["model"]["train_batchnorm"] is False
    )


def test_weights_from_a_model_of_another_backbone_are_a_usage_error(tmp_path, capsys):
    """A .keras model of another backbone given as `--weights` failed after TensorFlow
    loaded, as a WeightsError (exit 1); it is a wrong argument: exit 2 before training,
    naming the argument, the file and both architectures."""
    import kerastl
    from kerastl.cli import main

    saved = tmp_path / "small.keras"
    kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=32, compile=False).save(saved)
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (60 * i, 90, 200 if c == "a" else 20)).save(
                tmp_path / "imgs" / c / f"{i}.png"
            )
    args = ["train", "--backbone", "mobilenet_v3_large", "--weights", str(saved)]
    args += ["--data", str(tmp_path / "imgs"), "--output-dir", str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.weights:" in err and str(saved) in err
    assert "holds a 'mobilenet_v3_small' model" in err and "'mobilenet_v3_large'" in err
    assert not (tmp_path / "runs").exists()  # refused before any run file is written
    cfg = {**BASE, "model": {"backbone": "mobilenet_v3_small", "weights": str(saved)}}
    assert validate_config(cfg)["model"]["weights"] == str(saved)  # its own backbone: fine


def test_a_backbone_and_data_of_different_modalities_are_a_config_error(tmp_path):
    """An image backbone on a text CSV (or a text backbone on an image folder) trained into
    a 49-line TensorFlow traceback ('Cast string to float is not supported', exit 1); it
    is a ConfigError naming model.backbone's modality and data.path's, before any run file."""
    import numpy as np
    from PIL import Image

    from kerastl.cli import main
    from kerastl.train.context import open_run

    (tmp_path / "news.csv").write_text("text,label\nA goal,sport\nRates rose,finance\n")
    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / c / "1.png")
    cases = (
        (
            "efficientnet_lite0",
            "news.csv",
            "'efficientnet_lite0' is an image model, but data.path",
            "holds text (text file",
            "kerastl models --modality text",
        ),
        (
            "all_minilm_l6_v2_en",
            "img",
            "'all_minilm_l6_v2_en' is a text model, but data.path",
            "holds images (image folder",
            "Give text data (a CSV/TSV or JSONL file",
        ),
    )
    for backbone, data, *words in cases:
        cfg = {
            "model": {"backbone": backbone},
            "data": {"path": str(tmp_path / data), "verify": False},
            "train": {"epochs": 1},
            "output_dir": str(tmp_path / "runs"),
        }
        with pytest.raises(ConfigError) as info:
            open_run(cfg, None, None, None)
        assert str(info.value).startswith("model.backbone: ")
        for w in words:
            assert w in str(info.value), str(info.value)
        assert not (tmp_path / "runs").exists()
    yaml_path = tmp_path / "r2.yaml"
    yaml_path.write_text("model: {backbone: efficientnet_lite0}\ndata: {path: news.csv}\n")
    assert main(["train", str(yaml_path)]) == 2


def test_an_audio_backbone_in_a_run_config_says_to_use_the_python_api():
    """`kerastl train` with an audio backbone and a .npz of waveforms failed reading the data
    ('x: expected images of shape (N, H, W) ... got shape (24, 16000)'); run configs have no
    audio source, so the config check says so and how to train audio instead."""
    cfg = {"model": {"backbone": "moonshine_tiny_en"}, "data": {"path": "tones.npz"}}
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, "a.yaml")
    text = str(info.value)
    assert text.startswith("a.yaml: model.backbone: 'moonshine_tiny_en' is an audio model")
    assert "take image and text backbones only" in text
    assert "model.fit(waveforms, labels)" in text and "kerastl models --modality" in text


def test_a_run_name_the_exported_files_cannot_take_is_refused_before_training(tmp_path):
    """'exp ü 1' is a fine folder but no TF Serving model or file name: said at load, with
    the way out, not after training when the export starts."""
    from kerastl.train.context import resolve_config

    run = tmp_path / "run.yaml"
    run.write_text("model: {backbone: mobilenet_v3_small}\ndata: {path: d}\n"
                   "export: {formats: [tflite]}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"name: 'exp ü 1' names the exported files"):
        load_config(run, {"name": "exp ü 1"})
    assert load_config(run, {"name": "exp ü 1", "export.name": "exp1"})["name"] == "exp ü 1"
    assert load_config(run, {"name": "exp ü 1", "export.formats": []})["name"] == "exp ü 1"
    with pytest.raises(ConfigError, match=r"export.name: 'a/b'"):
        load_config(run, {"export.name": "a/b"})
    cfg = {"name": "bad name", "model": {"backbone": "mobilenet_v3_small"},
           "data": {"path": "d"}, "export": {"formats": ["onnx"]}}  # fmt: skip
    with pytest.raises(ConfigError, match="'bad name' names the exported files"):
        resolve_config(cfg, None, None)  # kerastl.train(dict): the same check
    res = subprocess.run(
        [sys.executable, "-m", "kerastl", "train", str(run), "--name", "exp ü 1", "--print-config"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2 and "names the exported files" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "kerastl", "train", str(run), "--name", "exp ü 1", "--folds", "2",
         "--print-config"], capture_output=True, text=True,
    )  # fmt: skip
    assert "names the exported files" not in res.stderr  # folds never export: the name is fine
    assert "data.path: no file or folder" in res.stderr  # what is left to refuse


def test_an_input_size_the_backbone_refuses_writes_no_run_folder(tmp_path, capsys):
    """A ViT at 40 px (not a multiple of its 16-px patches) was refused only when built,
    after config.yaml and state/ were written; now it is refused before the run folder."""
    import numpy as np

    from kerastl.cli import main

    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 40, 40, 3), "uint8"), y=np.arange(4) % 2)
    args = ["train", "--backbone", "vit_base_patch16_224_imagenet", "--data", str(data)]
    args += ["--input-size", "40", "--freeze", "none", "--output-dir", str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "input_shape:" in err and "multiples of 16" in err and "(40, 40, 3)" in err, err
    assert not (tmp_path / "runs").exists()
    from kerastl.train.context import check_input_shape

    m = {"backbone": "efficientnet_lite0", "input_size": 64, "channels": 3}
    check_input_shape({**m, "options": {"pretrained_head": True}})  # build()'s own: not refused
    with pytest.raises(ConfigError, match="sequence_lenght"):  # the backbone's own are checked
        check_input_shape({**m, "backbone": "all_minilm_l6_v2_en", "input_size": None,
                           "options": {"sequence_lenght": 8}})  # fmt: skip


def test_tfds_val_path_is_refused_pointing_to_val_tfds_split():
    """TFDS reads no paths: data.val_path re-read data.split ('train'), so validation,
    the best checkpoint and the export checks ran on the training data."""
    cfg = {
        "model": {"backbone": "mobilenet_v3_small"},
        "data": {"source": "tfds", "name": "mydata", "val_path": "test"},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    text = str(info.value)
    assert "data.val_path: got 'test'" in text and "data.val_tfds_split" in text
    cfg["data"] = {"source": "tfds", "name": "mydata", "val_tfds_split": "test"}
    assert validate_config(cfg)["data"]["val_tfds_split"] == "test"


def test_a_monitor_the_task_does_not_log_is_refused_with_its_metrics():
    """Keras logs 'val_accuracy': monitor 'val_acc' found no value in any epoch, so the
    best checkpoint kept the last epoch's weights while the card said 'best'."""
    with pytest.raises(ConfigError) as info:
        validate_config(_with("train", monitor="val_acc"))
    text = str(info.value)
    assert "train.monitor" in text and "'val_acc'" in text
    assert "Did you mean 'val_accuracy'?" in text and "'val_loss'" in text
    with pytest.raises(ConfigError, match=r"train.monitor.*'val_rmse'.*'regression'"):
        validate_config({**_with("model", task="regression"), "train": {"monitor": "val_auc"}})
    for monitor in ("val_accuracy", "loss", "val_top5"):
        assert validate_config(_with("train", monitor=monitor))["train"]["monitor"] == monitor


def test_keras_is_no_export_format_every_run_writes_model_keras(capsys):
    """'keras' passed validation, but the export step writes saved_model, tflite and onnx
    only: the run trained fully, then failed at export."""
    from kerastl.cli import main

    with pytest.raises(ConfigError) as info:
        validate_config(_with("export", formats=["onnx", "keras"]))
    text = str(info.value)
    assert "export.formats: 'keras'" in text and "model.keras" in text
    assert "'saved_model', 'tflite', 'onnx'" in text
    args = ["train", "--backbone", "mobilenet_v3_small", "--data", "d", "--print-config"]
    assert main(args + ["--formats", "coreml"]) == 2
    err = capsys.readouterr().err
    assert "unknown format 'coreml'" in err and "'keras'" not in err  # as --help lists them


def test_augment_for_a_text_backbone_is_refused_not_ignored():
    """The pipeline augments images only: data.augment on text data was dropped while the
    model card reported it."""
    text = {"model": {"backbone": "all_minilm_l6_v2_en"}, "data": {"path": "news.csv"}}
    with pytest.raises(ConfigError) as info:
        validate_config({**text, "data": {"path": "news.csv", "augment": "light"}})
    msg = str(info.value)
    assert "data.augment: got 'light'" in msg and "'all_minilm_l6_v2_en' is a text model" in msg
    assert "images only" in msg
    for off in ("none", None, False, []):
        validate_config({**text, "data": {"path": "news.csv", "augment": off}})
    assert validate_config(_with("data", augment=["flip"]))["data"]["augment"] == ["flip"]


def test_set_with_broken_yaml_and_negative_patience_are_one_line_errors():
    """`--set 'data.class_names=[a,b'` gave a yaml.parser traceback (exit 1), and
    train.early_stopping: -1 was accepted (and acted as 1)."""
    from kerastl.cli import main

    with pytest.raises(ConfigError, match=r"^--set data.class_names: '\[a,b' is not a YAML"):
        load_config(None, dict([parse_override("data.class_names=[a,b")]))
    with pytest.raises(ConfigError, match=r"train.early_stopping: expected >= 0, got -1"):
        load_config(None, {"model.backbone": "resnet50", "data.path": "x",
                           "train.early_stopping": -1})  # fmt: skip
    args = ["train", "--backbone", "resnet50", "--data", "x", "--print-config"]
    assert main([*args, "--set", "data.class_names=[a,b"]) == 2


@pytest.mark.parametrize(
    "tf_config, says",
    [
        ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}', "needs this process's 'task'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 5}}',
         "task index 5 is not a 'worker' of the cluster (indices 0..0)"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "boss", "index": 0}}',
         "task type 'boss' is not in the cluster; valid: ['worker']"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": "x"}}',
         "task index 'x' is not a 'worker'"),
        ('["worker"]', "expected a JSON object like"),
    ],
)  # fmt: skip
def test_a_tf_config_tensorflow_cannot_use_is_a_one_line_error(monkeypatch, tf_config, says):
    """These raised ValueError tracebacks from TensorFlow (exit 1)."""
    from kerastl.train._strategy import get_strategy

    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match="^TF_CONFIG: ") as info:
        get_strategy("multi_worker")
    assert says in str(info.value)
