"""``<name>_strings.onnx``: raw sentences in, tokenizer in the graph (onnxruntime-extensions).

Real all-MiniLM-L6-v2 weights with a classifier head: the strings file runs in
onnxruntime with the extension ops on real, varied English sentences and must give the
Keras model's outputs; its tokenizer alone must give KerasHub's token ids.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from test_keras_hub_minilm import MODEL_DIR  # noqa: E402 - skips without the weights

import kerastl  # noqa: E402
from kerastl.export.formats import onnx_strings  # noqa: E402
from kerastl.export.modalities.text import PROBE_SENTENCES  # noqa: E402

pytestmark = pytest.mark.hub
LENGTH = 24
#: Outputs of the strings file vs the Keras model (float32 transformer, same weights).
ATOL = 1e-5

SENTENCES = [
    "The striker scored twice in the final minutes of the match.",
    "Heavy RAIN and strong winds are expected across the north tonight!",
    "Shares of the bank fell 3.5% after the quarterly report.",
    "I'd rather stay home; the café down the street is closed.",
    "Zoë ordered a crème brûlée and a piña colada at the résumé workshop.",
    "Naïve investors bought $1,200 worth of shares on 12/03/2024.",
    "WHY IS EVERYONE SHOUTING ABOUT THE WEATHER?",
    "The quick brown fox jumps over the lazy dog.",
    "Dr. Smith's clinic (open 9am-5pm) accepts walk-ins.",
    "It's 27°C in São Paulo, and the forecast says thunderstorms.",
    "Interest rates rose by 0.25 percentage points on Wednesday.",
    'She said: "We won the championship!" and everyone cheered.',
    "Tickets cost €45 — or £39 if you book online.",
    "The goalkeeper's save in the 89th minute kept them in the tournament.",
    "A blizzard closed schools in Montréal, Québec and Zürich.",
    "Is the stock market overvalued? Analysts disagree...",
    "Unbelievably, the underdog team won 4-0.",
    "email me at someone@example.com or call +1 (555) 010-9999",
    "This sentence is deliberately much longer than the model's sequence length, so the "
    "tokenizer has to truncate it exactly where KerasHub does, keeping the first tokens "
    "and ending with the separator token after the cut.",
    "ok",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("strings_onnx")
    keras.utils.set_random_seed(0)
    model = kerastl.build(
        "all_minilm_l6_v2_en",
        weights=MODEL_DIR,
        num_classes=3,
        class_names=["sport", "weather", "finance"],
        sequence_length=LENGTH,
    )
    x = np.array(SENTENCES, dtype=object)
    start = time.perf_counter()
    report = kerastl.export(model, out, formats=["onnx"], validation_data=x)
    seconds = time.perf_counter() - start
    return model, out, report, x, seconds


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), onnx_strings.session_options())


def test_strings_file_matches_keras_on_real_sentences(exported):
    model, out, report, x, seconds = exported
    assert report["status"] == "passed"
    records = {a["precision"]: a for a in report["artifacts"] if a["format"] == "onnx"}
    strings = records["strings"]
    assert strings["passed"] and strings["path"] == f"{model.name}_strings.onnx"
    assert strings["details"]["token_ids_checked"] == len(SENTENCES) + len(PROBE_SENTENCES)
    assert strings["non_builtin_ops"] == [
        "ai.onnx.contrib:BasicTokenizer",
        "ai.onnx.contrib:WordpieceTokenizer",
    ]
    assert records["float32"]["non_builtin_ops"] == []
    session = _session(out / strings["path"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type) == ("text", "tensor(string)")
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"text": x})))
    ref = model.predict(x, verbose=0)
    diff = float(np.max(np.abs(got["probabilities"] - ref)))
    print(
        f"\nstrings ONNX: max abs diff {diff:.2e} over {len(x)} sentences; "
        f"{strings['size_bytes'] / 1e6:.1f} MB (token-id file "
        f"{records['float32']['size_bytes'] / 1e6:.1f} MB); strings file written+checked in "
        f"{strings['export_seconds']:.1f} s, validated in {strings['validate_seconds']:.1f} s; "
        f"whole export {seconds:.1f} s"
    )
    assert diff < ATOL
    assert np.ptp(ref, axis=0).max() > 1e-3  # the head's outputs move with the sentence
    np.testing.assert_array_equal(got["class_id"], ref.argmax(-1))
    one = session.run(None, {"text": x[3:4]})[0]  # batch 1 gives the same row
    np.testing.assert_allclose(one, ref[3:4], atol=ATOL)


def test_tokenizer_graph_alone_gives_keras_hub_token_ids(exported):
    model, out, _, x, _ = exported
    art = kerastl.load_artifact(out / f"{model.name}.onnx")
    tokenizer = onnx_strings.tokenizer_model(art.metadata["tokenizer"])
    import onnxruntime as ort

    session = ort.InferenceSession(tokenizer.SerializeToString(), onnx_strings.session_options())
    got = session.run(None, {"text": x})[0]
    want = np.asarray(model.get_layer("preprocess")(tf.constant(list(x)))["token_ids"])
    bad = [s for s, a, b in zip(SENTENCES, got, want) if not np.array_equal(a, b)]
    assert not bad, bad
    assert got.dtype == np.int32 and got.shape == (len(x), LENGTH)
    assert (want[-2] != 0).all() and want[-2, -1] == 102  # truncated, ends with [SEP]
    # KerasHub keeps accents (strip_accents=False) on this uncased vocabulary: "café",
    # "Zoë"... are one [UNK] each, which the graph reproduces (the extension op alone gives
    # "caf [UNK]").
    assert (want == 100).sum() >= 5


def test_load_artifact_takes_strings_and_metadata_says_what(exported):
    model, out, _, x, _ = exported
    art = kerastl.load_artifact(out / f"{model.name}_strings.onnx")
    assert "onnxruntime-extensions" in art.runtime
    assert art.metadata["input"]["name"] == "text"
    assert art.metadata["input"]["dtype"] == "string"
    assert "onnxruntime-extensions" in art.metadata["input"]["requires"]
    got = art.predict(list(x[:6]))
    ref = model.predict(x[:6], verbose=0)
    np.testing.assert_allclose(got["probabilities"], ref, atol=ATOL)
    assert got["labels"] == [["sport", "weather", "finance"][i] for i in ref.argmax(1)]
    import onnx

    props = {p.key: p.value for p in onnx.load(str(art.path)).metadata_props}
    assert "onnxruntime-extensions" in props["kerastl.requires"]
    plain = kerastl.load_artifact(out / f"{model.name}.onnx")  # unchanged: token ids
    assert plain.metadata["input"]["name"] == "token_ids"
    assert plain._session.get_inputs()[0].type == "tensor(int32)"


def test_known_difference_nfkc_is_caught(exported):
    """KerasHub NFKC-folds; the extension ops do not: the export check names the sentence."""
    model, out, _, _, _ = exported
    info = kerastl.load_artifact(out / f"{model.name}.onnx").metadata["tokenizer"]
    texts = np.array(["a ﬁne day"], dtype=object)
    want = np.asarray(model.get_layer("preprocess")(tf.constant(list(texts)))["token_ids"])
    problem = onnx_strings.check_token_ids(onnx_strings.tokenizer_model(info), texts, want)
    assert problem and "a ﬁne day" in problem


def test_a_sentence_the_ops_tokenize_differently_leaves_the_strings_file_out(exported, tmp_path):
    """Validation data KerasHub tokenizes differently: token-id files publish, strings file not."""
    model, _, _, x, _ = exported
    x = np.array([*x[:5], "a ﬁne day"], dtype=object)
    report = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x)
    assert report["status"] == "passed"
    assert (tmp_path / f"{model.name}.onnx").is_file()
    assert not list(tmp_path.glob("*_strings.onnx"))
    (note,) = [n for n in report["notes"] if n.startswith("not written")]
    assert "_strings.onnx" in note and "a ﬁne day" in note
    assert [a["path"] for a in report["artifacts"]] == [f"{model.name}.onnx"]


def test_export_without_extensions_writes_no_strings_file_and_says_why(tmp_path, monkeypatch):
    from test_keras_hub import SENTENCES as TINY_SENTENCES
    from test_keras_hub import tiny_kwargs

    model = kerastl.build(
        "bert_tiny_en_uncased", num_classes=2, **tiny_kwargs("bert_tiny_en_uncased")
    )
    monkeypatch.setattr(onnx_strings, "available", lambda: False)
    x = np.array(TINY_SENTENCES[:8], dtype=object)
    report = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x)
    (record,) = [a for a in report["artifacts"] if a["format"] == "onnx"]
    (note,) = [n for n in report["notes"] if n.startswith(f"no {model.name}_strings.onnx")]
    assert "onnxruntime-extensions is not installed" in note
    assert not list(tmp_path.glob("*_strings.onnx")) and (tmp_path / f"{model.name}.onnx").is_file()


def test_a_strings_file_left_by_an_earlier_export_is_a_clash_then_removed(tmp_path, monkeypatch):
    """Re-export without the extensions: the old strings file must not outlive its model."""
    from test_keras_hub import SENTENCES as TINY_SENTENCES
    from test_keras_hub import tiny_kwargs

    from kerastl.errors import ConfigError

    model = kerastl.build(
        "bert_tiny_en_uncased", num_classes=2, **tiny_kwargs("bert_tiny_en_uncased")
    )
    x = np.array(TINY_SENTENCES[:8], dtype=object)
    kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x)
    old = tmp_path / f"{model.name}_strings.onnx"
    assert old.is_file()
    monkeypatch.setattr(onnx_strings, "available", lambda: False)
    with pytest.raises(ConfigError, match="already exist"):  # the token-id file clashes
        kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x)
    (tmp_path / f"{model.name}.onnx").unlink()  # now only the stale strings file is in the way
    with pytest.raises(ConfigError, match="_strings.onnx"):
        kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x)
    report = kerastl.export(model, tmp_path, formats=["onnx"], validation_data=x, overwrite=True)
    assert not old.exists() and (tmp_path / f"{model.name}.onnx").is_file()
    assert any(n.startswith(f"removed {old.name}") for n in report["notes"])


def test_export_without_validation_data_checks_sample_sentences(tmp_path):
    from test_keras_hub import tiny_kwargs

    model = kerastl.build(
        "bert_tiny_en_uncased", num_classes=2, **tiny_kwargs("bert_tiny_en_uncased")
    )
    report = kerastl.export(model, tmp_path, formats=["onnx"])
    (record,) = [a for a in report["artifacts"] if a["precision"] == "strings"]
    assert record["passed"] and record["details"]["token_ids_checked"] == 16 + len(PROBE_SENTENCES)
    art = kerastl.load_artifact(tmp_path / record["path"])
    x = ["A great movie!", "the plot was awful"]
    np.testing.assert_allclose(
        art.predict(x)["probabilities"], model.predict(np.array(x), verbose=0), atol=ATOL
    )


def test_no_strings_file_without_extensions_or_for_other_tokenizers(monkeypatch):
    from pathlib import Path

    from kerastl.export.formats import FORMATS, Options
    from kerastl.export.formats.onnx import strings_skipped

    info = {"class_name": "BertTokenizer", "preprocessor": "BertTextClassifierPreprocessor"}
    meta = {"input": {"name": "token_ids"}, "tokenizer": {**info, "vocabulary": ["[UNK]"]}}
    meta["tokenizer"]["sequence_length"] = 8
    targets = FORMATS["onnx"].targets(Path("o"), "m", Options(), meta)
    assert set(targets) == {"float32", "strings"}
    monkeypatch.setattr(onnx_strings, "available", lambda: False)
    assert "onnxruntime-extensions is not installed" in strings_skipped(meta)
    assert set(FORMATS["onnx"].targets(Path("o"), "m", Options(), meta)) == {"float32"}
    gpt2 = {"input": {"name": "token_ids"}, "tokenizer": {"class_name": "GPT2Tokenizer"}}
    assert "not WordPiece" in strings_skipped(gpt2)
