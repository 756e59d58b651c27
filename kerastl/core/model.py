"""The model class kerastl returns, and loading saved models safely."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path
from typing import Any

import keras

from kerastl.core import heads, layers, losses, optimizers
from kerastl.core.meta import ModelMeta
from kerastl.errors import ConfigError, DataError, KerastlError


@keras.saving.register_keras_serializable(package="kerastl")
class KerastlModel(keras.Model):
    """A functional ``keras.Model`` that also carries kerastl's metadata.

    ``kerastl_config`` records the backbone, task, classes, input spec and
    preprocessing. It is saved inside ``.keras`` files and copied into every
    exported artifact. Everything else is plain Keras: ``fit``, ``predict``,
    ``save`` and ``keras.saving.load_model`` work as usual.

    Example:
        >>> import kerastl
        >>> m = kerastl.build("mobilenet_v3_small", num_classes=3, input_shape=(64, 64, 3))
        >>> m.kerastl_config["task"]
        'classification'
    """

    def __init__(self, *args, kerastl_config: dict[str, Any] | ModelMeta | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kerastl_config = kerastl_config or {}

    # Kept out of Keras' attribute tracking: a dict assigned to a layer becomes a
    # TrackedDict that references the model, and deep-copying that pickles the whole
    # model (1 s per get_config(), so per save, for MobileNetV3-Small).
    @property
    def kerastl_config(self) -> dict[str, Any]:
        return self.__dict__.setdefault("_kerastl_meta", {})

    @kerastl_config.setter
    def kerastl_config(self, value: dict[str, Any] | ModelMeta | None) -> None:
        if isinstance(value, ModelMeta):
            value = value.to_dict()
        self.__dict__["_kerastl_meta"] = plain(value or {})

    # Raw strings are the input of text models, but Keras' data adapters refuse
    # NumPy unicode arrays and lists of str; hand them over as object arrays. Targets
    # given as Python lists (``fit(texts, [0, 1, ...])``) become NumPy arrays too:
    # Keras refuses a list next to an array.
    def fit(self, x=None, y=None, *args, **kwargs):
        if isinstance(kwargs.get("validation_data"), (list, tuple)):
            v = _as_arrays(*kwargs["validation_data"])
            if len(v) > 1:
                v[1] = self._class_ids(v[1], "validation_data")
            kwargs["validation_data"] = tuple(v)
        x, y = _as_arrays(x, y)
        return super().fit(x, self._class_ids(y, "y"), *args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build the metrics and the optimizer before the first step is traced, strategy or not.

        Keras does this only under a ``tf.distribute`` strategy; without one it builds them
        inside the first traced step, and because that trace creates variables,
        ``tf.function`` traces the whole training step a second time. Built first, the step
        is traced once (``python -m bench.first_step``: the first ``fit`` call takes
        0.52-0.58x plain Keras' time). The build reads the data's element spec, not a batch:
        drawing one would start another pass over a shuffled dataset, and the first epoch
        would see another order. Anything the symbolic pass cannot do is left to Keras' own
        way (the step then traces twice, as before).
        """
        if self._distribute_strategy is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if data_batch is None:
            dataset = getattr(iterator, "_distributed_dataset", None)
            data_batch = getattr(dataset, "element_spec", None)  # shapes and dtypes
            if data_batch is None:
                return None
        with contextlib.suppress(Exception):  # Keras builds inside the traced step instead
            self._symbolic_build(data_batch=data_batch)
        return None

    def _class_ids(self, y: Any, argument: str) -> Any:
        """Class names given as labels (``fit(x, ["cat", "dog"])``) as the ids the head
        takes, by the model's ``class_names``; other labels as they are."""
        import numpy as np

        names = self.kerastl_config.get("class_names")
        task = self.kerastl_config.get("task")
        if not names or task not in ("classification", "binary"):
            return y
        if not (isinstance(y, np.ndarray) and y.dtype.kind in "USO" and y.ndim == 1):
            return y
        if y.dtype.kind == "O" and not all(isinstance(v, str) for v in y):
            return y
        index = {str(c): i for i, c in enumerate(names)}
        unknown = sorted({str(v) for v in y} - set(index))
        if unknown:
            raise DataError(
                f"{argument}: labels {unknown[:5]} are not class names of this model; "
                f"valid: {list(names)} (or their ids 0..{len(names) - 1})."
            )
        ids = np.asarray([index[str(v)] for v in y])
        return ids.astype("float32").reshape(-1, 1) if task == "binary" else ids

    def predict(self, x, *args, **kwargs):
        return super().predict(_strings_as_objects(x), *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        return super().evaluate(*_as_arrays(x, y), *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["kerastl_config"] = plain(self.kerastl_config)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        meta = config.pop("kerastl_config", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.kerastl_config = meta or {}
        return model


def _strings_as_objects(x: Any) -> Any:
    import numpy as np

    if isinstance(x, (list, tuple)) and x and all(isinstance(v, str) for v in x):
        return np.asarray(x, dtype=object)
    if isinstance(x, np.ndarray) and x.dtype.kind in "US":
        return x.astype(object)
    return x


def _as_arrays(x: Any, *rest: Any) -> list[Any]:
    """``x`` with strings as an object array; list targets (and sample weights) as arrays."""
    return [_strings_as_objects(x), *(_list_as_array(v) for v in rest)]


def _list_as_array(y: Any) -> Any:
    """A list or tuple of numbers, strings or rows of them as a NumPy array; else ``y``."""
    import numpy as np

    def leaf(v: Any) -> bool:
        return isinstance(v, (int, float, str, np.generic))

    if isinstance(y, (list, tuple)) and y:
        if all(leaf(v) or (isinstance(v, (list, tuple)) and all(map(leaf, v))) for v in y):
            return np.asarray(y)
    return y


def plain(value: Any) -> Any:
    """A deep copy of nested dicts / lists / tuples as plain Python containers.

    Keras wraps containers assigned to layers in tracking classes that reference
    the layer; ``copy.deepcopy`` of those pickles the model. Leaves are copied as is.

    Example:
        >>> plain({"a": [1, (2, 3)]})
        {'a': [1, (2, 3)]}
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return copy.deepcopy(value)


#: ``kerastl_config`` key: paths of the variables the optimizer was built on, when that is
#: more than the trainable ones (:class:`kerastl.freeze.GradualUnfreezing` builds it on every
#: variable that may become trainable). Not exported with the model.
OPTIMIZER_VARIABLES = "optimizer_variables"


def restore_optimizer_state(model: keras.Model, path: str | os.PathLike) -> bool:
    """Give a loaded model the optimizer state its ``.keras`` file holds, if Keras skipped it.

    Keras builds a loaded model's optimizer on the model's trainable variables, and skips
    the saved state (with a warning) when the optimizer was built on more: the variables
    gradual unfreezing had not unfrozen yet. The optimizer is then built again, from its
    config, on the variables :data:`OPTIMIZER_VARIABLES` names, in their order, and given
    the saved state. Returns whether it was.
    """
    import zipfile

    import h5py
    import numpy as np

    paths = (getattr(model, "kerastl_config", None) or {}).get(OPTIMIZER_VARIABLES)
    opt = getattr(model, "optimizer", None)
    if not paths or opt is None:  # every other load stops here, before walking the variables
        return False
    by_path = {v.path: v for v in model.variables}
    if any(p not in by_path for p in paths):
        return False
    with zipfile.ZipFile(path) as archive:
        if "model.weights.h5" not in archive.namelist():
            return False
        with archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as h5:
            stored = h5.get("optimizer/vars")
            if stored is None or len(stored) == len(opt.variables):
                return False  # nothing saved, or Keras loaded it
            state = {key: np.asarray(stored[key]) for key in stored}
    fresh = opt.__class__.from_config(opt.get_config())
    with model.distribute_strategy.scope():
        fresh.build([by_path[p] for p in paths])
    if len(fresh.variables) != len(state):
        return False
    fresh.load_own_variables(state)
    model.optimizer = fresh
    return True


def metadata(model: keras.Model) -> dict[str, Any]:
    """kerastl's metadata of ``model`` (empty for a plain Keras model)."""
    return plain(getattr(model, "kerastl_config", {}) or {})


#: Every serialisable class of the core, by the name Keras records in a saved
#: config. Higher layers add theirs (KerasHub layers: ``kerastl.zoo.custom_objects``).
CUSTOM_OBJECTS: dict[str, Any] = {
    f"kerastl>{cls.__name__}": cls
    for cls in (
        KerastlModel,
        layers.ImagePreprocessing,
        layers.RandomAffine,
        heads.PrototypeHead,
        losses.SupervisedContrastiveLoss,
        losses.L2SP,
        optimizers.GroupRatesOptimizer,
    )
}


def registered_names(path: str | os.PathLike) -> set[str]:
    """The ``registered_name`` entries of a ``.keras`` file's config (empty if unreadable)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return set()  # keras.saving.load_model reports the broken file
    names: set[str] = set()
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("registered_name"), str):
                names.add(node["registered_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def load_model(
    path: str | os.PathLike,
    safe_mode: bool = True,
    compile: bool = True,
    custom_objects: dict[str, Any] | None = None,
    after_load: Any = None,
) -> keras.Model:
    """Load a ``.keras`` file saved from a kerastl (or plain Keras) model.

    Runs with Keras' ``safe_mode`` by default: a file holding a ``Lambda`` layer
    or other arbitrary code is refused unless ``safe_mode=False``.

    Args:
        path: The ``.keras`` file.
        safe_mode: Refuse to deserialise arbitrary code.
        compile: Restore the training configuration.
        custom_objects: Classes beyond :data:`CUSTOM_OBJECTS`, by registered name.
        after_load: Called with the model once Keras has loaded it, before its optimizer
            state is restored (what Keras' file does not keep, put back).

    Raises:
        ConfigError: wrong extension. KerastlError: unreadable or unsafe file.

    Example:
        >>> model = kerastl.load_model("runs/exp1/model.keras")  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ConfigError(
            f"path: expected a .keras file, got {str(path)!r} (suffix {path.suffix!r}). "
            "Exported artifacts (SavedModel folder, .tflite, .onnx) load with "
            "kerastl.load_artifact()."
        )
    if not path.is_file():
        raise ConfigError(f"path: no file at {str(path)!r}.")
    table = {**CUSTOM_OBJECTS, **(custom_objects or {})}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = keras.saving.load_model(
                str(path), safe_mode=safe_mode, compile=compile, custom_objects=table
            )
        if after_load is not None:
            after_load(model)
        restored = compile and restore_optimizer_state(model, path)
        for w in caught:  # Keras' "Skipping variable loading for optimizer": no longer true
            if not (restored and "variable loading for optimizer" in str(w.message)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return model
    except ValueError as exc:
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise KerastlError(
                f"Refused to load {str(path)!r}: it contains arbitrary Python code "
                "(a Lambda layer or similar), which safe mode does not run. If you trust "
                "the file, pass safe_mode=False (CLI: --unsafe)."
            ) from exc
        raise KerastlError(f"Could not load {str(path)!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - zip/h5/json errors of a corrupt file
        raise KerastlError(f"Could not load {str(path)!r}: {type(exc).__name__}: {exc}") from exc
