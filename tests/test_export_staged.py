"""Multi-part exports (text: SavedModel on strings + TFLite/ONNX on token ids and the tokenizer
folder) are staged, validated and published as one unit: failing the second part leaves
nothing of the new version visible, and a passing rerun takes the next version."""

from __future__ import annotations

import numpy as np
import pytest
from test_keras_hub import SENTENCES, tiny_kwargs

import kerastl

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def text_model():
    return kerastl.build(
        "bert_tiny_en_uncased",
        num_classes=2,
        class_names=["a", "b"],
        **tiny_kwargs("bert_tiny_en_uncased"),
    )


def _visible(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_failing_second_part_publishes_nothing(text_model, tmp_path, monkeypatch):
    from kerastl.export.formats import tflite

    x = np.array(SENTENCES[:6], dtype=object)

    def broken(*args, **kwargs):
        raise kerastl.ExportError("injected: the TFLite converter failed")

    monkeypatch.setattr(tflite, "convert_function", broken)  # and its fallback
    monkeypatch.setattr(tflite, "convert", broken)
    with pytest.raises(kerastl.ExportError, match="injected: the TFLite converter failed") as err:
        kerastl.export(text_model, tmp_path, formats=["saved_model", "tflite"], validation_data=x)
    # The SavedModel part passed, but the unit did not: no version, no tokenizer, no file.
    assert not (tmp_path / "saved_model").exists()
    assert not (tmp_path / f"{text_model.name}_tokenizer").exists()
    assert not list(tmp_path.glob("*.tflite"))
    assert not (tmp_path / "export_report.json").exists()
    assert not list(tmp_path.glob(".kerastl-staging-*"))
    assert _visible(tmp_path) == ["export_report.failed.json", "export_report.failed.md"]
    assert str(tmp_path / "export_report.failed.md") in str(err.value)  # not the staging path


def test_passing_export_publishes_all_parts_then_next_version(text_model, tmp_path):
    x = np.array(SENTENCES[:6], dtype=object)
    report = kerastl.export(
        text_model, tmp_path, formats=["saved_model", "tflite"], validation_data=x
    )
    assert report["status"] == "passed" and report["saved_model_version"] == 1
    assert report["out_dir"] == str(tmp_path)
    for a in report["artifacts"]:
        assert (tmp_path / a["path"]).exists(), a["path"]
    assert (tmp_path / f"{text_model.name}_tokenizer" / "tokenizer_settings.json").is_file()
    assert (tmp_path / "export_report.json").is_file()
    again = kerastl.export(
        text_model, tmp_path, formats=["saved_model", "tflite"], validation_data=x, overwrite=True
    )
    assert again["saved_model_version"] == 2
    assert (tmp_path / "saved_model" / text_model.name / "2").is_dir()
    assert not list(tmp_path.glob(".kerastl-staging-*"))
    with pytest.raises(kerastl.ConfigError, match="already exist"):  # checked before writing
        kerastl.export(text_model, tmp_path, formats=["saved_model", "tflite"], validation_data=x)
    assert not (tmp_path / "saved_model" / text_model.name / "3").exists()


def test_only_staging_folders_nobody_holds_are_swept(tmp_path):
    import os
    import time

    from kerastl.export.pipeline import LOCK_NAME, STAGING_PREFIX, _hold, sweep_staging

    def folder(name: str, age: float, lock: bool = True):
        path = tmp_path / f"{STAGING_PREFIX}{name}"
        (path / "saved_model").mkdir(parents=True)
        if lock:
            (path / LOCK_NAME).touch()
            os.utime(path / LOCK_NAME, (time.time() - age,) * 2)
        return path

    killed = folder("host-1-0badf00d", age=600)  # its export died: nobody holds the lock
    running = folder("host-2-0123abcd", age=600)
    held = _hold(running)  # a running export (here or on another machine) holds its lock
    os.utime(running / LOCK_NAME, (time.time() - 600,) * 2)
    fresh = folder("host-3-77777777", age=0)  # may be between creating and locking it
    unknown = folder("1a2b3c4d", age=600, lock=False)  # named by an older kerastl
    notes = sweep_staging(tmp_path)
    assert not killed.exists() and running.exists() and fresh.exists() and unknown.exists()
    assert notes == ["removed a staging folder left by an export that was killed (1 folder(s))"]
    held.close()  # the export ended without removing its folder (killed): swept next time
    assert len(sweep_staging(tmp_path)) == 1 and not running.exists()
