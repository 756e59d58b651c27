"""SavedModel for TF Serving: ``<out>/saved_model/<name>/<version>/``.

Written through :class:`keras.export.ExportArchive` with the inference
function (``training=False``) as ``serving_default`` and the modality's extra
signatures (``serving_bytes`` for images). Next to the graph:

* ``assets/labels.txt`` (one class name a line) and ``assets/kerastl_metadata.json``;
* ``assets.extra/tf_serving_warmup_requests``: ``PredictionLog`` TFRecords, written with
  ``tensorflow-serving-api``'s messages;
* ``assets.extra/predict_request*.pb``: the same requests as serialized gRPC
  ``PredictRequest`` messages;
* ``assets.extra/rest_request*.json``: sample REST bodies, each checked against the loaded
  signature (input names, dtypes, shapes) before it is written;
* ``assets.extra/saved_model_cli.txt``: the signatures as ``saved_model_cli show --all``
  prints them.

The version folder is built under a non-numeric temporary name beside its
final place and renamed only after validation, so TF Serving (which loads any
numeric subfolder as soon as it appears) never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerastl.errors import ConfigError, ExportError, check_positive_int, choice_error
from kerastl.export.formats.base import Artifact, Format, Job, Staged

if TYPE_CHECKING:
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
    check_positive_int("version", version, none_means="the next version")
    target = base / str(version)
    if target.exists():
        raise ConfigError(
            f"version: {str(target)!r} already exists (versions present: {existing}). "
            "Published versions are never overwritten; pass version=None to take "
            f"{(existing[-1] + 1) if existing else 1}, or another number."
        )
    return target, version


def write_graph(prepared: Prepared, path: Path, extras: bool = True) -> list[str]:
    """Write the inference SavedModel (``serving_default`` + modality signatures) to ``path``.

    Every signature calls the one traced inference function the Keras reference
    outputs came from (:meth:`Prepared.tf_function`), so the model is traced once per
    export, not once per signature (on MobileNetV3-Small, each trace took about 1 s of
    a 12 s write), and :func:`write_archive` does not trace it again.
    """
    traced = prepared.tf_function().get_concrete_function()
    spec = prepared.modality.input_signature()
    endpoints: dict[str, tuple[Any, list]] = {"serving_default": (traced, spec)}
    if extras:
        endpoints.update(prepared.modality.extra_signatures(traced))
    write_archive(prepared.model, endpoints, path)
    return list(endpoints)


def write_archive(model: Any, endpoints: dict[str, tuple[Any, list]], path: Path) -> None:
    """Keras' ``ExportArchive`` of ``model`` with ``endpoints`` (name -> (fn, input specs)).

    ``fn`` is a Python function, a ``tf.function`` or a concrete function; each is traced
    once, here or by its caller, and the archive gets the concrete function
    (:func:`_traced_once`). Each weight is stored once (:func:`_share_variables`); Keras'
    progress output is muted. Keras' walk for lookup tables runs without the default
    signature each Keras model offers: the walk traced it, the whole model once more per
    nested Keras model, and dropped it (ResNet-50: two traces, 1.6 s of a 13 s export);
    when no endpoint captures a resource other than a variable (no lookup table, as in
    image and audio models), there is nothing for the walk to find and it is skipped
    (ConvNeXt-B: 0.38 s).
    """
    import keras
    from keras.src.backend.tensorflow.layer import TFLayer

    from kerastl.core.patching import patched

    archive = keras.export.ExportArchive()
    archive.track(model)
    traced = {name: _traced_once(fn, spec) for name, (fn, spec) in endpoints.items()}
    for name, (_, spec) in endpoints.items():
        archive.add_endpoint(name, traced[name], spec)
    if not captures_resources(traced.values()):
        archive._tracked = []  # no lookup table to find: Keras' walk over the model skipped
    _share_variables(archive)
    with (
        patched((TFLayer, "_default_save_signature", None)),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        archive.write_out(str(path), verbose=False)


def captures_resources(functions: Any) -> bool:
    """Whether a concrete function captures a resource that is not a variable's handle.

    Such a resource (a lookup table's handle, say) must be reachable from the saved object
    for ``tf.saved_model.save`` to export the function.

    Example:
        >>> import tensorflow as tf
        >>> v = tf.Variable(2.0)
        >>> table = tf.lookup.StaticHashTable(
        ...     tf.lookup.KeyValueTensorInitializer(["a"], [1]), default_value=0)
        >>> spec = [tf.TensorSpec([None], tf.string)]
        >>> scaled = tf.function(lambda x: tf.strings.length(x) * 0 + tf.cast(v, tf.int32))
        >>> looked_up = tf.function(lambda x: table.lookup(x))
        >>> captures_resources([scaled.get_concrete_function(*spec)])
        False
        >>> captures_resources([looked_up.get_concrete_function(*spec)])
        True
    """
    import tensorflow as tf

    for fn in functions:
        handles = {id(v.handle) for v in fn.variables}
        for t in fn.captured_inputs:
            if t.dtype == tf.resource and id(t) not in handles:
                return True
    return False


def _traced_once(fn: Any, spec: list) -> Any:
    """The concrete function of ``fn`` for input ``spec`` (``fn`` itself if it is one).

    Given a function or a ``tf.function``, Keras' archive keeps a ``tf.function``, which
    TensorFlow's save lists again in its own context, whose cache key differs (the save's
    variable policy): the function was traced twice (ConvNeXt-B's SavedModel write: 3.6 ->
    2.6 s with one trace).
    """
    import tensorflow as tf

    if isinstance(fn, tf.types.experimental.ConcreteFunction):
        return fn
    if isinstance(fn, tf.types.experimental.PolymorphicFunction) and fn.input_signature:
        return fn.get_concrete_function()
    return tf.function(fn, input_signature=spec, autograph=False).get_concrete_function()


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
    names = write_graph(prepared, path)

    assets = path / "assets"
    assets.mkdir(exist_ok=True)
    (assets / METADATA_FILE).write_text(json.dumps(prepared.meta, indent=1, default=str))
    if prepared.meta.get("class_names"):
        (assets / LABELS_FILE).write_text("\n".join(prepared.meta["class_names"]) + "\n")
    extra = path / "assets.extra"
    extra.mkdir(exist_ok=True)
    requests = prepared.modality.warmup_requests(samples)
    write_warmup_requests(extra / WARMUP_FILE, model_name, requests)
    for signature, inputs in requests:  # the same requests as gRPC bodies
        request = predict_request(model_name, signature, inputs)
        (extra / grpc_request_file(signature)).write_bytes(request.SerializeToString())
    signatures = signature_inputs(path)
    for fname, body in prepared.modality.rest_examples(samples).items():
        check_rest_request(path, body, signatures)
        (extra / fname).write_text(json.dumps(body))
    (extra / "saved_model_cli.txt").write_text(saved_model_cli_show(path))
    return {"signatures": names, "warmup_requests": len(requests)}


def saved_model_cli_show(path: Path) -> str:
    """What ``saved_model_cli show --dir PATH --all`` prints about the signatures.

    Read from ``saved_model.pb`` alone: the tag-sets, each SignatureDef's inputs and
    outputs, and the ops. The listing of the concrete functions that ``--all`` ends with
    is left out: it loads the whole model (variables included) a second time.
    """
    from tensorflow.python.tools import saved_model_cli, saved_model_utils

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        for meta in saved_model_utils.read_saved_model(str(path)).meta_graphs:
            tags = ", ".join(meta.meta_info_def.tags)
            print(f"\nMetaGraphDef with tag-set: '{tags}' contains the following SignatureDefs:")
            for key in sorted(meta.signature_def):
                print(f"\nsignature_def['{key}']:")
                saved_model_cli._show_inputs_outputs_mgd(meta, key, indent=1)
            saved_model_cli._show_ops_in_metagraph_mgd(meta)
    return re.sub(r"\n{3,}", "\n\n", buf.getvalue())


def signature_inputs(saved_model_dir: Path) -> dict[str, dict[str, Any]]:
    """Signature name -> input name -> ``tf.TensorSpec``, read from ``saved_model.pb``.

    The facts ``saved_model_cli show`` prints, without loading the model.
    """
    import tensorflow as tf
    from tensorflow.python.tools import saved_model_utils

    meta = saved_model_utils.get_meta_graph_def(str(saved_model_dir), "serve")
    return {
        name: {
            key: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype), key)
            for key, info in sig.inputs.items()
        }
        for name, sig in meta.signature_def.items()
        if not name.startswith("__")  # __saved_model_init_op
    }


# -- TF Serving messages (tensorflow-serving-api) -----------------------------------------------


def predict_request(model_name: str, signature: str, inputs: dict[str, Any]) -> Any:
    """A ``tensorflow.serving.PredictRequest`` (the gRPC ``Predict`` body).

    Args:
        model_name: The model name TF Serving serves it under.
        signature: Signature to call (``"serving_default"``).
        inputs: Input name -> ``tensorflow.TensorProto``.

    Example:
        >>> predict_request("m", "serving_default", {}).model_spec.signature_name
        'serving_default'
    """
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for key, tensor in inputs.items():
        request.inputs[key].CopyFrom(tensor)
    return request


def prediction_log(model_name: str, signature: str, inputs: dict[str, Any]) -> bytes:
    """Serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    Example:
        >>> from tensorflow_serving.apis import prediction_log_pb2
        >>> log = prediction_log_pb2.PredictionLog.FromString(
        ...     prediction_log("m", "serving_default", {}))
        >>> log.predict_log.request.model_spec.name
        'm'
    """
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(predict_request(model_name, signature, inputs))
    return log.SerializeToString()


def grpc_request_file(signature: str) -> str:
    """File name of the sample gRPC ``PredictRequest`` of ``signature``.

    Example:
        >>> grpc_request_file("serving_default"), grpc_request_file("serving_bytes")
        ('predict_request.pb', 'predict_request_bytes.pb')
    """
    suffix = "" if signature == "serving_default" else "_" + signature.removeprefix("serving_")
    return f"predict_request{suffix}.pb"


def write_warmup_requests(path: Path, model_name: str, requests: list) -> None:
    """Write ``PredictionLog`` records as a TFRecord file (TF Serving's warm-up format)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            writer.write(prediction_log(model_name, signature, inputs))


def check_rest_request(
    saved_model_dir: Path, body: dict[str, Any], signatures: dict[str, Any] | None = None
) -> None:
    """Check a REST ``predict`` body against the SavedModel's signatures.

    The ``saved_model_cli show`` facts (:func:`signature_inputs`, or ``signatures``
    already read): the body's ``signature_name`` exists, every instance has the
    signature's input names (a bare value for a single input), each value's shape
    matches the input's shape without the batch axis and its type the input's dtype
    (``{"b64": ...}`` for strings).

    Raises:
        ExportError: naming the signature, the input and what differs.
    """
    from kerastl.errors import ExportError

    if signatures is None:
        signatures = signature_inputs(saved_model_dir)
    name = body.get("signature_name", "serving_default")
    if name not in signatures:
        raise ExportError(
            f"REST body: signature_name {name!r} is not in the SavedModel "
            f"(signatures: {sorted(signatures)})."
        )
    specs = signatures[name]
    for instance in body["instances"]:
        named = isinstance(instance, dict) and set(instance) != {"b64"}  # {"b64": ...} is a value
        single = len(specs) == 1 and not named
        values = {next(iter(specs)): instance} if single else instance
        if not isinstance(values, dict) or set(values) != set(specs):
            got = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ExportError(
                f"REST body for {name!r}: inputs {got} != signature inputs {sorted(specs)}."
            )
        for key, spec in specs.items():
            _check_rest_value(name, key, spec, values[key])


def _check_rest_value(signature: str, key: str, spec: Any, value: Any) -> None:
    from kerastl.errors import ExportError

    where = f"REST body for {signature!r}, input {key!r}"
    if spec.dtype.name == "string":
        if not (isinstance(value, dict) and set(value) == {"b64"}) and not isinstance(value, str):
            raise ExportError(f"{where}: expected a string or {{'b64': ...}}, got {value!r:.60}.")
        return
    arr = np.asarray(value)
    want = spec.shape.as_list()[1:]
    if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape)):
        raise ExportError(f"{where}: shape {list(arr.shape)} does not fit the signature's {want}.")
    if arr.dtype.kind not in ("fiu" if spec.dtype.is_floating else "iu"):
        raise ExportError(f"{where}: {arr.dtype} values for a {spec.dtype.name} input.")


class SavedModelFormat(Format):
    """``saved_model/<name>/<version>/``: a new TF Serving version, never overwritten."""

    name = "saved_model"
    versioned = True
    reads_saved_model = True
    overlaps_reference = True  # Keras on the inputs after the batch-1 ones, during the write

    def targets(self, out: Path, name: str, options, meta: dict) -> dict[str, Path]:
        return {"float32": version_dir(out, name, options.version)[0]}

    def artifacts(self, job: Job):
        path = job.staging / "saved_model"
        yield Staged("float32", path, lambda: write(job.prepared, path, job.x_val, job.name))

    def load(self, path: Path, num_threads: int | None = None) -> Artifact:
        return SavedModelArtifact(saved_model_root(path))

    def publish(self, source: Path, target: Path) -> None:
        os.rename(source, target)  # fails if the version appeared meanwhile


class SavedModelArtifact(Artifact):
    format = "saved_model"
    runtime = "tensorflow SavedModel signature 'serving_default'"

    def __init__(self, path: Path, signature: str = "serving_default"):
        meta_file = path / "assets" / "kerastl_metadata.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        super().__init__(path, meta)
        self._loaded = load_saved_model(path)
        if signature not in self._loaded.signatures:
            raise choice_error("signature", signature, list(self._loaded.signatures))
        self._fn = self._loaded.signatures[signature]
        self.signature = signature
        self.runtime = f"tensorflow SavedModel signature {signature!r}"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self._fn(**{self.input_name: tf.constant(x)})
        return {k: v.numpy() for k, v in out.items()}


def load_saved_model(path: Path) -> Any:
    """``tf.saved_model.load``, registering tensorflow-text's ops first when the graph needs
    them (a text model's tokenizer) and this process has not imported it.

    Raises:
        ExportError: the graph needs ops this process does not have (tensorflow-text not
            installed, or another op library); the message names the op.

    Example:
        >>> load_saved_model("no/such/folder")
        Traceback (most recent call last):
        ...
        OSError: SavedModel file does not exist at: no/such/folder/{saved_model.pbtxt|saved_model.pb}
    """
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(path))
    except Exception as exc:  # RuntimeError here; other TF versions raise FileNotFoundError
        found = re.search(r"Op type not registered '([^']+)'", str(exc))
        if found is None:
            raise
        op = found.group(1)
    try:
        import tensorflow_text  # noqa: F401 - registers the tokenizers' ops on import
    except ImportError:
        raise ExportError(
            f"{path}: the SavedModel uses the op {op!r}, which this TensorFlow does not "
            "register; text models' tokenizers need tensorflow-text "
            f"(pip install 'tensorflow-text~={tf.__version__.rsplit('.', 1)[0]}.0')."
        ) from None
    try:
        return tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - still an op this process lacks
        if "Op type not registered" not in str(exc):
            raise
        raise ExportError(f"{path}: the SavedModel uses ops this process lacks: {exc}") from exc


def saved_model_root(path: Path) -> Path:
    """The version folder to load: ``path`` itself, its latest version, or its only model."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((p for p in path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if versions and (versions[-1] / "saved_model.pb").is_file():
        return versions[-1]
    children = [p for p in path.iterdir() if p.is_dir()]
    if path.name == "saved_model" and len(children) == 1:
        return saved_model_root(children[0])
    raise ConfigError(
        f"path: {str(path)!r} is a folder without saved_model.pb or numeric version "
        "folders; pass an export's saved_model/<name>/<version> folder."
    )
