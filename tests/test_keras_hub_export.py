"""Export of KerasHub text and audio models, validated in their real runtimes.

Text: SavedModel on raw strings (+ ``serving_token_ids``), TFLite/ONNX on token
ids with the tokenizer beside; audio (Whisper): SavedModel on waveforms,
TFLite/ONNX on log-mel features. Tiny random-init models, nothing downloads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_keras_hub import SENTENCES, tiny_kwargs

import kerastl

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_export")
    model = kerastl.build(
        "bert_tiny_en_uncased",
        num_classes=3,
        class_names=["x", "y", "z"],
        **tiny_kwargs("bert_tiny_en_uncased"),
    )
    x = np.array(SENTENCES[:24], dtype=object)
    model.fit(x, np.arange(24) % 3, epochs=1, verbose=0)
    report = kerastl.export(
        model, out, formats=["saved_model", "tflite", "onnx"], validation_data=x
    )
    return model, out, report, x


def test_text_export_passes_parity_in_every_runtime(text_export):
    model, out, report, _ = text_export
    assert report["status"] == "passed"
    kinds = {a["format"]: a for a in report["artifacts"]}
    assert set(kinds) == {"saved_model", "tflite", "onnx"}
    for art in kinds.values():
        assert art["passed"] and art["parity"]["max_rel_err"] < 1e-4
    folder = out / f"{model.name}_tokenizer"
    assert (folder / "vocabulary.txt").read_text().split("\n")[2] == "[CLS]"
    settings = json.loads((folder / "tokenizer_settings.json").read_text())
    assert settings["sequence_length"] == 16 and settings["pad_token_id"] == 0


def test_text_artifacts_accept_raw_strings(text_export):
    model, out, _, x = text_export
    ref = model.predict(x[:5], verbose=0)
    for path in (
        out / "saved_model" / model.name,
        out / f"{model.name}.tflite",
        out / f"{model.name}.onnx",
    ):
        art = kerastl.load_artifact(path)
        got = art.predict(list(x[:5]))
        np.testing.assert_allclose(got["probabilities"], ref, atol=1e-5)
        assert got["labels"] == [["x", "y", "z"][i] for i in ref.argmax(1)]
    tfl = kerastl.load_artifact(out / f"{model.name}.tflite")
    assert tfl.metadata["input"]["name"] == "token_ids"
    assert tfl.metadata["tokenizer"]["class_name"] == "BertTokenizer"
    assert "Flex" not in " ".join(tfl.custom_ops)


def test_keras_artifact_of_a_text_model_accepts_raw_strings(tmp_path):
    """A .keras text model loaded as an artifact takes strings, like its exported files."""
    model = kerastl.build(
        "bert_tiny_en_uncased", num_classes=2, compile=False, **tiny_kwargs("bert_tiny_en_uncased")
    )
    model.save(tmp_path / "text.keras")
    texts = list(SENTENCES[:3])
    got = kerastl.load_artifact(tmp_path / "text.keras").predict(texts)
    ref = model.predict(np.array(texts, dtype=object), verbose=0)
    np.testing.assert_allclose(got["probabilities"], ref, atol=1e-5)


def test_a_tokenizer_folder_that_cannot_be_written_fails_the_export(text_export, tmp_path):
    """The vocabulary beside the TFLite/ONNX files is part of the export: a disk error while
    writing it fails (it was swallowed, leaving the folder with its settings alone)."""
    from kerastl.export.modalities.text import write_tokenizer

    model = text_export[0]
    tok = next(layer.tokenizer for layer in model._flatten_layers() if hasattr(layer, "tokenizer"))

    def full_disk(path):
        raise OSError(28, "No space left on device")

    tok.save_assets, keep = full_disk, tok.save_assets
    try:
        with pytest.raises(OSError, match="No space left"):
            write_tokenizer(model, tmp_path / "tok")
    finally:
        tok.save_assets = keep
    assert "vocabulary.txt" in write_tokenizer(model, tmp_path / "tok")


def test_saved_model_token_id_signature_matches_strings(text_export):
    import tensorflow as tf

    model, out, _, x = text_export
    loaded = tf.saved_model.load(str(next((out / "saved_model" / model.name).iterdir())))
    assert {"serving_default", "serving_token_ids"} <= set(loaded.signatures)
    ids = model.get_layer("preprocess")(tf.constant(list(x[:3])))["token_ids"]
    by_ids = loaded.signatures["serving_token_ids"](token_ids=tf.cast(ids, tf.int32))
    by_text = loaded.signatures["serving_default"](text=tf.constant(list(x[:3])))
    np.testing.assert_allclose(by_ids["probabilities"], by_text["probabilities"], atol=1e-6)


def test_whisper_export_waveform_saved_model_and_log_mel_files(tmp_path):
    from kerastl.export.modalities.audio import AudioExporter

    model = kerastl.build("whisper_tiny_en", num_classes=2, **tiny_kwargs("whisper_tiny_en"))
    waves = AudioExporter(model.kerastl_config).sample_inputs(8)
    report = kerastl.export(
        model, tmp_path, formats=["saved_model", "tflite", "onnx"], validation_data=waves
    )
    assert report["status"] == "passed"
    for art in report["artifacts"]:
        assert art["parity"]["max_rel_err"] < 1e-4, art
    ref = model.predict(waves[:2], verbose=0)
    for path in (
        tmp_path / "saved_model" / model.name,
        tmp_path / f"{model.name}.tflite",
        tmp_path / f"{model.name}.onnx",
    ):
        art = kerastl.load_artifact(path)
        np.testing.assert_allclose(art.predict(waves[:2])["probabilities"], ref, atol=1e-5)
    onnx_art = kerastl.load_artifact(tmp_path / f"{model.name}.onnx")
    assert onnx_art.metadata["input"]["name"] == "log_mel"
    assert onnx_art.metadata["input"]["shape"] == [100, 80]


def test_text_int8_calibrates_on_token_ids(tmp_path):
    """Full-integer TFLite of a text model: calibration feeds int32 token ids, not floats."""
    model = kerastl.build(
        "bert_tiny_en_uncased", num_classes=2, **tiny_kwargs("bert_tiny_en_uncased")
    )
    x = np.array(SENTENCES[:24], dtype=object)
    model.fit(x, np.arange(24) % 2, epochs=2, verbose=0)
    loose = {"min_agreement": 0.0, "max_metric_drop": 1.0, "min_cosine": -1.0, "min_spread": 0.0}
    report = kerastl.export(
        model,
        tmp_path,
        formats=["tflite"],
        quantize=["int8"],
        calibration_data=x,
        validation_data=x,
        tolerances={"tflite/int8": loose},
    )
    (int8,) = [a for a in report["artifacts"] if a["precision"] == "int8"]
    assert int8["passed"], int8["failures"]
    art = kerastl.load_artifact(tmp_path / int8["path"])
    out = art.predict(x[:4])["probabilities"]
    assert out.shape == (4, 2) and np.allclose(out.sum(1), 1, atol=0.05)


def test_text_saved_model_loads_and_predicts_in_a_fresh_process(text_export):
    """The SavedModel's tokenizer ops live in tensorflow_text: a process that has not
    imported it (a fresh ``kerastl predict``) must still load and run the file."""
    import subprocess
    import sys

    model, out, _, x = text_export
    ref = model.predict(x[:2], verbose=0)
    code = (
        "import sys, json, kerastl\n"
        "art = kerastl.load_artifact(sys.argv[1])\n"
        "print(json.dumps(art.predict(sys.argv[2:])['probabilities'].tolist()))\n"
        "assert 'tensorflow_text' in sys.modules\n"
    )
    path = str(out / "saved_model" / model.name)
    res = subprocess.run(
        [sys.executable, "-c", code, path, *map(str, x[:2])], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = np.asarray(json.loads(res.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # without tensorflow-text the error names the op and the package, not a bare traceback
    blocked = "import sys; sys.modules['tensorflow_text'] = None\n" + code
    res = subprocess.run([sys.executable, "-c", blocked, path, "a"], capture_output=True, text=True)
    assert res.returncode == 1
    assert "ExportError" in res.stderr and "'RegexSplitWithOffsets'" in res.stderr
    assert "pip install 'tensorflow-text" in res.stderr
