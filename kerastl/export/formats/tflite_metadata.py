"""Standard TFLite Metadata (the ``M001`` schema) for image classifiers, for MediaPipe Tasks.

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

The ``mediapipe`` 1.2.x wheels ship the metadata writers without their compiled helper
``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`` (it only computes the
schema's ``min_parser_version``); :func:`min_parser_version` is a Python port of it,
installed in its place when the compiled module is missing.
"""

from __future__ import annotations

import sys
import types
from typing import Any

#: Suffix of the MediaPipe-ready file: ``<name>_mediapipe.tflite``.
MEDIAPIPE_SUFFIX = "mediapipe"
#: The output MediaPipe classifies on.
SCORES_OUTPUT = "probabilities"
_PYWRAP = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


def supports(meta: dict[str, Any]) -> bool:
    """Whether a MediaPipe ``ImageClassifier`` file is derived for this model.

    Softmax classifiers on images of a fixed size (MediaPipe resizes to the input
    tensor's height and width, so they must be known).

    Example:
        >>> supports({"task": "classification", "class_names": ["a", "b"],
        ...           "input": {"name": "image", "shape": [96, 96, 3]}})
        True
        >>> supports({"task": "classification", "class_names": ["a", "b"],
        ...           "input": {"name": "image", "shape": [None, None, 3]}})  # any size
        False
        >>> supports({"task": "regression", "input": {"name": "image"}})
        False
    """
    return (
        meta.get("task") == "classification"
        and bool(meta.get("class_names"))
        and (meta.get("input") or {}).get("name") == "image"
        and None not in list((meta.get("input") or {}).get("shape") or [None])[:2]
        and SCORES_OUTPUT in (meta.get("outputs") or [SCORES_OUTPUT])
    )


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


def keep_output(flatbuffer: bytes, output: str) -> bytes:
    """The same model with only the signature output ``output`` (subgraph and signature)."""
    import flatbuffers
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
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


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
