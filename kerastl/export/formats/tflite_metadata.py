"""Standard TFLite Metadata (the ``M001`` schema) for image, text and audio classifiers (MediaPipe).

MediaPipe Tasks' ``ImageClassifier`` (and the TFLite Task Library) refuse a float-input
model without the standard metadata: ``ImageProperties`` and ``NormalizationOptions`` on
the input, the labels as an associated ``TENSOR_AXIS_LABELS`` file on the scores. They
also need every output to be float scores, so kerastl's three-output classifier file
(``probabilities``, ``logits`` and the int64 ``class_id``) is not accepted as is.

:func:`mediapipe_classifier` therefore derives ``<name>_mediapipe.tflite`` from the
validated float32 file: the same graph and weights, with the subgraph and signature
outputs cut down to ``probabilities`` and the metadata written by MediaPipe's own
``metadata_writers`` (PyPI ``mediapipe``). kerastl's input takes raw 0-255 RGB and runs
the backbone's preprocessing in the graph, so ``NormalizationOptions`` are mean 0,
std 1: MediaPipe then feeds the pixel values unchanged. kerastl's own JSON metadata stays
in the file's ``kerastl_metadata`` entry for :func:`kerastl.load_artifact`.

Text classifiers (the token-id sub-model of a KerasHub text model) get
:func:`mediapipe_text_classifier`: MediaPipe's ``TextClassifier`` tokenizes the raw
string itself and feeds three int32 tensors, ``ids``, ``mask`` and ``segment_ids``, so
the file is converted from the three-input model
(:func:`kerastl.export.modalities.text.bert_inputs_model`) and carries
``BertTokenizerOptions`` with the WordPiece vocabulary as ``vocab.txt``. Only tokenizers
MediaPipe reproduces get one (:func:`text_tokenizer_reason`); for the others the export
report says why.

Audio classifiers that take the raw waveform in their TFLite file (KerasHub Moonshine
entries) get :func:`mediapipe_audio_classifier`: MediaPipe's ``AudioClassifier`` reads
``AudioProperties`` (sample rate, channels) on the input tensor, resamples the clip to
that rate and classifies it in windows of the input tensor's length (one result per
window). The 1.2.x wheels have no audio writer (``metadata_info.TensorMd`` writes an empty
``AudioProperties``), so the sample rate and channel count are filled in here. Whisper
files take log-mel features, which MediaPipe cannot feed: no file, and a report note.

The ``mediapipe`` 1.2.x wheels ship the metadata writers without their compiled helper
``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`` (it only computes the
schema's ``min_parser_version``); :func:`min_parser_version` is a Python port of it,
installed in its place when the compiled module is missing.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np

#: Suffix of the MediaPipe-ready file: ``<name>_mediapipe.tflite``.
MEDIAPIPE_SUFFIX = "mediapipe"
#: The output MediaPipe classifies on.
SCORES_OUTPUT = "probabilities"
#: Inputs of the ``TextClassifier`` file, as MediaPipe's BERT metadata names them.
TEXT_INPUTS = ("ids", "mask", "segment_ids")
#: Tokenizer kinds in reasons.
ALGORITHMS = {"bpe": "BPE", "wordpiece": "WordPiece", "sentencepiece": "SentencePiece"}
#: MediaPipe task per kerastl input name (``log_mel``: Whisper's TFLite input).
KINDS = {
    "image": "ImageClassifier",
    "token_ids": "TextClassifier",
    "audio": "AudioClassifier",
    "log_mel": "AudioClassifier",
}
_PYWRAP = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


def supports(meta: dict[str, Any]) -> bool:
    """Whether a MediaPipe ``ImageClassifier`` / ``TextClassifier`` / ``AudioClassifier`` file is derived.

    Example:
        >>> supports({"task": "classification", "class_names": ["a", "b"],
        ...           "input": {"name": "image", "shape": [96, 96, 3]}})
        True
        >>> supports({"task": "regression", "input": {"name": "image"}})
        False
    """
    return unsupported_reason(meta) is None


def unsupported_reason(meta: dict[str, Any]) -> str | None:
    """Why no MediaPipe file is derived for this model (``None``: one is).

    Image models: softmax classifiers on images of a fixed size (MediaPipe resizes to
    the input tensor's height and width). Text models (the ``token_ids`` sub-model):
    softmax classifiers whose tokenizer MediaPipe's ``BertTokenizer`` reproduces
    (:func:`text_tokenizer_reason`). Audio models: softmax classifiers whose TFLite file
    takes a fixed-length waveform (:func:`audio_reason`).

    Example:
        >>> unsupported_reason({"task": "classification", "class_names": ["a", "b"],
        ...                     "input": {"name": "image", "shape": [None, None, 3]}})
        'MediaPipe resizes images to the input tensor size, and this model takes any size'
        >>> unsupported_reason({"task": "regression", "input": {"name": "token_ids"}})
        "MediaPipe's TextClassifier needs a softmax classifier with class names; task is 'regression'"
    """
    spec = meta.get("input") or {}
    kind = KINDS.get(spec.get("name"))
    if kind is None:
        return f"MediaPipe classifiers take images, text or audio, not {spec.get('name')!r} inputs"
    if kind == "AudioClassifier" and audio_reason(spec):
        return audio_reason(spec)  # what the file takes rules it out whatever the head
    if meta.get("task") != "classification":
        return (
            f"MediaPipe's {kind} needs a softmax classifier with class names; task is "
            f"{meta.get('task')!r}"
        )
    if not meta.get("class_names"):
        return f"MediaPipe's {kind} needs class names for its labels file; the model has none"
    if SCORES_OUTPUT not in (meta.get("outputs") or [SCORES_OUTPUT]):
        return f"MediaPipe's {kind} reads the {SCORES_OUTPUT!r} output, which this model lacks"
    if kind == "TextClassifier":
        return text_tokenizer_reason(meta.get("tokenizer") or {})
    if kind == "ImageClassifier" and None in list(spec.get("shape") or [None])[:2]:
        return "MediaPipe resizes images to the input tensor size, and this model takes any size"
    return None


def audio_reason(spec: dict[str, Any]) -> str | None:
    """Why MediaPipe's ``AudioClassifier`` cannot feed this audio input (``None``: it can).

    MediaPipe feeds raw mono or multi-channel samples, resampled to the metadata's rate,
    in windows of the input tensor's length.

    Example:
        >>> audio_reason({"name": "audio", "shape": [3200], "sample_rate": 16000}) is None
        True
        >>> audio_reason({"name": "audio", "shape": [None], "sample_rate": 16000})
        "MediaPipe's AudioClassifier cuts audio into windows of the input length, and this model takes any length"
    """
    if spec.get("name") == "log_mel" or "log-mel" in str(spec.get("preprocessing", "")):
        return (
            "the TFLite file takes log_mel features (the Whisper log-mel front end does not "
            "convert to LiteRT builtins), and MediaPipe's AudioClassifier feeds the model raw "
            "waveform samples"
        )
    if not (spec.get("shape") or [None])[0]:
        return (
            "MediaPipe's AudioClassifier cuts audio into windows of the input length, and "
            "this model takes any length"
        )
    return None


def text_tokenizer_reason(info: dict[str, Any]) -> str | None:
    """Why MediaPipe's tokenizer cannot reproduce the model's token ids (``None``: it can).

    MediaPipe's ``TextClassifier`` (1.2.x) tokenizes for BERT-style models itself, with
    the vocabulary and options stored in the file: WordPiece (``BertTokenizerOptions``)
    that lowercases, keeps accents, splits on punctuation, adds ``[CLS]`` / ``[SEP]``
    and pads with id 0; or SentencePiece, which kerastl does not write (its special
    tokens and id offsets differ between KerasHub models and are not checked here).
    BPE and other tokenizers have no MediaPipe counterpart.

    Example:
        >>> text_tokenizer_reason({"class_name": "GPT2Tokenizer", "algorithm": "bpe"})
        "MediaPipe's TextClassifier has WordPiece (BERT) and SentencePiece tokenizers, not GPT2Tokenizer's BPE"
    """
    name, algorithm = info.get("class_name"), info.get("algorithm")
    config = (info.get("config") or {}).get("config") or {}
    vocab = info.get("vocabulary")
    if algorithm == "sentencepiece":
        return (
            f"{name} is SentencePiece: kerastl writes MediaPipe files for WordPiece (BERT) "
            "tokenizers only (SentencePiece special tokens and id offsets differ per model "
            "and are not checked against MediaPipe)"
        )
    if algorithm != "wordpiece":
        return (
            "MediaPipe's TextClassifier has WordPiece (BERT) and SentencePiece tokenizers, "
            f"not {name}'s {ALGORITHMS.get(algorithm, algorithm)}"
        )
    checks = [
        (isinstance(vocab, list), "its vocabulary is not recorded as a list"),
        (config.get("lowercase", True), "it is cased, and MediaPipe lowercases the text"),
        (not config.get("strip_accents"), "it strips accents, and MediaPipe does not"),
        (config.get("suffix_indicator", "##") == "##", "its suffix indicator is not '##'"),
        (info.get("pad_token_id") == 0, "MediaPipe pads with id 0, its pad id is not 0"),
        (
            (info.get("start_token"), info.get("end_token")) == ("[CLS]", "[SEP]"),
            "MediaPipe adds [CLS] and [SEP], it adds other tokens",
        ),
    ]
    failed = [why for ok, why in checks if not ok]
    if failed:
        return f"{name} (WordPiece) differs from MediaPipe's BertTokenizer: " + "; ".join(failed)
    return None


def available() -> bool:
    """Whether MediaPipe's metadata writers can be imported (the ``mediapipe`` package)."""
    try:
        _install_version_shim()
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer  # noqa: F401
    except ImportError:
        return False
    return True


def min_parser_version(metadata_buf: bytes) -> str:
    """Smallest metadata parser version that understands ``metadata_buf`` (schema history).

    A port of MediaPipe's ``GetMinimumMetadataParserVersion``: 1.0.0, raised by the
    fields the metadata uses (``metadata_schema.fbs``, "History").

    Example:
        >>> import flatbuffers
        >>> from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
        >>> md = fb.ModelMetadataT(); md.subgraphMetadata = [fb.SubGraphMetadataT()]
        >>> b = flatbuffers.Builder(0); _ = b.Finish(md.Pack(b), b"M001")
        >>> min_parser_version(bytes(b.Output()))
        '1.0.0'
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(metadata_buf, 0))
    found = [(1, 0, 0)]
    files = list(md.associatedFiles or [])
    for sg in md.subgraphMetadata or []:
        files += list(sg.associatedFiles or [])
        if sg.associatedFiles:
            found.append((1, 4, 1))
        if sg.inputProcessUnits or sg.outputProcessUnits:
            found.append((1, 1, 0))
        if sg.inputTensorGroups or sg.outputTensorGroups:
            found.append((1, 2, 0))
        if getattr(sg, "customMetadata", None):
            found.append((1, 5, 0))
        units = list(sg.inputProcessUnits or []) + list(sg.outputProcessUnits or [])
        tensors = list(sg.inputTensorMetadata or []) + list(sg.outputTensorMetadata or [])
        for t in tensors:
            files += list(t.associatedFiles or [])
            units += list(t.processUnits or [])
            props = t.content.contentPropertiesType if t.content else 0
            if props == fb.ContentProperties.AudioProperties:
                found.append((1, 3, 0))
        for u in units:
            if u.optionsType in (
                fb.ProcessUnitOptions.BertTokenizerOptions,
                fb.ProcessUnitOptions.SentencePieceTokenizerOptions,
            ):
                found.append((1, 1, 0))
            elif u.optionsType == fb.ProcessUnitOptions.RegexTokenizerOptions:
                found.append((1, 2, 1))
    for f in files:
        if f.type == fb.AssociatedFileType.VOCABULARY:
            found.append((1, 0, 1))
        elif f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
            found.append((1, 4, 0))
        if f.version:
            found.append((1, 4, 1))
    return ".".join(map(str, max(found)))


def _install_version_shim() -> None:
    """Register :func:`min_parser_version` where MediaPipe's metadata module imports it."""
    if _PYWRAP in sys.modules:
        return
    try:
        __import__(_PYWRAP)
        return
    except ImportError:
        pass
    parts = _PYWRAP.split(".")
    for i in range(3, len(parts)):  # mediapipe.tasks.cc ... python
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    module = types.ModuleType(_PYWRAP)
    module.GetMinimumMetadataParserVersion = min_parser_version
    sys.modules[_PYWRAP] = module
    sys.modules[".".join(parts[:-1])]._pywrap_metadata_version = module


#: flatbuffers cannot build a buffer of 2 GiB or more. For a large model (seen from 1.7 GB)
#: the TFLite converter stores the weights after the flatbuffer, at absolute offsets
#: (``Buffer.offset`` > 1), and says so with this metadata entry.
BUFFER_LOCATION = b"buffer_location"
#: Offsets of those weights move by a multiple of this, so their alignment is kept.
TAIL_ALIGN = 64


def uses_buffer_offsets(flatbuffer: bytes) -> bool:
    """Whether the converter stored the file's weights after its flatbuffer (large models)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    return any(model.Metadata(i).Name() == BUFFER_LOCATION for i in range(model.MetadataLength()))


def add_entry(model: Any, name: str | bytes, data: bytes) -> None:
    """Add a ``metadata`` entry ``name`` holding ``data`` (a new buffer) to a ``ModelT``.

    Example:
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> m = schema.ModelT(); m.buffers = [schema.BufferT()]
        >>> add_entry(m, "notes", b"hi")
        >>> model = schema.Model.GetRootAs(pack(m, 0), 0)
        >>> model.Metadata(0).Name(), bytes(model.Buffers(1).DataAsNumpy())
        (b'notes', b'hi')
    """
    from ai_edge_litert import schema_py_generated as schema

    buf = schema.BufferT()
    buf.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = name.encode() if isinstance(name, str) else name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]


def serving_signature(model: Any, inputs: dict[str, int], outputs: dict[str, int]) -> None:
    """Make the ``serving_default`` SignatureDef of a ``ModelT``'s first subgraph: its
    inputs and outputs by name (name -> tensor index), in that order.

    Example:
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> m = schema.ModelT(); m.subgraphs = [schema.SubGraphT()]
        >>> serving_signature(m, {"image": 0}, {"logits": 3, "probabilities": 4})
        >>> sig = schema.Model.GetRootAs(pack(m, 0), 0).SignatureDefs(0)
        >>> sig.SignatureKey(), sig.Outputs(1).Name(), sig.Outputs(1).TensorIndex()
        (b'serving_default', b'probabilities', 4)
    """
    from ai_edge_litert import schema_py_generated as schema

    def tensor_map(name: str, index: int) -> Any:
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name.encode(), index
        return entry

    main = model.subgraphs[0]
    main.inputs, main.outputs = list(inputs.values()), list(outputs.values())
    signature = schema.SignatureDefT()
    signature.signatureKey = b"serving_default"
    signature.subgraphIndex = 0
    signature.inputs = [tensor_map(k, i) for k, i in inputs.items()]
    signature.outputs = [tensor_map(k, i) for k, i in outputs.items()]
    model.signatureDefs = [signature]


def repack(model: Any, flatbuffer: bytes) -> bytes | bytearray:
    """Serialise ``model`` (a ``ModelT`` unpacked from ``flatbuffer`` and edited) to a file.

    Weights the converter stored after the flatbuffer are not in ``model``: they are
    copied from ``flatbuffer`` behind the new flatbuffer, and their offsets moved by the
    change in its size (a multiple of :data:`TAIL_ALIGN`).

    Example:
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> m = schema.ModelT(); m.version = 3
        >>> schema.Model.GetRootAs(repack(m, pack(m, 0)), 0).Version()
        3
    """
    outside = [buf for buf in model.buffers or [] if buf.offset > 1]
    if not outside:
        return pack(model, len(flatbuffer))
    start = min(buf.offset for buf in outside)
    size = len(pack(model, start))
    new_start = size + (start - size) % TAIL_ALIGN
    for buf in outside:
        buf.offset += new_start - start
    head = pack(model, start)
    if len(head) != size:  # offsets are fixed-width fields: the size cannot change
        raise ValueError(f"repack: the flatbuffer changed size ({size} -> {len(head)} bytes).")
    return b"".join((head, bytes(new_start - size), memoryview(flatbuffer)[start:]))


def pack(model: Any, size_hint: int) -> bytearray:
    """Serialise a TFLite ``ModelT`` into a builder sized for it from the start.

    ``flatbuffers.Builder`` grows by doubling, copying its whole buffer each time: from a
    1 KB start, packing a 350 MB model passed through every size up to 512 MB, and the
    last two were alive together. ``size_hint`` (the source file's size) plus room for
    the new tables makes it one buffer, and that buffer is the result: a flatbuffer is
    built from the end, and cutting the unused front off a ``bytearray`` moves its start
    instead of copying it (``builder.Output()`` would copy the whole file once more).

    Example:
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> m = schema.ModelT(); m.version = 3
        >>> schema.Model.GetRootAs(pack(m, 0), 0).Version()
        3
    """
    import flatbuffers

    class LeanBuilder(flatbuffers.Builder):
        __slots__ = ()
        CreateNumpyVector = _numpy_vector

    builder = LeanBuilder(size_hint + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out, head = builder.Bytes, builder.Head()
    builder.Bytes = bytearray()  # the builder lets go of it
    del out[:head]  # O(1): CPython moves a bytearray's start when its front is deleted
    return out


def _numpy_vector(builder: Any, array: np.ndarray) -> int:
    """``builder.CreateNumpyVector(array)`` that copies the array into the builder once.

    flatbuffers' own makes three passing copies of every weight buffer on the way
    (a byte swap even of one-byte types, ``tobytes()``, and the slice assignment
    converting that to a ``bytearray``): 375 MB at once for BERT-L's word embeddings.
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.byteorder == ">":
        flat = flat.byteswap().view(flat.dtype.newbyteorder("<"))
    builder.StartVector(flat.itemsize, flat.size, flat.dtype.alignment)
    builder.head -= flat.nbytes
    with memoryview(builder.Bytes) as view:
        view[builder.head : builder.head + flat.nbytes] = flat.view(np.uint8)
    builder.vectorNumElems = flat.size
    drop_mapped_pages(flat)
    return builder.EndVector()


def drop_mapped_pages(array: np.ndarray) -> None:
    """When ``array`` views a file mapping (``mmap``), let its pages go from this process.

    Weights joined from disk are packed one buffer at a time from a mapping of the file;
    each one's pages, once copied, leave the process's resident memory (they stay in the
    page cache), so packing holds the new file and one weight, not two files.
    """
    import mmap

    root = array
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    root = root.obj if isinstance(root, memoryview) else root  # np.frombuffer's base
    if not isinstance(root, mmap.mmap) or not array.nbytes or not hasattr(root, "madvise"):
        return  # (no madvise on Windows)
    start = array.ctypes.data - np.frombuffer(root, np.uint8, count=1).ctypes.data
    first = start - start % mmap.PAGESIZE
    root.madvise(mmap.MADV_DONTNEED, first, start + array.nbytes - first)


def keep_output(flatbuffer: bytes, output: str) -> bytes:
    """The same model with only the signature output ``output`` (subgraph and signature)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    sig = model.signatureDefs[0]
    keep = [t for t in sig.outputs if t.name.decode() == output]
    if not keep:
        names = [t.name.decode() for t in sig.outputs]
        raise ValueError(f"output: {output!r} is not a signature output; outputs: {names}.")
    index = keep[0].tensorIndex
    sig.outputs = keep
    model.subgraphs[sig.subgraphIndex].outputs = [index]
    return repack(model, flatbuffer)


def mediapipe_classifier(flatbuffer: bytes, class_names: list[str], description: str) -> bytes:
    """A MediaPipe ``ImageClassifier``-ready copy of a kerastl image classifier file.

    Args:
        flatbuffer: The float32 ``.tflite`` (raw 0-255 RGB in, ``probabilities`` out).
        class_names: Labels, one per class, in output order.
        description: The model description written into the metadata.

    Returns:
        The file with only ``probabilities`` as output and standard metadata: image input
        (RGB, mean 0 / std 1, i.e. pixels fed as 0-255), classification output with the
        labels as ``labels.txt``.
    """
    _install_version_shim()
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer as mw

    trimmed = keep_output(flatbuffer, SCORES_OUTPUT)
    # What image_classifier.MetadataWriter.create does, with kerastl's description.
    writer = (
        mw.MetadataWriter.create(bytearray(trimmed))
        .add_general_info("ImageClassifier", description)
        .add_image_input(norm_mean=[0.0], norm_std=[1.0])
        .add_classification_output(mw.Labels().add([str(c) for c in class_names]))
    )
    content, _ = writer.populate()
    del writer  # removes its temporary folder now, not at interpreter exit
    return bytes(content)


def mediapipe_text_classifier(
    flatbuffer: bytes, class_names: list[str], description: str, vocabulary: list[str]
) -> bytes:
    """A MediaPipe ``TextClassifier``-ready copy of a three-input BERT-style classifier file.

    Args:
        flatbuffer: A ``.tflite`` whose signature takes :data:`TEXT_INPUTS` (int32 token
            ids, mask, segment ids) and returns ``probabilities``.
        class_names: Labels, one per class, in output order.
        description: The model description written into the metadata.
        vocabulary: The WordPiece vocabulary, one token per id.

    Returns:
        The file with only ``probabilities`` as output and MediaPipe's BERT text
        metadata: ``BertTokenizerOptions`` with the vocabulary as ``vocab.txt``, the three
        inputs named ``ids`` / ``mask`` / ``segment_ids``, labels as ``labels.txt``.
    """
    import tempfile
    from pathlib import Path

    _install_version_shim()
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer as mw

    trimmed = keep_output(flatbuffer, SCORES_OUTPUT)
    names = _signature_input_tensors(trimmed)
    missing = [n for n in TEXT_INPUTS if n not in names]
    if missing:
        raise ValueError(f"inputs: the file lacks {missing}; it takes {sorted(names)}.")
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("".join(f"{token}\n" for token in vocabulary), encoding="utf-8")
        # What text_classifier.MetadataWriter.create_for_bert_model does, with our text.
        writer = (
            mw.MetadataWriter.create(bytearray(trimmed))
            .add_general_info("TextClassifier", description)
            .add_bert_text_input(mw.BertTokenizer(str(vocab)), *(names[n] for n in TEXT_INPUTS))
            .add_classification_output(mw.Labels().add([str(c) for c in class_names]))
        )
        content, _ = writer.populate()
        del writer
    return bytes(content)


def _signature_input_tensors(flatbuffer: bytes) -> dict[str, str]:
    """Signature input name -> tensor name (``ids`` -> ``serving_default_ids:0``)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    sig = model.signatureDefs[0]
    tensors = model.subgraphs[sig.subgraphIndex].tensors
    return {t.name.decode(): tensors[t.tensorIndex].name.decode() for t in sig.inputs}


def mediapipe_text_scores(path: Any, texts: list[str]) -> np.ndarray:
    """MediaPipe ``TextClassifier``'s scores on raw ``texts``, one row each, in class order.

    Example:
        >>> mediapipe_text_scores("m_mediapipe.tflite", ["a fine day"]).shape  # doctest: +SKIP
        (1, 4)
    """
    from mediapipe.tasks.python import text
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = text.TextClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)))
    rows = []
    with text.TextClassifier.create_from_options(options) as classifier:
        for t in texts:
            categories = classifier.classify(str(t)).classifications[0].categories
            rows.append([c.score for c in sorted(categories, key=lambda c: c.index)])
    return np.asarray(rows, dtype=np.float32)


def mediapipe_audio_classifier(
    flatbuffer: bytes, class_names: list[str], description: str, sample_rate: int
) -> bytes:
    """A MediaPipe ``AudioClassifier``-ready copy of a kerastl waveform classifier file.

    Args:
        flatbuffer: The float32 ``.tflite`` (mono waveform ``(1, samples)`` in [-1, 1],
            ``probabilities`` out).
        class_names: Labels, one per class, in output order.
        description: The model description written into the metadata.
        sample_rate: The model's sample rate in Hz (MediaPipe resamples input to it).

    Returns:
        The file with only ``probabilities`` as output and standard metadata: audio input
        (``AudioProperties``: ``sample_rate``, 1 channel), classification output with the
        labels as ``labels.txt``.
    """
    _install_version_shim()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info as mi
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer as mw

    class AudioTensorMd(mi.TensorMd):
        """``TensorMd`` with the sample rate and channels MediaPipe's writer leaves empty."""

        def create_metadata(self) -> Any:
            tensor = super().create_metadata()
            tensor.content.contentProperties.sampleRate = int(sample_rate)
            tensor.content.contentProperties.channels = 1
            return tensor

    trimmed = keep_output(flatbuffer, SCORES_OUTPUT)
    writer = mw.MetadataWriter.create(bytearray(trimmed)).add_general_info(
        "AudioClassifier", description
    )
    # MetadataWriter has no add_audio_input in mediapipe 1.2.x: the input, as it adds others.
    writer._input_mds.append(
        AudioTensorMd(
            name="audio",
            description=f"Mono waveform in [-1, 1] at {int(sample_rate)} Hz.",
            min_values=[-1.0],
            max_values=[1.0],
            content_type=fb.ContentProperties.AudioProperties,
        )
    )
    writer.add_classification_output(mw.Labels().add([str(c) for c in class_names]))
    content, _ = writer.populate()
    del writer
    return bytes(content)


def mediapipe_audio_scores(path: Any, waves: np.ndarray, sample_rate: int) -> np.ndarray:
    """MediaPipe ``AudioClassifier``'s scores on ``waves``, one row each, in class order.

    Each waveform should be exactly the model's input length: MediaPipe classifies
    longer clips window by window, and this keeps the first window's scores.

    Example:
        >>> mediapipe_audio_scores("m.tflite", np.zeros((1, 3200)), 16000).shape  # doctest: +SKIP
        (1, 3)
    """
    from mediapipe.tasks.python import audio
    from mediapipe.tasks.python.components.containers.audio_data import AudioData
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = audio.AudioClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)))
    rows = []
    with audio.AudioClassifier.create_from_options(options) as classifier:
        for wave in np.asarray(waves, np.float64):
            result = classifier.classify(AudioData.create_from_array(wave, int(sample_rate)))
            categories = result[0].classifications[0].categories
            rows.append([c.score for c in sorted(categories, key=lambda c: c.index)])
    return np.asarray(rows, dtype=np.float32)
