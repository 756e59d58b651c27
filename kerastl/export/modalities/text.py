"""Export hooks of text models (KerasHub backbones): raw strings and token ids.

* **SavedModel** takes raw strings (``text``: ``tf.string``, shape ``(batch,)``),
  tokenizer inside the graph, plus a ``serving_token_ids`` signature taking
  ``token_ids`` (``int32``, ``(batch, sequence_length)``) for clients that tokenize.
* **TFLite and ONNX** take ``token_ids`` only: the KerasHub tokenizers run on
  TensorFlow Text ops, which neither the LiteRT builtin op set nor ONNX has. The
  padding mask (``token_ids != pad id``) and segment ids (zeros) are computed in
  the graph, so one int32 input is all a mobile or ONNX client sends. The
  tokenizer's vocabulary and settings are written beside the files
  (``<name>_tokenizer/``) and recorded in their metadata, and
  :func:`kerastl.load_artifact` uses them to accept raw strings.
* **MediaPipe** (``<name>_mediapipe.tflite``, WordPiece classifiers): converted from
  :func:`bert_inputs_model`, on MediaPipe's three inputs (``ids``, ``mask``,
  ``segment_ids``); MediaPipe's ``TextClassifier`` tokenizes raw strings with the
  vocabulary stored in the file (:mod:`kerastl.export.formats.tflite_metadata`).
* **ONNX on raw strings**: for WordPiece
  tokenizers, ``<name>_strings.onnx`` takes raw strings, the tokenizer in the graph as
  onnxruntime-extensions ops (:mod:`kerastl.export.formats.onnx_strings`).

:class:`TextExporter` is the modality of string models. It declares TFLite/ONNX as
:attr:`~TextExporter.sub_model_formats`, so those are exported from the token-id
sub-model (modality :class:`TokenIdsExporter`) through the same validated pipeline, and
both parts are published as one unit (:mod:`kerastl.export.split`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.core.meta import ModelMeta
from kerastl.errors import DataError
from kerastl.export.modalities import ModalityExporter, register_modality

_WORDS = (
    "the a good bad movie film great awful plot actor music scene team game goal match player "
    "rain sun cloud storm weather price market stock bank money trade food pizza chef"
).split()
TOKENIZER_DIR = "{name}_tokenizer"

#: Sentences the raw-string files (strings ONNX, MediaPipe) are checked on, besides the
#: validation data:
#: case, punctuation, numbers, URLs, accents, CJK, emoji, whitespace, a long word, truncation.
PROBE_SENTENCES = (
    "Hello, World! It's 3:45 p.m. on 12/05/2024.",
    "THE QUICK BROWN FOX -- jumps over the lazy dog?!",
    "e-mail someone@example.com or visit https://example.org/a_b?q=1&x=2",
    "naïve café owners in Zürich, Malmö and São Paulo",
    "東京 is in 日本; emoji 🙂 and symbols © € too",
    "tabs\tand\nnewlines   and  spaces",
    "a" + "b" * 120 + " long word",
    " ".join(["many words to cut at the sequence length"] * 12),
)
#: Inputs of :func:`bert_inputs_model`, named as MediaPipe's BERT metadata names them.
BERT_INPUTS = ("ids", "mask", "segment_ids")
#: Name of the nested :func:`bert_inputs_model` inside :func:`token_id_model`.
BERT_INPUTS_LAYER = "bert_inputs"


def _sentences(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = [" ".join(rng.choice(_WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]
    return np.array(out, dtype=object)


def _as_strings(data: Any, argument: str, limit: int | None) -> tuple[np.ndarray, Any]:
    ys = None
    if isinstance(data, tuple) and len(data) in (2, 3):
        data, ys = data[0], data[1]
    if isinstance(data, (str, bytes)):
        data = [data]
    if hasattr(data, "as_numpy_iterator"):
        xs, yl = [], []
        for element in data.as_numpy_iterator():
            x, y = (element[0], element[1]) if isinstance(element, tuple) else (element, None)
            x = np.atleast_1d(np.asarray(x, dtype=object))
            xs.extend(x)
            if y is not None:
                yl.extend(np.atleast_1d(np.asarray(y)))
            if limit is not None and len(xs) >= limit:
                break
        data, ys = xs, (np.asarray(yl) if yl else None)
    arr = np.asarray(data, dtype=object).reshape(-1)
    if arr.size == 0:
        raise DataError(f"{argument}: no texts (an empty batch).")
    bad = [type(v).__name__ for v in arr[:5] if not isinstance(v, (str, bytes))]
    if bad:
        raise DataError(
            f"{argument}: a text model takes strings, got elements of type {bad[0]} "
            "(images or numbers do not go into a text model)."
        )
    arr = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in arr], dtype=object)
    if limit is not None:
        arr = arr[:limit]
        ys = None if ys is None else np.asarray(ys)[:limit]
    return arr, ys


def _text_layers(model):
    """The preprocess layer of a kerastl text model and its KerasHub preprocessor."""
    pre = model.get_layer("preprocess")
    return pre, pre.preprocessor


def bert_inputs_model(model):
    """The part of a kerastl text model after tokenization, on three BERT-style inputs.

    ``ids``, ``mask`` (1 for real tokens, 0 for padding) and ``segment_ids`` (int32,
    ``(batch, sequence_length)``): the inputs MediaPipe's ``TextClassifier`` feeds.
    Segment ids go to backbones that take them; others ignore them.

    Example:
        >>> bert_inputs_model(text_model).input_names  # doctest: +SKIP
        ['ids', 'mask', 'segment_ids']
    """
    import keras

    pre, _ = _text_layers(model)
    length = pre.sequence_length
    ids, mask, segments = (keras.Input(shape=(length,), dtype="int32", name=n) for n in BERT_INPUTS)
    feats = {"token_ids": ids, "padding_mask": keras.ops.not_equal(mask, 0)}
    if "segment_ids" in pre.keys:
        feats["segment_ids"] = segments
    else:  # keep the input in the graph (and so in the converted file's signature)
        feats["token_ids"] = ids + 0 * segments
    # Re-run the layers after "preprocess" on the new tensors.
    inner = keras.Model(pre.output, model.outputs)
    # The preprocess layer's dict output comes back flattened in sorted-key order.
    tensors = dict(zip(sorted(pre.keys), keras.tree.flatten(pre.output)))
    key_of = {t.name: k for k, t in tensors.items()}
    # Keras names the sub-model's inputs after the intermediate tensors, plus "CLONE".
    outputs = inner({t.name: feats[key_of[t.name.removesuffix("CLONE")]] for t in inner.inputs})
    return keras.Model([ids, mask, segments], outputs, name=BERT_INPUTS_LAYER)


def token_id_model(model):
    """The part of a kerastl text model after tokenization, on one ``token_ids`` input.

    The padding mask (``token_ids != pad id``) and segment ids (zeros) are computed
    from the ids inside the graph, and fed to :func:`bert_inputs_model`, nested as the
    layer :data:`BERT_INPUTS_LAYER` (the MediaPipe file is converted from it).

    Example:
        >>> sub = token_id_model(text_model)  # doctest: +SKIP
        >>> sub.input.name  # doctest: +SKIP
        'token_ids'
    """
    import keras

    from kerastl.core.model import KerastlModel

    pre, preprocessor = _text_layers(model)
    pad = int(preprocessor.tokenizer.pad_token_id)
    length = pre.sequence_length
    ids = keras.Input(shape=(length,), dtype="int32", name="token_ids")
    mask = keras.ops.cast(keras.ops.not_equal(ids, pad), "int32")
    outputs = bert_inputs_model(model)([ids, mask, keras.ops.zeros_like(ids)])
    meta = json.loads(json.dumps(ModelMeta.of(model).to_dict(), default=str))
    meta["input"] = {
        "name": "token_ids",
        "shape": [length],
        "dtype": "int32",
        "range": [0, int(preprocessor.tokenizer.vocabulary_size()) - 1],
        "layout": "token ids from the tokenizer beside the file; 0-padded per pad_token_id",
        "preprocessing": "tokenize with the recorded tokenizer, pad/truncate to sequence_length",
        "text_input": ModelMeta.of(model).input,
    }
    meta["tokenizer"] = tokenizer_info(model)
    return KerastlModel(ids, outputs, name=model.name, kerastl_config=meta)


def tokenizer_info(model) -> dict[str, Any]:
    """Everything needed to reproduce the token ids: class, settings, special ids, vocabulary."""
    import keras

    pre, preprocessor = _text_layers(model)
    tok = preprocessor.tokenizer
    config = keras.saving.serialize_keras_object(tok)
    info = {
        "class_name": type(tok).__name__,
        "preprocessor": type(preprocessor).__name__,
        "sequence_length": pre.sequence_length,
        "keys": list(pre.keys),
        "pad_token_id": int(tok.pad_token_id),
        "vocabulary_size": int(tok.vocabulary_size()),
        "algorithm": _algorithm(tok),
        "start_token": getattr(tok, "start_token", None),
        "end_token": getattr(tok, "end_token", None),
        "config": json.loads(json.dumps(config, default=str)),
    }
    vocab = getattr(tok, "vocabulary", None)
    if isinstance(vocab, (list, dict)):
        info["vocabulary"] = vocab
    merges = getattr(tok, "merges", None)
    if merges:
        info["merges"] = list(merges)
    proto = getattr(tok, "proto", None)
    if isinstance(proto, bytes):
        import base64

        info["proto_base64"] = base64.b64encode(proto).decode("ascii")
    return info


def _algorithm(tok) -> str:
    """``wordpiece``, ``sentencepiece``, ``bpe``, or the tokenizer's class name."""
    from keras_hub import tokenizers

    kinds = (
        ("wordpiece", tokenizers.WordPieceTokenizer),
        ("sentencepiece", tokenizers.SentencePieceTokenizer),
        ("bpe", tokenizers.BytePairTokenizer),
    )
    return next((name for name, cls in kinds if isinstance(tok, cls)), type(tok).__name__)


def rebuild_preprocessor(info: dict[str, Any]):
    """The KerasHub text preprocessor described by :func:`tokenizer_info` (no download)."""
    import base64

    import keras_hub

    tok_cls = getattr(keras_hub.models, info["class_name"])
    kwargs: dict[str, Any] = {}
    if "vocabulary" in info:
        kwargs["vocabulary"] = info["vocabulary"]
    if "merges" in info:
        kwargs["merges"] = info["merges"]
    if "proto_base64" in info:
        kwargs["proto"] = base64.b64decode(info["proto_base64"])
    cfg = (info.get("config") or {}).get("config") or {}
    for key in ("lowercase", "strip_accents", "split", "suffix_indicator", "oov_token"):
        if key in cfg and cfg[key] is not None:
            kwargs[key] = cfg[key]
    try:
        tok = tok_cls(**kwargs)
    except TypeError:
        tok = tok_cls(**{k: v for k, v in kwargs.items() if k in ("vocabulary", "merges", "proto")})
    pre_cls = getattr(keras_hub.models, info["preprocessor"])
    return pre_cls(tokenizer=tok, sequence_length=info["sequence_length"])


def write_tokenizer(model, folder: Path) -> list[str]:
    """Write the tokenizer's files (vocabulary / merges / SentencePiece model) and settings."""
    info = tokenizer_info(model)
    folder.mkdir(parents=True, exist_ok=True)
    _, preprocessor = _text_layers(model)
    written = []
    save = getattr(preprocessor.tokenizer, "save_assets", None)
    if save is not None:  # a tokenizer without file assets has none; a failing write raises
        save(str(folder))
        written = sorted(p.name for p in folder.iterdir())
    settings = {k: v for k, v in info.items() if k not in ("vocabulary", "merges", "proto_base64")}
    (folder / "tokenizer_settings.json").write_text(json.dumps(settings, indent=1))
    return [*written, "tokenizer_settings.json"]


class TextExporter(ModalityExporter):
    """Raw strings in (``tf.string``); SavedModel only, plus a token-id signature.

    TFLite and ONNX come from the token-id sub-model (see the module docstring).
    """

    name = "text"
    formats = ("saved_model", "tflite", "onnx")
    sub_model_formats = ("tflite", "onnx")
    model = None  # the Keras model, set by the exporter's prepare()

    def sub_model(self, model):
        return token_id_model(model)

    def sub_inputs(self, sub: ModalityExporter, data: Any) -> tuple[np.ndarray, Any]:
        x, y = self.coerce(data, "validation_data")
        return sub.tokenize(x), y

    def write_beside(self, model, staging: Path, name: str) -> dict[str, tuple[str, list]]:
        folder = TOKENIZER_DIR.format(name=name)
        return {"tokenizer": (folder, write_tokenizer(model, staging / folder))}

    def split_note(self, name: str, paths: list[str]) -> str:
        note = (
            "text model: SavedModel takes raw strings (tokenizer in the graph) and token ids "
            "(serving_token_ids); TFLite/ONNX take token_ids, tokenizer files in "
            f"{TOKENIZER_DIR.format(name=name)}/ and in the metadata"
        )
        if f"{name}_strings.onnx" in paths:
            note += f"; {name}_strings.onnx takes raw strings and needs onnxruntime-extensions"
        if f"{name}_mediapipe.tflite" in paths:
            note += f"; {name}_mediapipe.tflite runs in MediaPipe's TextClassifier on raw strings"
        return note

    def input_signature(self) -> list:
        import tensorflow as tf

        return [tf.TensorSpec((None,), tf.string, name=self.input_name)]

    def extra_signatures(self, serve_fn: Any) -> dict[str, tuple[Any, list]]:
        import tensorflow as tf

        if self.model is None:
            return {}
        sub = token_id_model(self.model)
        length = sub.input.shape[1]
        task = self.meta.get("task")
        names = [self.meta.get("output") or "outputs"]
        n_out = len(sub.outputs)
        if n_out > 1:
            names.append("logits")

        def serve_ids(token_ids):
            outs = sub(token_ids, training=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            result = {n: tf.cast(v, tf.float32) for n, v in zip(names, outs)}
            if task == "binary":
                result["class_id"] = tf.cast(result[names[0]][:, 0] > 0.5, tf.int64)
            elif task == "classification":
                result["class_id"] = tf.argmax(result[names[0]], -1, output_type=tf.int64)
            return result

        spec = [tf.TensorSpec((None, length), tf.int32, name="token_ids")]
        return {"serving_token_ids": (serve_ids, spec)}

    def sample_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        return _sentences(n, seed)

    def coerce(self, data: Any, argument: str, limit: int | None = None) -> tuple[np.ndarray, Any]:
        return _as_strings(data, argument, limit)

    def load_files(self, paths: list[str]) -> np.ndarray:
        """Each text file is one example."""
        texts = []
        for p in paths:
            try:
                texts.append(Path(p).read_text(encoding="utf-8").strip())
            except FileNotFoundError as exc:
                raise DataError(f"inputs: no file at {p!r}.") from exc
            except UnicodeDecodeError as exc:
                raise DataError(f"inputs: {p!r} is not UTF-8 text ({exc}).") from exc
        return np.array(texts, dtype=object)

    def warmup_requests(self, samples: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
        import tensorflow as tf

        x = [s.encode("utf-8") for s in samples[:2]]
        return [("serving_default", {self.input_name: tf.make_tensor_proto(x)})]

    def rest_examples(self, samples: np.ndarray) -> dict[str, Any]:
        return {
            "rest_request.json": {
                "signature_name": "serving_default",
                "instances": [str(s) for s in samples[:2]],
            }
        }


class TokenIdsExporter(ModalityExporter):
    """``token_ids`` (int32, ``(batch, sequence_length)``) in; accepts raw strings too.

    Strings given to :meth:`coerce` (so to ``load_artifact(...).predict``) are
    tokenized with the tokenizer recorded in the artifact's metadata.
    """

    name = "token_ids"
    formats = ("saved_model", "tflite", "onnx")

    @property
    def length(self) -> int:
        return int(self.meta["input"]["shape"][0])

    def input_signature(self) -> list:
        import tensorflow as tf

        return [tf.TensorSpec((None, self.length), tf.int32, name=self.input_name)]

    def _preprocessor(self):
        if getattr(self, "_pre", None) is None:
            info = self.meta.get("tokenizer")
            if not info:
                raise DataError(
                    "inputs: this artifact takes token ids and records no tokenizer; pass an "
                    f"int32 array of shape (batch, {self.length})."
                )
            self._pre = rebuild_preprocessor(info)
        return self._pre

    def tokenize(self, texts: np.ndarray) -> np.ndarray:
        """Token ids of raw strings, as the model's own preprocessing makes them."""
        import tensorflow as tf

        out = self._preprocessor()(tf.constant([str(t) for t in texts]))
        return np.asarray(out["token_ids"], dtype=np.int32)

    def sample_texts(self, n: int, seed: int = 0) -> np.ndarray:
        """Raw sentences of common words: what :meth:`sample_inputs` tokenizes."""
        return _sentences(n, seed)

    def sample_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        if self.meta.get("tokenizer"):
            return self.tokenize(self.sample_texts(n, seed))
        rng = np.random.default_rng(seed)
        return rng.integers(1, 100, (n, self.length)).astype(np.int32)

    def coerce(self, data: Any, argument: str, limit: int | None = None) -> tuple[np.ndarray, Any]:
        probe = data[0] if isinstance(data, tuple) and len(data) in (2, 3) else data
        first = probe
        if isinstance(probe, (list, np.ndarray)) and len(probe):
            first = np.asarray(probe, dtype=object).reshape(-1)[0]
        if isinstance(first, (str, bytes)) or hasattr(probe, "as_numpy_iterator"):
            texts, ys = _as_strings(data, argument, limit)
            return self.tokenize(texts), ys
        ys = None
        if isinstance(data, tuple) and len(data) in (2, 3):
            data, ys = data
        x = np.asarray(data)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.length or x.dtype.kind not in "iu":
            raise DataError(
                f"{argument}: expected int token ids of shape (batch, {self.length}) or raw "
                f"strings, got dtype {x.dtype} shape {x.shape}."
            )
        if limit is not None:
            x = x[:limit]
            ys = None if ys is None else np.asarray(ys)[:limit]
        return x.astype(np.int32), ys

    def load_files(self, paths: list[str]) -> np.ndarray:
        return self.tokenize(TextExporter(self.meta).load_files(paths))


register_modality("text", TextExporter)
register_modality("token_ids", TokenIdsExporter)
