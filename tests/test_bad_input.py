"""The bad-input table: CLI, YAML config, Python API and data.

Each row is one case. CLI rows run ``kerastl.cli.main`` in process and check
the exit code (2 usage error, 1 failure), that stderr is one clear line with
no traceback, and that nothing already on disk changed. The same table, with
what each case produced, is in docs/bad_input.md.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kerastl
from kerastl.cli import main

SIZE = 32


def _png16(path: Path, size=SIZE) -> None:
    """A 16-bit grayscale PNG written by hand (PIL writes I;16 too, but be explicit)."""
    raw = b"".join(b"\x00" + struct.pack(">" + "H" * size, *([40000] * size)) for _ in range(size))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", size, size, 16, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _folder(root: Path, classes=("cat", "dog"), n=6, size=SIZE) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.jpg")
    return root


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def workspace(tmp_path):
    data = _folder(tmp_path / "data")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "model.keras").write_bytes(b"precious")
    (keep / "notes.txt").write_text("do not touch")
    return tmp_path, data, keep


def _yaml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


BASE = """
model: {{backbone: mobilenet_v3_small, input_size: 32}}
data: {{path: {data}}}
train: {{epochs: 1, batch_size: 4}}
output_dir: {out}
"""


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# (case id, argv builder, expected exit code, regex the one-line error must match)
CLI_CASES = [
    ("unknown-model-info", lambda t, d: ["info", "resnet5"], 2, r"Did you mean 'resnet50'"),
    (
        "bad-modality-flag",
        lambda t, d: ["models", "--modality", "imgae"],
        2,
        r"invalid choice: 'imgae'",
    ),
    ("yaml-missing-file", lambda t, d: ["train", t / "nope.yaml"], 2, r"nope\.yaml"),
    ("yaml-not-a-mapping", lambda t, d: ["train", _yaml(t, "- a\n- b\n")], 2, r"mapping"),
    ("yaml-syntax-error", lambda t, d: ["train", _yaml(t, "model: {backbone: [\n")], 2, r"YAML"),
    (
        "yaml-misspelled-key",
        lambda t, d: ["train", _yaml(t, BASE.format(data=d, out=t / "runs") + "modle: {}\n")],
        2,
        r"modle.*Did you mean 'model'",
    ),
    (
        "yaml-misspelled-nested-key",
        lambda t, d: [
            "train",
            _yaml(t, BASE.format(data=d, out=t / "runs").replace("epochs", "epocs")),
        ],
        2,
        r"train\.epocs.*Did you mean 'train\.epochs'",
    ),
    (
        "yaml-unknown-backbone",
        lambda t, d: [
            "train",
            _yaml(
                t,
                BASE.format(data=d, out=t / "runs").replace(
                    "mobilenet_v3_small", "mobilenet_v3_smal"
                ),
            ),
        ],
        2,
        r"Did you mean 'mobilenet_v3_small'",
    ),
    (
        "yaml-bad-task",
        lambda t, d: [
            "train",
            _yaml(
                t,
                BASE.format(data=d, out=t / "runs").replace(
                    "input_size: 32", "input_size: 32, task: clasification"
                ),
            ),
        ],
        2,
        r"clasification.*classification",
    ),
    (
        "yaml-wrong-type",
        lambda t, d: [
            "train",
            _yaml(
                t, BASE.format(data=d, out=t / "runs").replace("batch_size: 4", "batch_size: big")
            ),
        ],
        2,
        r"train\.batch_size.*big",
    ),
    (
        "yaml-negative-epochs",
        lambda t, d: [
            "train",
            _yaml(t, BASE.format(data=d, out=t / "runs").replace("epochs: 1", "epochs: -1")),
        ],
        2,
        r"train\.epochs.*-1",
    ),
    (
        "yaml-zero-batch",
        lambda t, d: [
            "train",
            _yaml(t, BASE.format(data=d, out=t / "runs").replace("batch_size: 4", "batch_size: 0")),
        ],
        2,
        r"train\.batch_size.*0",
    ),
    (
        "yaml-bad-strategy",
        lambda t, d: [
            "train",
            _yaml(
                t,
                BASE.format(data=d, out=t / "runs").replace(
                    "batch_size: 4", "batch_size: 4, strategy: mirorred"
                ),
            ),
        ],
        2,
        r"mirorred.*mirrored",
    ),
    (
        "yaml-input-too-small",
        lambda t, d: [
            "train",
            _yaml(
                t, BASE.format(data=d, out=t / "runs").replace("input_size: 32", "input_size: 8")
            ),
        ],
        2,
        r"8.*minimum",
    ),
    (
        "flag-negative-val-split",
        lambda t, d: [
            "train",
            "--backbone",
            "mobilenet_v3_small",
            "--data",
            d,
            "--val-split",
            "-0.5",
            "--output-dir",
            t / "runs",
        ],
        2,
        r"val_split.*-0\.5",
    ),
    (
        "data-folder-missing",
        lambda t, d: [
            "train",
            "--backbone",
            "mobilenet_v3_small",
            "--data",
            t / "missing",
            "--output-dir",
            t / "runs",
        ],
        2,
        r"missing",
    ),
    (
        "data-folder-no-images",
        lambda t, d: [
            "train",
            "--backbone",
            "mobilenet_v3_small",
            "--data",
            _empty_classes(t),
            "--output-dir",
            t / "runs",
        ],
        2,
        r"[Nn]o images|empty",
    ),
    (
        "data-single-class",
        lambda t, d: [
            "train",
            "--backbone",
            "mobilenet_v3_small",
            "--data",
            _folder(t / "one", classes=("only",)),
            "--output-dir",
            t / "runs",
        ],
        2,
        r"one class|single class|only",
    ),
    (
        "export-missing-model",
        lambda t, d: ["export", t / "none.keras", "--out", t / "exp"],
        2,
        r"none\.keras",
    ),
    (
        "export-wrong-extension",
        lambda t, d: ["export", _touch(t / "model.txt"), "--out", t / "exp"],
        2,
        r"\.keras",
    ),
    (
        "export-unknown-format",
        lambda t, d: [
            "export",
            t / "keep" / "model.keras",
            "--formats",
            "onnx,pdf",
            "--out",
            t / "exp",
        ],
        2,
        r"pdf.*(onnx|saved_model|tflite)",
    ),
    (
        "export-unknown-quantize-named-as-the-flag",
        lambda t, d: [
            "export",
            t / "keep" / "model.keras",
            "--formats",
            "tflite,",
            "--quantize",
            "int4",
            "--out",
            t / "exp",
        ],
        2,
        r"--quantize.*int4.*(float16|dynamic|int8)",
    ),
    (
        "predict-wrong-extension",
        lambda t, d: ["predict", _touch(t / "model.pdf"), d / "cat" / "0.jpg"],
        2,
        r"model\.pdf",
    ),
    ("evaluate-missing-run", lambda t, d: ["evaluate", t / "no_run"], 2, r"no_run"),
    (
        "train-folds-one",
        lambda t, d: [
            "train",
            "--backbone",
            "mobilenet_v3_small",
            "--data",
            d,
            "--folds",
            "1",
            "--output-dir",
            t / "runs",
        ],
        2,
        r"folds.*1",
    ),
    (
        "corrupt-keras-file",
        lambda t, d: ["export", t / "keep" / "model.keras", "--out", t / "exp"],
        1,
        r"model\.keras",
    ),
]


def _touch(p: Path) -> Path:
    p.write_text("x")
    return p


def _empty_classes(t: Path) -> Path:
    for c in ("a", "b"):
        (t / "empty" / c).mkdir(parents=True, exist_ok=True)
    return t / "empty"


@pytest.mark.parametrize("case, argv, code, pattern", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, argv, code, pattern, workspace, capsys):
    import re

    tmp, data, keep = workspace
    before = _tree_digest(keep), _tree_digest(data)
    got, out, err = run_cli(capsys, *argv(tmp, data))
    assert got == code, (case, out, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.search(pattern, last), (case, err)
    if code == 2 and not case.startswith("bad-modality"):
        assert len(err.strip().splitlines()) == 1, err
    assert (_tree_digest(keep), _tree_digest(data)) == before, "nothing on disk may change"
    assert not (tmp / "exp").exists() or not any((tmp / "exp").rglob("*.onnx"))


# ---------------------------------------------------------------- data (API) --
def test_mixed_sizes_and_modes_are_read_as_rgb(tmp_path):
    from kerastl import data as kdata

    root = _folder(tmp_path / "mixed", n=3)
    Image.new("L", (20, 50), 128).save(root / "cat" / "gray.png")
    Image.new("RGBA", (64, 40), (10, 20, 30, 128)).save(root / "cat" / "rgba.png")
    Image.new("CMYK", (48, 48), (0, 50, 100, 0)).save(root / "dog" / "cmyk.jpg")
    _png16(root / "dog" / "deep.png")
    ex = kdata.from_image_folder(root)
    ex = kdata.verify_images(ex)
    assert len(ex) == 10
    ds = kdata.make_dataset(ex, image_size=(SIZE, SIZE), batch_size=10, shuffle=False)
    x, y = next(iter(ds))
    assert tuple(x.shape) == (10, SIZE, SIZE, 3)
    x = np.asarray(x)
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255


def test_truncated_and_fake_images_are_reported_and_skipped(tmp_path):
    from kerastl import data as kdata

    root = _folder(tmp_path / "d", n=4)
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "dog" / "fake.jpg").write_text("this is not an image")
    ex = kdata.verify_images(kdata.from_image_folder(root))
    assert len(ex) == 8
    report = " ".join(f"{path} {why}" for path, why in ex.skipped)
    assert "truncated.jpg" in report and "fake.jpg" in report


def test_non_utf8_text_is_a_clear_error(tmp_path):
    from kerastl import data as kdata

    p = tmp_path / "t.csv"
    p.write_bytes("text,label\ncaf\xe9 ok,a\nbad,b\n".encode("latin-1"))
    with pytest.raises(kerastl.DataError, match="UTF-8"):
        kdata.from_text(p)


def test_unseen_labels_are_a_clear_error(tmp_path):
    from kerastl import data as kdata

    p = tmp_path / "l.csv"
    _folder(tmp_path / "img", n=2)
    rows = ["path,label"] + [f"{tmp_path}/img/cat/{i}.jpg,cat" for i in range(2)]
    rows += [f"{tmp_path}/img/dog/0.jpg,wolf"]
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(kerastl.DataError, match="wolf"):
        kdata.from_csv(p, class_names=["cat", "dog"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_regression_targets_are_refused(bad):
    from kerastl import data as kdata

    x = np.zeros((4, SIZE, SIZE, 3), "float32")
    y = np.array([0.1, 0.2, bad, 0.3], "float32")
    with pytest.raises(kerastl.DataError, match="NaN|nan|inf"):
        kdata.from_numpy(x, y, task="regression")


def test_labels_that_do_not_match_the_head(tmp_path):
    from kerastl import data as kdata

    ex = kdata.from_image_folder(_folder(tmp_path / "d", classes=("a", "b", "c"), n=2))
    with pytest.raises(kerastl.DataError, match="3"):
        kdata.check_head(ex, num_outputs=2, task="classification")


def test_model_file_from_a_different_architecture(tmp_path):
    src = kerastl.build("mobilenet_v3_small", num_classes=2, input_shape=(SIZE, SIZE, 3))
    src.save(tmp_path / "other.keras")
    with pytest.raises(kerastl.WeightsError, match="mobilenet_v3_small"):
        kerastl.build(
            "efficientnet_b0",
            num_classes=2,
            input_shape=(SIZE, SIZE, 3),
            weights=tmp_path / "other.keras",
        )


def test_table_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "bad_input.md").read_text()
    for case, *_ in CLI_CASES:
        assert f"`{case}`" in doc, case
    assert json  # the table lists API and data cases too


# ------------------------------------------ kerastl export: refused before TensorFlow --
# (argv after "export", regex the one-line error must match); files come from _export_files.
EXPORT_FLAG_CASES = [
    (["{h5}"], r"model: expected a \.keras file.*legacy Keras HDF5.*\.save\('model\.keras'\)"),
    (["{model}", "--output-dir", "{afile}/sub"], r"--output-dir: .*afile/sub.*a file"),
    (["{model}", "--output-dir", "{afile}"], r"--output-dir: .*afile.* is a file"),
    (["{model}", "--formats", "tflite", "--quantize", "int8"], r"--quantize int8 needs --cal"),
    (["{model}", "--formats", "onnx", "--quantize", "float16"], r"--quantize.*tflite.*--formats"),
    (["{model}", "--opset", "11"], r"--opset: .*11.*13\.\.18"),
    (["{model}", "--formats", "tflite", "--opset", "17"], r"--opset 17 applies to onnx"),
    (["{model}", "--formats", "tflite", "--version", "2"], r"--version 2 applies to saved_model"),
    (["{model}", "--version", "0"], r"--version: expected a positive integer, got 0"),
    (["{model}", "--name", "a b"], r"--name: 'a b' is not usable"),
    (["{model}", "--int8-io", "uint8"], r"--int8-io uint8 .*int8 to --quantize"),
    (["{model}", "--formats", "onnx", "--allow-flex"], r"--allow-flex applies to tflite"),
    (["{model}", "--validation-data", "{obj}"], r"--validation-data: .*obj\.npy.*pickle"),
    (["{model}", "--calibration-data", "{obj}", "--quantize", "int8"], r"--calibration-data: "),
    (["{model}", "--quantize", "int4"], r"Valid choices: 'dynamic', 'float16', 'int8'\.$"),
]


def test_export_flag_errors_come_before_tensorflow_is_imported(tmp_path):
    """Each bad flag (or file) is one line naming it, exit 2, before TensorFlow's ~10 s import."""
    import re
    import subprocess
    import sys

    model = tmp_path / "model.keras"
    model.write_bytes(b"never loaded: every check fails before")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "model.h5").write_bytes(b"x")
    files = {"model": model, "obj": tmp_path / "obj.npy", "afile": tmp_path / "afile"}
    files["h5"] = tmp_path / "model.h5"
    runs = [["export"] + [a.format(**files) for a in argv] for argv, _ in EXPORT_FLAG_CASES]
    code = (
        "import sys\nfrom kerastl.cli import main\n"
        f"for argv in {runs!r}:\n"
        "    print('RC', main(argv), file=sys.stderr, flush=True)\n"
        "print('TF_IMPORTED', 'tensorflow' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TF_IMPORTED False" in res.stdout, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 * len(EXPORT_FLAG_CASES), res.stderr
    for i, (argv, pattern) in enumerate(EXPORT_FLAG_CASES):
        message, rc = lines[2 * i], lines[2 * i + 1]
        assert rc == "RC 2", (argv, message, rc)
        assert message.startswith("kerastl export: error: "), (argv, message)
        assert re.search(pattern, message), (argv, message)
    assert not (tmp_path / "afile" / "sub").exists()


def test_export_quantize_help_and_error_list_the_same_choices(tmp_path, capsys):
    """``--help`` and the error of a wrong ``--quantize`` name the same precisions."""
    from kerastl.cli.export import QUANTIZE_CHOICES
    from kerastl.export.formats.tflite import QUANTIZATIONS

    assert set(QUANTIZE_CHOICES) == set(QUANTIZATIONS) - {"float32"}
    code, out, _ = run_cli(capsys, "export", "--help")
    assert code == 0
    helptext = " ".join(out.split())
    assert "from: " + ", ".join(QUANTIZE_CHOICES) + " (the float32 file is always written)" in (
        helptext
    )
    (tmp_path / "m.keras").write_bytes(b"x")
    code, _, err = run_cli(capsys, "export", tmp_path / "m.keras", "--quantize", "int4")
    assert code == 2 and "float32" not in err
    assert all(f"'{q}'" in err for q in QUANTIZE_CHOICES), err
