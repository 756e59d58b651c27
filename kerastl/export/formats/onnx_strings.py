"""``<name>_strings.onnx``: a text model that takes raw strings, tokenizer in the ONNX graph.

kerastl's ``<name>.onnx`` of a text model takes ``token_ids`` (the tokenizer runs on
TensorFlow Text ops, which ONNX has not). For WordPiece (BERT-family) tokenizers this
module derives a second file whose one input is ``text`` (a 1-D ``string`` tensor, a
batch of raw sentences): the token-id graph unchanged, preceded by a tokenizer made of
`onnxruntime-extensions <https://github.com/microsoft/onnxruntime-extensions>`_ ops
(domain ``ai.onnx.contrib``) and standard ONNX ops. Running it needs that package:
``session_options.register_custom_ops_library(onnxruntime_extensions.get_library_path())``.

The tokenizer graph, per sentence (an ONNX ``Loop`` over the batch, as the extension ops
take one sentence at a time):

1. ``BasicTokenizer``: lower-case (KerasHub ``lowercase``), strip accents
   (``strip_accents``), split on whitespace, punctuation and CJK characters, drop control
   characters;
2. ``WordpieceTokenizer`` on those words, then ``ai.onnx.ml.LabelEncoder`` from word
   pieces to ids;
3. a word with a piece outside the vocabulary becomes one ``[UNK]`` (KerasHub and
   TensorFlow Text's rule; the extension op keeps the pieces it found before the
   unknown one, e.g. ``café`` -> ``caf [UNK]``, so those are removed with standard ops);
4. truncate to ``sequence_length - 2``, add ``[CLS]`` ... ``[SEP]``, pad with the pad id
   to ``sequence_length``, as KerasHub's ``MultiSegmentPacker`` does for one segment.

Known differences from KerasHub (which lower-cases with ``case_fold_utf8``, i.e. NFKC
case folding): compatibility characters are not NFKC-normalised (``ﬁ`` stays one
unknown character, ``…`` is not ``...``, a decomposed ``é`` is not composed), and the
word-length limit counts characters, not UTF-8 bytes. The export checks the file's ids
against KerasHub's on the validation sentences; on such a sentence the strings file is
left out (the report's notes name it) and the token-id files still publish. BPE and SentencePiece tokenizers get no strings file.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: Precision key and file suffix: ``<name>_strings.onnx``.
STRINGS_SUFFIX = "strings"
#: Domain of the onnxruntime-extensions ops.
CONTRIB = "ai.onnx.contrib"
#: KerasHub preprocessors whose packing is ``[CLS] tokens [SEP]`` + padding (one segment).
WORDPIECE_PREPROCESSORS = (
    "BertTextClassifierPreprocessor",
    "DistilBertTextClassifierPreprocessor",
    "ElectraTextClassifierPreprocessor",
)
#: Longest word (TensorFlow Text's ``max_bytes_per_word`` default) before it is ``[UNK]``.
MAX_CHARS_PER_WORD = 100
REQUIRES = "onnxruntime-extensions (register_custom_ops_library(get_library_path()))"


def unsupported(meta: dict[str, Any]) -> str | None:
    """Why no strings file is derived for this model (``None``: it is).

    Example:
        >>> unsupported({"input": {"name": "image"}})
        'not a text model (input image)'
        >>> unsupported({"input": {"name": "token_ids"}, "tokenizer": {
        ...     "class_name": "GPT2Tokenizer", "preprocessor": "GPT2Preprocessor"}})[:40]
        'tokenizer GPT2Tokenizer (GPT2Preprocesso'
    """
    info = meta.get("tokenizer")
    if (meta.get("input") or {}).get("name") != "token_ids" or not info:
        return f"not a text model (input {(meta.get('input') or {}).get('name')})"
    cfg = (info.get("config") or {}).get("config") or {}
    if info.get("preprocessor") not in WORDPIECE_PREPROCESSORS or "vocabulary" not in info:
        return (
            f"tokenizer {info.get('class_name')} ({info.get('preprocessor')}) is not WordPiece: "
            "onnxruntime-extensions' BPE/SentencePiece ops are not wired to KerasHub's "
            f"tokenizers here; strings files exist for {list(WORDPIECE_PREPROCESSORS)}"
        )
    if cfg.get("split") is False or cfg.get("special_tokens_in_strings"):
        return "the tokenizer does not split words or keeps special tokens in strings"
    if int(info.get("sequence_length") or 0) < 3:
        return f"sequence_length {info.get('sequence_length')} leaves no room for tokens"
    return None


def available() -> bool:
    """Whether ``onnxruntime_extensions`` (its custom-op library) can be imported."""
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError:
        return False
    return True


def session_options():
    """onnxruntime ``SessionOptions`` with the onnxruntime-extensions ops registered."""
    import onnxruntime as ort
    import onnxruntime_extensions

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return options


def _ids(info: dict[str, Any]) -> dict[str, int]:
    vocab = info["vocabulary"]
    index = {t: i for i, t in enumerate(vocab)}
    cfg = (info.get("config") or {}).get("config") or {}
    names = {"unk": cfg.get("oov_token") or "[UNK]", "cls": "[CLS]", "sep": "[SEP]"}
    missing = [t for t in names.values() if t not in index]
    if missing:
        from kerastl.errors import ExportError

        raise ExportError(f"strings ONNX: the vocabulary has no {missing} token.")
    ids = {k: index[t] for k, t in names.items()}
    ids["pad"] = int(info["pad_token_id"])
    return ids


def _int64(name: str, value: int, scalar: bool = False):
    """An int64 initializer: ``[value]``, or the scalar ``value``."""
    from onnx import TensorProto, helper

    return helper.make_tensor(name, TensorProto.INT64, [] if scalar else [1], [int(value)])


def _whole_word_unk_nodes(unk: int) -> list:
    """``ids``, ``begins``, ``limits`` -> ``kept``: a word with an unknown piece is one [UNK]."""
    from onnx import TensorProto as T
    from onnx import helper as h

    n = h.make_node
    return [
        n("Shape", ["ids"], ["n_pieces"]),
        n("Squeeze", ["n_pieces"], ["n_pieces_s"]),
        n("Range", ["zero_s", "n_pieces_s", "one_s"], ["piece"]),
        n("Unsqueeze", ["piece", "axis1"], ["piece_col"]),  # [p, 1] against [1, w]
        n("Unsqueeze", ["begins", "axis0"], ["begin_row"]),
        n("Unsqueeze", ["limits", "axis0"], ["limit_row"]),
        n("GreaterOrEqual", ["piece_col", "begin_row"], ["after_begin"]),
        n("Less", ["piece_col", "limit_row"], ["before_limit"]),
        n("And", ["after_begin", "before_limit"], ["in_word"]),  # piece j is in word k
        n("Cast", ["in_word"], ["in_word_i"], to=T.INT64),
        n("Equal", ["ids", "unk"], ["is_unk"]),
        n("Cast", ["is_unk"], ["is_unk_i"], to=T.INT64),
        n("Unsqueeze", ["is_unk_i", "axis1"], ["is_unk_col"]),
        n("Mul", ["in_word_i", "is_unk_col"], ["unk_in_word"]),
        n("ReduceSum", ["unk_in_word", "axis0"], ["unks_per_word"], keepdims=1),  # [1, w]
        n("Mul", ["in_word_i", "unks_per_word"], ["bad_cells"]),
        n("ReduceSum", ["bad_cells", "axis1"], ["bad_per_piece"], keepdims=0),
        n("Greater", ["bad_per_piece", "zero"], ["in_bad_word"]),
        n("Equal", ["piece_col", "begin_row"], ["starts_word"]),
        n("Cast", ["starts_word"], ["starts_word_i"], to=T.INT64),
        n("ReduceSum", ["starts_word_i", "axis1"], ["first_piece_i"], keepdims=0),
        n("Greater", ["first_piece_i", "zero"], ["first_piece"]),
        n("Not", ["in_bad_word"], ["good"]),
        n("Or", ["good", "first_piece"], ["keep"]),
        n("Where", ["in_bad_word", "unk", "ids"], ["ids_unk"]),
        n("Compress", ["ids_unk", "keep"], ["kept"], axis=0),
    ]


def _sentence_body(info: dict[str, Any]):
    """The ``Loop`` body: sentence ``i`` of the outer ``text`` -> ``int32[sequence_length]``."""
    from onnx import TensorProto as T
    from onnx import helper as h

    vocab, length, ids = info["vocabulary"], int(info["sequence_length"]), _ids(info)
    cfg = (info.get("config") or {}).get("config") or {}
    n = h.make_node
    nodes = [
        n("Unsqueeze", ["i", "axis0"], ["i_1d"]),
        n("Gather", ["text", "i_1d"], ["sentence"], axis=0),
        n(
            "BasicTokenizer",
            ["sentence"],
            ["words_all"],
            domain=CONTRIB,
            do_lower_case=int(bool(cfg.get("lowercase", True))),
            strip_accents=int(bool(cfg.get("strip_accents", False))),
            tokenize_chinese_chars=1,
            tokenize_punctuation=1,
            remove_control_chars=1,
        ),
        # Every word gives at least one piece: more than length - 2 words are never used.
        n("Slice", ["words_all", "zero", "room"], ["words"]),
        n(
            "WordpieceTokenizer",
            ["words", "no_rows"],
            ["pieces", "row_starts", "begins", "limits"],
            domain=CONTRIB,
            vocab=json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
            suffix_indicator=cfg.get("suffix_indicator") or "##",
            unknown_token=cfg.get("oov_token") or "[UNK]",
            max_input_chars_per_word=MAX_CHARS_PER_WORD,
        ),
        n(
            "LabelEncoder",
            ["pieces"],
            ["ids"],
            domain="ai.onnx.ml",
            keys_strings=list(vocab),
            values_int64s=list(range(len(vocab))),
            default_int64=ids["unk"],
        ),
        *_whole_word_unk_nodes(ids["unk"]),
        n("Slice", ["kept", "zero", "room"], ["truncated"]),
        n("Concat", ["cls", "truncated", "sep"], ["packed"], axis=0),
        n("Shape", ["packed"], ["n_packed"]),
        n("Sub", ["length", "n_packed"], ["n_pad"]),
        n("Concat", ["zero", "n_pad"], ["pads"], axis=0),
        n("Pad", ["packed", "pads", "pad_s"], ["padded"]),
        n("Cast", ["padded"], ["row"], to=T.INT32),
        n("Identity", ["cond_in"], ["cond_out"]),
    ]
    consts = [
        *(_int64(k, v) for k, v in (("axis0", 0), ("axis1", 1), ("zero", 0))),
        *(_int64(k, v, scalar=True) for k, v in (("zero_s", 0), ("one_s", 1))),
        _int64("pad_s", ids["pad"], scalar=True),
        _int64("room", length - 2),
        _int64("length", length),
        *(_int64(k, ids[k]) for k in ("unk", "cls", "sep")),
        h.make_tensor("no_rows", T.INT64, [0], []),  # WordpieceTokenizer: each word a row
    ]
    return h.make_graph(
        nodes,
        "kerastl_tokenize_sentence",
        [
            h.make_tensor_value_info("i", T.INT64, []),
            h.make_tensor_value_info("cond_in", T.BOOL, []),
        ],
        [
            h.make_tensor_value_info("cond_out", T.BOOL, []),
            h.make_tensor_value_info("row", T.INT32, [length]),
        ],
        initializer=consts,
    )


def tokenizer_nodes(info: dict[str, Any], text: str, token_ids: str) -> list:
    """Nodes computing ``token_ids`` (``int32[batch, sequence_length]``) from ``text``."""
    from onnx import helper as h

    trip = f"{token_ids}/kerastl_batch"
    return [
        h.make_node("Shape", [text], [f"{trip}_shape"]),
        h.make_node("Constant", [], [f"{trip}_zero"], value=_int64("zero", 0, scalar=True)),
        h.make_node("Gather", [f"{trip}_shape", f"{trip}_zero"], [trip], axis=0),
        h.make_node("Loop", [trip, ""], [token_ids], body=_sentence_body(info)),
    ]


def tokenizer_model(info: dict[str, Any], opset: int = 17, ir_version: int = 8):
    """The tokenizer alone: ``text`` (``string[batch]``) -> ``token_ids`` (``int32``).

    Example:
        >>> info = {"vocabulary": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world",
        ...         "!", "##s"], "sequence_length": 6, "pad_token_id": 0,
        ...         "config": {"config": {"lowercase": True}}}
        >>> import onnxruntime as ort
        >>> s = ort.InferenceSession(tokenizer_model(info).SerializeToString(),
        ...                          session_options())
        >>> s.run(None, {"text": np.array(["Hello worlds!", "héllo"], object)})[0].tolist()
        [[2, 4, 5, 7, 6, 3], [2, 1, 3, 0, 0, 0]]
    """
    from onnx import TensorProto as T
    from onnx import helper as h

    length = int(info["sequence_length"])
    graph = h.make_graph(
        tokenizer_nodes(info, "text", "token_ids"),
        "kerastl_tokenizer",
        [h.make_tensor_value_info("text", T.STRING, ["batch"])],
        [h.make_tensor_value_info("token_ids", T.INT32, ["batch", length])],
    )
    return h.make_model(graph, opset_imports=_opsets(opset), ir_version=ir_version)


def _opsets(opset: int) -> list:
    from onnx import helper as h

    return [h.make_opsetid("", opset), h.make_opsetid("ai.onnx.ml", 2), h.make_opsetid(CONTRIB, 1)]


def strings_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The token-id file's metadata, restated for the strings file's ``text`` input."""
    out = json.loads(json.dumps(meta, default=str))
    text = dict((meta.get("input") or {}).get("text_input") or {"name": "text"})
    text.update(
        name="text",
        shape=[],
        dtype="string",
        layout="1-D tensor of raw UTF-8 sentences (one per batch row)",
        preprocessing=(
            f"{(meta.get('tokenizer') or {}).get('class_name')} in the graph "
            "(onnxruntime-extensions BasicTokenizer + WordpieceTokenizer): lowercase/accents "
            f"as KerasHub, [CLS] ... [SEP], padded/truncated to {meta['input']['shape'][0]}"
        ),
        requires=REQUIRES,
    )
    out["input"] = text
    out["requires"] = ["onnxruntime", "onnxruntime-extensions"]
    return out


def add_strings_input(proto: Any, info: dict[str, Any]) -> None:
    """Turn the token-id ``ModelProto`` ``proto`` into one whose input is ``text``, in place.

    The ``token_ids`` graph input becomes the output of the tokenizer ``Loop`` put in
    front; weights, outputs and their order are unchanged (metadata: :func:`label`). In
    place, not on a copy: a copy held every weight twice (BERT-large: 1.3 GB more).
    """
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = proto.graph
    (old,) = list(graph.input)
    nodes = tokenizer_nodes(info, "text", old.name)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])
    del graph.input[:]
    graph.input.append(h.make_tensor_value_info("text", T.STRING, ["batch"]))
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    have = {o.domain for o in proto.opset_import}
    proto.opset_import.extend([o for o in _opsets(opset) if o.domain not in have])


def label(proto, meta: dict[str, Any]) -> None:
    """State in ``proto`` (after kerastl's metadata) that it takes strings and needs the ops."""
    prop = proto.metadata_props.add()
    prop.key, prop.value = "kerastl.requires", REQUIRES
    proto.doc_string = (
        f"{meta.get('backbone', 'model')} {meta.get('task') or ''} exported by kerastl; input "
        "'text': a 1-D string tensor of raw sentences, tokenizer in the graph. Needs "
        f"{REQUIRES}."
    )


def check_token_ids(
    proto, texts: np.ndarray, expected: np.ndarray, name: str = "token_ids"
) -> str | None:
    """The token ids ``name`` of ``proto`` on ``texts`` vs ``expected``: first mismatch, or None.

    ``proto`` is a strings file or :func:`tokenizer_model`; only its tokenizer runs.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = type(proto)()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT32, None))
    session = ort.InferenceSession(probe.SerializeToString(), session_options())
    got = session.run(None, {"text": np.asarray([str(t) for t in texts], dtype=object)})[0]
    for text, a, b in zip(texts, got, np.asarray(expected)):
        if not np.array_equal(a, b):
            return (
                f"token ids differ from KerasHub's on {str(text)[:80]!r}: graph {a.tolist()}, "
                f"KerasHub {b.tolist()}"
            )
    return None
