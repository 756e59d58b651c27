"""The exported audio classifier runs in MediaPipe Tasks ``AudioClassifier`` on waveforms.

A tiny offline Moonshine classifier (its TFLite file takes the raw waveform): MediaPipe
reads the sample rate from the file's ``AudioProperties`` and feeds the samples itself,
so its scores are compared with the Keras model's probabilities on the same tones,
chirps and noise. Whisper's TFLite file takes log-mel features, which MediaPipe cannot
feed: no file, and the report says why.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("mediapipe")
pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402
from test_keras_hub import tiny_kwargs  # noqa: E402

import kerastl  # noqa: E402
from kerastl.export.formats import tflite_metadata  # noqa: E402

pytestmark = pytest.mark.hub
RATE = 16000
SAMPLES = 3200  # tiny_kwargs: 0.2 s
CLASSES = ["speech", "music", "noise"]
#: Probabilities: MediaPipe vs Keras (float32 on both sides; measured about 3e-7).
ATOL = 1e-4


def waveforms() -> np.ndarray:
    """Tones, chirps, a two-tone chord, noise and silence-with-click, 0.2 s at 16 kHz."""
    t = np.arange(SAMPLES) / RATE
    rng = np.random.default_rng(3)
    clips = [0.5 * np.sin(2 * np.pi * f * t) for f in (110, 440, 1000, 3500)]
    clips += [0.4 * np.sin(2 * np.pi * (200 + 4000 * t) * t), 0.4 * np.sin(2 * np.pi * 6000 * t**2)]
    clips += [0.3 * np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * 1700 * t)]
    clips += [rng.normal(0, 0.2, SAMPLES), rng.uniform(-0.8, 0.8, SAMPLES)]
    click = np.zeros(SAMPLES)
    click[SAMPLES // 2 : SAMPLES // 2 + 40] = 0.9
    clips.append(click)
    return np.clip(np.stack(clips), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(Keras model, export folder, report, export seconds)."""
    keras.utils.set_random_seed(0)
    model = kerastl.build(
        "moonshine_tiny_en",
        num_classes=len(CLASSES),
        class_names=CLASSES,
        **tiny_kwargs("moonshine_tiny_en"),
    )
    out = tmp_path_factory.mktemp("mp_audio") / "out"
    start = time.perf_counter()
    report = kerastl.export(model, out, formats=["tflite"], validation_data=waveforms()[:4])
    return model, out, report, time.perf_counter() - start


def test_mediapipe_audio_classifier_scores_match_keras(exported):
    model, out, report, seconds = exported
    kinds = [(a["format"], a["precision"], a["passed"]) for a in report["artifacts"]]
    assert kinds == [("tflite", "float32", True), ("tflite", "mediapipe", True)], kinds
    path = out / f"{model.name}_mediapipe.tflite"
    x = waveforms()
    ref = model.predict(x, verbose=0)
    got = tflite_metadata.mediapipe_audio_scores(path, x, RATE)
    diff = float(np.abs(got - ref).max())
    agree = int((got.argmax(1) == ref.argmax(1)).sum())
    mp = report["artifacts"][-1]
    print(
        f"\nMediaPipe AudioClassifier vs Keras: max abs diff {diff:.2e}, top-1 {agree}/"
        f"{len(x)}, {path.stat().st_size / 1e3:.1f} kB; _mediapipe.tflite written in "
        f"{mp['export_seconds']} s, validated in {mp['validate_seconds']} s; whole export "
        f"{seconds:.1f} s; in-export check {mp['details']['mediapipe_checked']} clips, max abs diff "
        f"{mp['details']['mediapipe_max_abs_diff']:.2e}"
    )
    assert got.shape == ref.shape == (len(x), len(CLASSES))
    assert ref.std(axis=0).max() > 0.05 and len(set(ref.argmax(1))) > 1  # input-dependent
    np.testing.assert_allclose(got, ref, atol=ATOL)
    assert agree == len(x)
    assert mp["details"]["mediapipe_checked"] >= 4
    assert mp["details"]["mediapipe_max_abs_diff"] <= ATOL


def test_mediapipe_audio_file_carries_audio_properties_and_labels(exported):
    from mediapipe.tasks.python.metadata import metadata

    from kerastl.export.formats import tflite

    tflite_metadata._install_version_shim()
    model, out, _, _ = exported
    content = (out / f"{model.name}_mediapipe.tflite").read_bytes()
    shown = metadata.MetadataDisplayer.with_model_buffer(content)
    import json

    md = json.loads(shown.get_metadata_json())
    graph = md["subgraph_metadata"][0]
    (audio,) = graph["input_tensor_metadata"]
    assert audio["content"]["content_properties_type"] == "AudioProperties"
    assert audio["content"]["content_properties"] == {"sample_rate": RATE, "channels": 1}
    assert len(graph["output_tensor_metadata"]) == 1
    assert shown.get_packed_associated_file_list() == ["labels.txt"]
    labels = shown.get_associated_file_buffer("labels.txt").decode().split()
    assert labels == CLASSES
    assert tflite.read_metadata(content)["class_names"] == CLASSES


def test_longer_clip_is_classified_window_by_window(exported):
    """MediaPipe cuts a 3-window clip into the model's input length: one result each."""
    from mediapipe.tasks.python import audio
    from mediapipe.tasks.python.components.containers.audio_data import AudioData
    from mediapipe.tasks.python.core.base_options import BaseOptions

    model, out, _, _ = exported
    x = waveforms()[[1, 4, 7]]
    ref = model.predict(x, verbose=0)
    options = audio.AudioClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(out / f"{model.name}_mediapipe.tflite"))
    )
    with audio.AudioClassifier.create_from_options(options) as classifier:
        results = classifier.classify(
            AudioData.create_from_array(x.reshape(-1).astype(float), RATE)
        )
    assert [r.timestamp_ms for r in results] == [0, 200, 400]
    got = [
        [c.score for c in sorted(r.classifications[0].categories, key=lambda c: c.index)]
        for r in results
    ]
    np.testing.assert_allclose(got, ref, atol=ATOL)


def test_whisper_gets_no_mediapipe_file_and_a_note(tmp_path):
    keras.utils.set_random_seed(0)
    model = kerastl.build(
        "whisper_tiny_en", num_classes=3, class_names=CLASSES, **tiny_kwargs("whisper_tiny_en")
    )
    report = kerastl.export(model, tmp_path / "out", formats=["tflite"])
    assert not list((tmp_path / "out").rglob("*_mediapipe.tflite"))
    notes = [n for n in report["notes"] if "_mediapipe.tflite" in n]
    assert notes and "MediaPipe AudioClassifier" in notes[0] and "log_mel" in notes[0], report[
        "notes"
    ]


def test_reasons_name_what_mediapipe_cannot_feed():
    meta = {"task": "classification", "class_names": ["a", "b"]}
    assert tflite_metadata.supports(
        meta | {"input": {"name": "audio", "shape": [3200], "sample_rate": 16000}}
    )
    any_length = meta | {"input": {"name": "audio", "shape": [None]}}
    assert "any length" in tflite_metadata.unsupported_reason(any_length)
    log_mel = meta | {"input": {"name": "log_mel", "shape": [100, 80]}}
    assert "log_mel" in tflite_metadata.unsupported_reason(log_mel)
    sigmoid = {
        "task": "multilabel",
        "class_names": ["a"],
        "input": {"name": "audio", "shape": [3200]},
    }
    assert "softmax" in tflite_metadata.unsupported_reason(sigmoid)
    nameless = meta | {"class_names": [], "input": {"name": "audio", "shape": [3200]}}
    assert "class names" in tflite_metadata.unsupported_reason(nameless)


def test_file_is_left_out_when_mediapipe_scores_differently(tmp_path, monkeypatch):
    """The in-export MediaPipe check can fail: scores off by 1e-2 leave the file out."""
    real = tflite_metadata.mediapipe_audio_scores

    def off(path, waves, rate):
        got = real(path, waves, rate)
        got[-1] += np.float32(1e-2)
        return got

    monkeypatch.setattr(tflite_metadata, "mediapipe_audio_scores", off)
    keras.utils.set_random_seed(0)
    model = kerastl.build(
        "moonshine_tiny_en",
        num_classes=2,
        class_names=["a", "b"],
        **tiny_kwargs("moonshine_tiny_en"),
    )
    report = kerastl.export(model, tmp_path / "out", formats=["tflite"])
    assert not list((tmp_path / "out").rglob("*_mediapipe.tflite"))
    notes = [n for n in report["notes"] if "not written" in n and "_mediapipe.tflite" in n]
    assert notes and "AudioClassifier scores waveform" in notes[0], report["notes"]
