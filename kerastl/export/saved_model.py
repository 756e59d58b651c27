"""SavedModel for TF Serving: ``<out>/saved_model/<name>/<version>/``.

Written through :class:`keras.export.ExportArchive` with the inference
function (``training=False``) as ``serving_default`` and the modality's extra
signatures (``serving_bytes`` for images). Next to the graph:

* ``assets/labels.txt`` (one class name a line) and ``assets/kerastl_metadata.json``;
* ``assets.extra/tf_serving_warmup_requests``: ``PredictionLog`` TFRecords;
* ``assets.extra/rest_request*.json``: sample REST bodies;
* ``assets.extra/saved_model_cli.txt``: the ``saved_model_cli show --all`` dump.

The version folder is built under a non-numeric temporary name beside its
final place and renamed only after validation, so TF Serving (which loads any
numeric subfolder as soon as it appears) never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from kerastl._errors import ConfigError
from kerastl.export._trace import Prepared

METADATA_FILE = "kerastl_metadata.json"
LABELS_FILE = "labels.txt"
WARMUP_FILE = "tf_serving_warmup_requests"


def version_dir(root: Path, name: str, version: int | None) -> tuple[Path, int]:
    """The TF Serving version folder to publish: ``root/saved_model/name/version``.

    ``version=None`` takes one more than the highest numeric version present.

    Raises:
        ConfigError: ``version`` is not a positive integer or already exists.

    Example:
        >>> version_dir(Path("/tmp/none"), "m", None)[1]
        1
    """
    base = root / "saved_model" / name
    existing = (
        sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []
    )
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"version: expected a positive integer or None, got {version!r}.")
    target = base / str(version)
    if target.exists():
        raise ConfigError(
            f"version: {str(target)!r} already exists (versions present: {existing}). "
            "Published versions are never overwritten; pass version=None to take "
            f"{(existing[-1] + 1) if existing else 1}, or another number."
        )
    return target, version


def write_graph(prepared: Prepared, path: Path, extras: bool = True) -> list[str]:
    """Write the inference SavedModel (``serving_default`` + modality signatures) to ``path``."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(prepared.model)
    serve = prepared.serve_fn()
    archive.add_endpoint("serving_default", serve, prepared.modality.input_signature())
    signatures = ["serving_default"]
    if extras:
        for sig_name, (fn, spec) in prepared.modality.extra_signatures(serve).items():
            archive.add_endpoint(sig_name, fn, spec)
            signatures.append(sig_name)
    _share_variables(archive)
    with contextlib.redirect_stdout(io.StringIO()):
        archive.write_out(str(path), verbose=False)
    return signatures


def _share_variables(archive) -> None:
    """Make the archive's variable lists hold the TensorFlow variables the signatures use.

    Keras 3.15's ``ExportArchive`` lists the Keras wrappers under ``variables`` and the
    ``tf.Variable`` objects they wrap under ``_all_variables``; the checkpoint sees two
    objects and stores every weight twice (MobileNetV3-Small: 12.3 MB instead of 6.2 MB).
    Listing the wrapped variables themselves stores each once; the revived model still
    has ``.variables`` / ``.trainable_variables``.
    """
    tracked = archive._tf_trackable
    for attr in ("variables", "trainable_variables", "non_trainable_variables"):
        setattr(tracked, attr, [getattr(v, "_value", v) for v in getattr(tracked, attr)])


def write(prepared: Prepared, path: Path, samples: np.ndarray, model_name: str) -> dict[str, Any]:
    """Write the SavedModel with its signatures, assets and serving extras into ``path``."""
    signatures = write_graph(prepared, path)

    assets = path / "assets"
    assets.mkdir(exist_ok=True)
    (assets / METADATA_FILE).write_text(json.dumps(prepared.meta, indent=1, default=str))
    if prepared.meta.get("class_names"):
        (assets / LABELS_FILE).write_text("\n".join(prepared.meta["class_names"]) + "\n")
    extra = path / "assets.extra"
    extra.mkdir(exist_ok=True)
    requests = prepared.modality.warmup_requests(samples)
    write_warmup_requests(extra / WARMUP_FILE, model_name, requests)
    for fname, body in prepared.modality.rest_examples(samples).items():
        (extra / fname).write_text(json.dumps(body))
    (extra / "saved_model_cli.txt").write_text(saved_model_cli_show(path))
    return {"signatures": signatures, "warmup_requests": len(requests)}


def saved_model_cli_show(path: Path) -> str:
    """The text ``saved_model_cli show --dir PATH --all`` prints."""
    from tensorflow.python.tools import saved_model_cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        saved_model_cli._show_all(str(path))
    return re.sub(r"\n{3,}", "\n\n", buf.getvalue())


# -- PredictionLog wire format ------------------------------------------------------------------
# tensorflow_serving's protos are not a dependency; the few messages a warm-up file needs are
# written field by field (proto3 wire format):
#   PredictionLog { PredictLog predict_log = 6; }
#   PredictLog { PredictRequest request = 1; }
#   PredictRequest { ModelSpec model_spec = 1; map<string, TensorProto> inputs = 2; }
#   ModelSpec { string name = 1; string signature_name = 3; }


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature: str, inputs: dict[str, Any]) -> bytes:
    """Serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    Args:
        model_name: The model name TF Serving serves it under.
        signature: Signature to call (``"serving_default"``).
        inputs: Input name -> ``tensorflow.TensorProto``.

    Example:
        >>> prediction_log("m", "serving_default", {})[:2]
        b'2\\x18'
    """
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    request = _field(1, spec)
    for key, tensor in inputs.items():
        entry = _field(1, key.encode()) + _field(2, tensor.SerializeToString())
        request += _field(2, entry)
    return _field(6, _field(1, request))


def write_warmup_requests(path: Path, model_name: str, requests: list) -> None:
    """Write ``PredictionLog`` records as a TFRecord file (TF Serving's warm-up format)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            writer.write(prediction_log(model_name, signature, inputs))
