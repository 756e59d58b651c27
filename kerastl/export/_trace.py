"""Turn a Keras model into the inference function every format exports.

* Inference mode is forced: the model is called with ``training=False``, so
  augmentation layers (``RandomFlip``...) pass inputs through and dropout is off.
* Names are stable: the input keeps its modality name (``image``), outputs are
  the task's (``probabilities`` / ``predictions`` / ``embedding``), ``logits``
  when the head has them, and ``class_id`` for classifiers.
* Mixed-precision models (``mixed_bfloat16`` / ``mixed_float16``) are cloned
  with a ``float32`` policy and the same weights: bfloat16 kernels are missing
  from onnxruntime and the LiteRT interpreter.
* Ops that LiteRT lacks are traced as builtins where an exact rewrite exists:
  ``roll`` (Swin's shifted windows) by a static shift becomes two slices and a
  concat instead of a Flex ``Roll`` op.
* A grouped convolution with one input channel per group (ConvNeXt's 7x7 "depthwise"
  ``Conv2D(groups=channels)``) is traced as the depthwise convolution it is
  (:mod:`kerastl.core.convs`), not through Keras' XLA-compiled grouped convolution.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl.core.convs import grouped_convs_as_depthwise
from kerastl.core.model import OPTIMIZER_VARIABLES
from kerastl.core.patching import patched
from kerastl.errors import ConfigError
from kerastl.export.modalities import ModalityExporter, get_modality

#: Tasks whose artifacts get a ``class_id`` output.
CLASS_ID_TASKS = ("classification", "binary")
#: Tasks whose head has a ``logits`` layer worth exporting too.
LOGIT_TASKS = ("classification", "binary", "multilabel")


def roll_by_slices(x: Any, shift: Any, axis: Any = None, fallback: Any = None) -> Any:
    """``np.roll`` along static axes by static shifts, as slices and a concat.

    Every runtime has those as builtins (LiteRT has no ``Roll``). Other cases go to
    ``fallback`` (default ``keras.ops.roll``).

    Example:
        >>> import numpy as np
        >>> x = np.arange(12.0).reshape(3, 4)
        >>> bool((np.asarray(roll_by_slices(x, (1, -1), (0, 1))) == np.roll(x, (1, -1), (0, 1))).all())
        True
        >>> bool((np.asarray(roll_by_slices(x, 1)) == np.roll(x, 1)).all())  # axis=None: fallback
        True
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    axes = axis if isinstance(axis, (list, tuple)) else (axis,)
    shifts = shift if isinstance(shift, (list, tuple)) else (shift,) * len(axes)
    static = (
        axis is not None
        and len(shifts) == len(axes)
        and all(isinstance(s, (int, np.integer)) for s in shifts)
        and all(isinstance(a, (int, np.integer)) and x.shape[a] is not None for a in axes)
    )
    if not static:
        return (fallback or keras.ops.roll)(x, shift, axis=axis)
    for s, a in zip(shifts, axes):
        n = x.shape[a]
        s = int(s) % n
        if s:
            head = [slice(None)] * x.shape.rank
            tail = list(head)
            head[a], tail[a] = slice(n - s, None), slice(None, n - s)
            x = tf.concat([x[tuple(head)], x[tuple(tail)]], axis=a)
    return x


@contextlib.contextmanager
def builtin_ops():
    """While tracing, swap backend ops for exact rewrites that every runtime runs well.

    ``roll`` (LiteRT lacks it) and grouped convolutions with one channel per group
    (:func:`kerastl.core.convs.conv_as_depthwise`; Keras would run them through XLA).
    """
    from keras.src.backend.tensorflow import numpy as backend_numpy

    roll_before = backend_numpy.roll

    def roll(x, shift, axis=None):
        return roll_by_slices(x, shift, axis, fallback=roll_before)

    with patched((backend_numpy, "roll", roll)), grouped_convs_as_depthwise():
        yield


@dataclass
class Prepared:
    """A model ready to trace: float32 inference model, metadata and output names."""

    model: keras.Model
    original: keras.Model
    meta: dict[str, Any]
    modality: ModalityExporter
    output_names: list[str]
    notes: list[str] = field(default_factory=list)
    mixed_precision: bool = False
    _fn: Any = None
    _exact_cache: Any = None

    @property
    def task(self) -> str | None:
        return self.meta.get("task")

    def serve_fn(self):
        """Python function: raw input tensor -> dict of named outputs (TensorFlow)."""
        import tensorflow as tf

        model, names, task = self.model, self.output_names, self.task

        def serve(inputs):
            with builtin_ops():
                outs = model(inputs, training=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            result = {}
            for name, value in zip([n for n in names if n != "class_id"], outs):
                result[name] = tf.cast(value, tf.float32)
            if "class_id" in names:
                main = result[names[0]]
                if task == "binary":
                    result["class_id"] = tf.cast(main[:, 0] > 0.5, tf.int64)
                else:
                    result["class_id"] = tf.argmax(main, axis=-1, output_type=tf.int64)
            return result

        return serve

    def tf_function(self):
        """The inference function as a ``tf.function`` with the raw input signature."""
        import tensorflow as tf

        if self._fn is None:
            self._fn = tf.function(
                self.serve_fn(), input_signature=self.modality.input_signature(), autograph=False
            )
        return self._fn

    def exact_predict(self, x: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
        """Float outputs of the same model computed in float64 (slow; for the referee).

        The result is kept for the next artifact validated on the same ``x``; the float64
        copy of the model (twice the float32 weights) is not: kept, it stayed in memory
        through every later conversion (ConvNeXt-B: 0.7 GB). Another ``x`` builds it again.

        Raises whatever Keras raises when a layer has no float64 kernel.
        """
        cached = self._exact_cache
        if cached is not None and cached[0] is x:
            return cached[1]
        import tensorflow as tf

        clone = float64_clone(self.model)
        # In a graph, whose executor frees each activation once its last reader ran; an
        # eager call of a Keras model keeps every layer's output until it returns, and
        # TensorFlow keeps that memory afterwards (ResNet-50, float64, batch 4: +0.9 GB).
        run = tf.function(
            lambda xb: clone([xb], training=False), autograph=False, reduce_retracing=True
        )
        names = [n for n in self.output_names if n != "class_id"]

        def call(xb: np.ndarray) -> dict[str, np.ndarray]:
            outs = run(xb.astype(np.float64) if xb.dtype.kind == "f" else xb)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            return {name: np.asarray(v, dtype=np.float64) for name, v in zip(names, outs)}

        from kerastl.export.validate import run_in_batches

        result = run_in_batches(call, np.asarray(x), batch_size)
        self._exact_cache = (x, result)
        return result

    def predict(self, x: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
        """Reference outputs of the Keras model (inference mode), as numpy.

        In batches of 4, the largest batch validation runs the files at
        (:data:`kerastl.export.validate.LARGE_BATCH`): the activations of a larger batch
        would set the export's peak memory (ConvNeXt-B at 224 px: +1.15 GB at batch 8,
        +0.5 GB at batch 4).
        """
        from kerastl.export.validate import run_in_batches

        return run_in_batches(self.tf_function(), x, batch_size)


def load_keras(
    path: str | os.PathLike,
    safe_mode: bool = True,
    unsafe_hint: str = "load it with kerastl.load_model(path, safe_mode=False) and pass the model",
) -> keras.Model:
    """:func:`kerastl.load_model` without the training configuration.

    Args:
        path: The ``.keras`` file.
        safe_mode: Refuse to deserialise arbitrary code (``Lambda`` layers).
        unsafe_hint: What the caller should do for a file safe mode refuses (the API and
            the CLI word it differently).

    Raises:
        KerastlError: unreadable file, or one safe mode refuses (with ``unsafe_hint``).
    """
    from kerastl.builder import load_model
    from kerastl.errors import KerastlError

    try:
        return load_model(Path(path), safe_mode=safe_mode, compile=False)
    except KerastlError as exc:
        if not safe_mode or "safe_mode" not in str(exc):
            raise
        raise KerastlError(
            f"Refused to load {str(path)!r}: it contains arbitrary Python code (a Lambda "
            f"layer or similar), which safe mode does not run. If you trust the file, "
            f"{unsafe_hint}."
        ) from exc.__cause__


#: How to turn a legacy ``.h5`` model file into a ``.keras`` one.
H5_HOWTO = (
    "Convert it once: keras.models.load_model('model.h5').save('model.keras') (a "
    "'.weights.h5' file holds weights only: build the model, model.load_weights(path), then "
    "model.save('model.keras'))."
)


def resolve_model(model: Any) -> keras.Model:
    """Accept a ``keras.Model`` or the path of a ``.keras`` file.

    Raises:
        ConfigError: anything else, with how to turn a legacy ``.h5`` file into a ``.keras``.
    """
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".keras"):
        return load_keras(
            model,
            unsafe_hint=f"load it with kerastl.load_model({str(model)!r}, safe_mode=False) and "
            "pass the model: kerastl.export(model, ...)",
        )
    if isinstance(model, (str, os.PathLike)) and str(model).endswith((".h5", ".hdf5")):
        raise ConfigError(
            f"model: {str(model)!r} is a legacy Keras HDF5 file; export takes a keras.Model or "
            f"a .keras file. {H5_HOWTO}"
        )
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"model: expected a keras.Model (from kerastl.build or kerastl.load_model) or the "
            f"path of a .keras file, got {type(model).__name__} {_short(model)}."
        )
    return model


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def find_metadata(model: keras.Model) -> dict[str, Any]:
    """kerastl metadata of ``model`` or of a kerastl model nested inside it.

    A nested model's metadata (labels, task) is used only when the outer model ends in
    an output of the same width (an augmentation or mixed-precision wrapper); a new head
    on top makes them wrong, and the outer model is treated as a plain Keras model.
    """
    meta = getattr(model, "kerastl_config", None)
    if meta:
        return copy.deepcopy(meta)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        meta = getattr(layer, "kerastl_config", None)
        if meta:
            if _width(layer) == _width(model):
                return copy.deepcopy(meta)
            return {}
    return {}


#: Final activation of a plain Keras model -> the kerastl task it is exported as.
_TASK_OF = {"softmax": "classification", "sigmoid (1 unit)": "binary"}


def _guess_task(model: keras.Model) -> str | None:
    """``"softmax"`` / ``"sigmoid (1 unit)"`` when a plain model ends in one, else None."""
    layer = model.layers[-1] if model.layers else None
    width = _width(model)
    if layer is None or not width or len(width) != 1:
        return None
    act = getattr(getattr(layer, "activation", None), "__name__", "")
    if isinstance(layer, keras.layers.Softmax) or (act == "softmax" and width[0] >= 2):
        return "softmax"
    if act == "sigmoid" and width[0] == 1:
        return "sigmoid (1 unit)"
    return None


def _width(model: Any) -> Any:
    try:
        return tuple(model.outputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _is_mixed(model: keras.Model) -> bool:
    for layer in model._flatten_layers(include_self=True, recursive=True):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and policy.compute_dtype in ("bfloat16", "float16"):
            return True
    return False


def _float32_config(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(
            obj.get("config"), dict
        ):
            name = obj["config"].get("name", "")
            if name.startswith("mixed_") or name in ("bfloat16", "float16"):
                return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    if obj in ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16"):
        return "float32"
    return obj


_FLOAT_NAMES = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")


def _float64_config(obj: Any, key: str | None = None) -> Any:
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(
            obj.get("config"), dict
        ):
            if obj["config"].get("name") in _FLOAT_NAMES:
                return {**obj, "config": {**obj["config"], "name": "float64"}}
            return obj
        return {k: _float64_config(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float64_config(v, key) for v in obj]
    if key == "dtype" and obj in _FLOAT_NAMES:
        return "float64"
    return obj


def float32_clone(model: keras.Model) -> keras.Model:
    """The same model (architecture, weights, metadata) computing in float32."""
    return _clone(model, _float32_config, "float32")


def float64_clone(model: keras.Model) -> keras.Model:
    """The same model computing in float64: the referee of float32 parity checks."""
    return _clone(model, _float64_config, "float64")


def _clone(model: keras.Model, convert, dtype: str) -> keras.Model:
    config = convert(keras.saving.serialize_keras_object(model))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        clone = keras.saving.deserialize_keras_object(config)
    finally:
        keras.config.set_dtype_policy(previous)
    # One variable at a time: ``set_weights(get_weights())`` held every weight as numpy,
    # then again cast, beside the clone's variables (float64: 5 x the float32 weights at
    # once, ConvNeXt-L +3.4 GB).
    if len(clone.weights) != len(model.weights):
        raise ValueError(
            f"{dtype} clone of {model.name!r}: {len(clone.weights)} weights, the model has "
            f"{len(model.weights)}."
        )
    for target, source in zip(clone.weights, model.weights):
        value = keras.ops.convert_to_numpy(source)
        target.assign(value.astype(dtype) if value.dtype.kind == "f" else value)
    return clone


def prepare(model: Any) -> Prepared:
    """Check the model and build what the format modules trace.

    Example:
        >>> import kerastl
        >>> p = prepare(kerastl.build("mobilenet_v3_small", num_classes=3,
        ...                           input_shape=(32, 32, 3)))  # doctest: +SKIP
        >>> p.output_names  # doctest: +SKIP
        ['probabilities', 'logits', 'class_id']
    """
    model = _check_model(resolve_model(model))
    notes: list[str] = []
    meta = _metadata(model, notes)
    modality = get_modality(meta)
    original = _plain_output(model)
    model = _traceable(original)
    mixed = _is_mixed(model)
    if mixed:
        model = float32_clone(model)
        notes.append(
            "mixed-precision model: exported graph computes in float32 (same weights); "
            "bfloat16/float16 kernels are missing in onnxruntime and LiteRT"
        )
    modality.model = model  # hooks that need the graph (text: token-id signature)
    infer, names = _inference_outputs(model, meta)
    return Prepared(
        model=infer,
        original=original,
        meta=meta,
        modality=modality,
        output_names=names,
        notes=notes,
        mixed_precision=mixed,
    )


#: Names TensorFlow accepts for a name scope (a root one must not start with ``_/>-``).
_SCOPE_RE = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")
_ROOT_SCOPE_RE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


def _plain_output(model: keras.Model) -> keras.Model:
    """``model`` with its one-entry output dict as a plain tensor (the same layers).

    Every caller (tracing, the float64 referee, Keras' own ``predict``) then gets a tensor,
    not ``{"probs": tensor}``; the output is exported under the dict's key
    (:func:`_dict_key`). The user's model is not changed.
    """
    if not isinstance(getattr(model, "_outputs_struct", None), dict):
        return model
    return keras.Model(model.inputs, model.outputs[0], name=model.name)


def _traceable(model: keras.Model) -> keras.Model:
    """``model``, or when TensorFlow refuses its name as a root name scope (``"my model"``)
    a functional model over the same layers and weights with a usable name.

    The file names still come from the model's name or ``name=``; only the traced graph
    is renamed. The user's model is not changed.
    """
    if _ROOT_SCOPE_RE.match(model.name):
        return model
    return keras.Model(model.inputs, model.outputs[0], name=_scope_name(model.name))


def _scope_name(name: str) -> str:
    """``name`` with every character a name scope refuses replaced by ``_``.

    Example:
        >>> _scope_name("my model"), _scope_name("-x"), _scope_name("")
        ('my_model', 'model_-x', 'model')
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return name if _ROOT_SCOPE_RE.match(name) else "model_" + name if name else "model"


def _check_model(model: keras.Model) -> keras.Model:
    """Refuse what export cannot trace: subclassed models, several inputs or outputs."""
    try:
        model.inputs  # noqa: B018 - subclassed models have no such attribute
    except AttributeError:
        raise ConfigError(
            f"model: {type(model).__name__} is a subclassed Keras model with no known inputs; "
            "export traces functional or Sequential models (kerastl.build, keras.Model(inputs, "
            "outputs), keras.Sequential with an Input)."
        ) from None
    if len(model.inputs or []) != 1:
        raise ConfigError(
            f"model: export supports models with one input, {model.name!r} has "
            f"{len(model.inputs or [])}."
        )
    if len(model.outputs or []) != 1:
        raise ConfigError(_outputs_message(model))
    bad = [
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not _SCOPE_RE.match(layer.name)
    ]
    if bad:
        raise ConfigError(
            f"model: layer names {bad[:5]} of {model.name!r} are not TensorFlow name scopes "
            "(letters, digits and '_.-/>' only; no spaces), so the model cannot be traced. "
            "Rename them where the model is built (e.g. name='my_dense')."
        )
    return model


def _outputs_message(model: keras.Model) -> str:
    """Why a model with several outputs (or none) is refused, and what to do instead."""
    n = len(model.outputs or [])
    struct = getattr(model, "_outputs_struct", None)
    names = sorted(struct) if isinstance(struct, dict) else list(getattr(model, "output_names", []))
    msg = f"model: export supports models with one output; {model.name!r} has {n}"
    msg += f" ({', '.join(map(str, names))})." if names and n else "."
    if find_metadata(model).get("task") == "features":
        return msg + " features_only extractors (several feature maps) are not exportable yet."
    if n:
        msg += (
            " Export one model per output, e.g. keras.Model(model.inputs, model.outputs[0]) "
            "(the same layers and weights), or build one head per model."
        )
    return msg


def _metadata(model: keras.Model, notes: list[str]) -> dict[str, Any]:
    """kerastl's metadata of ``model`` (inferred for a plain Keras model), input spec set."""
    from kerastl import __version__

    meta = find_metadata(model)
    meta = {k: v for k, v in meta.items() if k != OPTIMIZER_VARIABLES}  # training state only
    if not meta:
        task = _guess_task(model)
        notes.append(
            "model has no kerastl metadata; input/output spec inferred from its shapes"
            + (f"; its {task} output exported as a classifier" if task else "")
        )
        meta = {
            "modality": "image",
            "task": _TASK_OF.get(task),
            "class_names": None,
            "output": _dict_key(model) or ("probabilities" if task else "outputs"),
            "kerastl_version": __version__,
        }
    shape = list(model.inputs[0].shape[1:])
    meta["input"] = {
        **(meta.get("input") or {}),
        "name": (meta.get("input") or {}).get("name") or "image",
        "shape": shape,
        "dtype": (meta.get("input") or {}).get("dtype") or "float32",
    }
    return meta


def _dict_key(model: keras.Model) -> str | None:
    """The key of a model's one-entry output dict, when it is usable as an output name."""
    struct = getattr(model, "_outputs_struct", None)
    if not isinstance(struct, dict) or len(struct) != 1:
        return None
    key = next(iter(struct))
    ok = isinstance(key, str) and re.match(r"^[A-Za-z][A-Za-z0-9_]*$", key)
    return key if ok and key not in ("class_id", "logits") else None


def _inference_outputs(model: keras.Model, meta: dict[str, Any]) -> tuple[keras.Model, list[str]]:
    """The model to trace (with ``logits`` as a second output when reachable) and output names."""
    task = meta.get("task")
    main = meta.get("output") or "outputs"
    names = [main]
    infer = model
    if task in LOGIT_TASKS and main != "logits":
        try:
            logits = model.get_layer("logits").output
            if tuple(logits.shape) == tuple(model.outputs[0].shape):
                infer = keras.Model(model.inputs, [model.outputs[0], logits], name=model.name)
                names.append("logits")
        except (ValueError, AttributeError, TypeError):
            infer = model  # not a functional graph with a reachable "logits" layer
    if task in CLASS_ID_TASKS:
        names.append("class_id")
    return infer, names
