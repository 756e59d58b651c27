"""Run configs: the YAML schema, defaults, validation and overrides (no TensorFlow).

Every key is declared once in :data:`SCHEMA` with its type, default and
choices. Validation walks the user's YAML and stops at the first bad key with
a message that gives the dotted key (``train.epochs``), echoes the value and
suggests close matches for misspelt keys or choices.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerastl.errors import ConfigError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
CACHE_FEATURES = ("auto", "memory", "disk", "off")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
#: Which epoch's weights a run keeps as model.keras (``train.keep``).
KEEP = ("best", "last")
SOURCES = ("folder", "csv", "numpy", "tfds", "text")
TASKS = ("classification", "binary", "multilabel", "regression", "embedding")
#: Formats the export step writes (as :data:`kerastl.export.FORMATS`; a test keeps them
#: equal). Every run writes model.keras, so ``keras`` is no export format.
EXPORT_FORMATS = ("saved_model", "tflite", "onnx")
#: Metrics Keras logs per ``model.task`` (as :data:`kerastl.core.heads.TASKS` compiles them;
#: a test keeps them equal); ``train.monitor`` is one, or its ``val_`` form. ``top5`` is
#: logged only with more than 5 classes.
TASK_METRICS = {
    "classification": ("loss", "accuracy", "top5"),
    "binary": ("loss", "accuracy", "auc"),
    "multilabel": ("loss", "accuracy", "auc"),
    "regression": ("loss", "mae", "rmse"),
    "embedding": ("loss",),
}
#: TFLite precisions of ``export.quantize`` (as :data:`kerastl.export.QUANTIZE`; no TF import).
QUANTIZE = ("float32", "float16", "dynamic", "int8")
#: ``data.augment`` presets and blocks (as ``kerastl.data`` declares them; a test keeps them equal).
AUGMENT_PRESETS = ("none", "light", "standard", "strong")
AUGMENT_BLOCKS = ("flip", "vflip", "rotation", "zoom", "translation", "contrast", "brightness")
_URL_SCHEMES = ("https://", "http://", "file://")
_PATH_SUFFIXES = (".h5", ".keras", ".zip", ".tar", ".tar.gz", ".tgz")

_REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One config key: accepted types, default, choices and numeric bounds."""

    types: tuple
    default: Any = None
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


_NONE = type(None)
SCHEMA: dict[str, Any] = {
    "name": Field((str, _NONE), None, help="run name (default: the YAML file's stem)"),
    "output_dir": Field((str,), "runs", help="runs are written to output_dir/name"),
    "exist_ok": Field(
        (bool,),
        False,
        help="replace a finished run of this name; false: keep it and write to name-2, ...",
    ),
    "seed": Field((int,), 0, min=0),
    "strategy_from": Field(
        (str, _NONE),
        None,
        choices=("advise", None),
        help="advise: `kerastl train` measures the data first and sets model.freeze, the "
        "learning rates and finetune as `kerastl advise` recommends",
    ),
    "model": {
        "backbone": Field((str,), _REQUIRED, help="registry name, e.g. mobilenet_v3_small"),
        "task": Field((str,), "classification", choices=TASKS),
        "weights": Field((str, _NONE), None, help="null, imagenet/preset, or a file"),
        "input_size": Field((int, list, _NONE), None, help="side or [h, w]; default: backbone's"),
        "channels": Field((int,), 3, choices=(1, 3)),
        "dropout": Field((float, int), 0.2, min=0.0, max=0.99),
        "pooling": Field((str,), "avg", choices=("avg", "max")),
        "freeze": Field((str, dict, bool), "backbone", help="backbone | none | last:N | up_to:G"),
        "train_batchnorm": Field(
            (bool, _NONE),
            None,
            help="BatchNorm of trainable groups trains; null: yes for weights null "
            "(random init), no for pretrained weights",
        ),
        "embedding_dim": Field((int,), 128, min=1),
        "options": Field((dict,), {}, help="adapter options, e.g. sequence_length for text"),
    },
    "data": {
        "source": Field((str, _NONE), None, choices=SOURCES + (None,)),
        "path": Field((str, _NONE), None),
        "val_path": Field(
            (str, _NONE), None, help="separate validation data (same source; tfds: val_tfds_split)"
        ),
        "val_split": Field((float,), 0.2, min=0.0, max=0.9),
        "class_names": Field((list, _NONE), None),
        "path_column": Field((str,), "path"),
        "label_column": Field((str, list), "label"),
        "text_column": Field((str,), "text"),
        "root": Field((str, _NONE), None),
        "name": Field((str, _NONE), None, help="TFDS dataset name"),
        "data_dir": Field((str, _NONE), None, help="TFDS data_dir"),
        "split": Field((str,), "train", help="TFDS split for training"),
        "val_tfds_split": Field((str, _NONE), None, help="TFDS split for validation"),
        "augment": Field((str, list, bool, _NONE), "none"),
        "shuffle": Field((bool,), True, help="seeded shuffle of the training data each epoch"),
        "cache": Field(
            (bool, str),
            True,
            help="cache decoded examples: true (memory), false, or a file path (one file per "
            "dataset and input size: <path>.<key>, its folder made)",
        ),
        "verify": Field((bool,), True, help="decode every file once to skip corrupt ones"),
    },
    "train": {
        "epochs": Field((int,), 10, min=0),
        "batch_size": Field((int,), 32, min=1, help="per replica; scaled by the replica count"),
        "learning_rate": Field((float, int), 1e-3, min=0.0),
        "optimizer": Field((str,), "adam", choices=OPTIMIZERS),
        "weight_decay": Field((float, int), 0.0, min=0.0),
        "schedule": Field((str,), "cosine", choices=SCHEDULES),
        "warmup_epochs": Field((int, float), 0, min=0),
        "early_stopping": Field((int, bool), 5, min=0, help="patience in epochs; 0/false disables"),
        "monitor": Field(
            (str,),
            "val_loss",
            help="a metric the task logs (loss, accuracy...), val_ form: on the validation data",
        ),
        "keep": Field(
            (str,),
            "best",
            choices=KEEP,
            help="model.keras: the epoch with the best monitor, or the last epoch "
            "(no epoch chosen on the validation data, whose scores stay unbiased)",
        ),
        "cache_features": Field((str, bool), "auto", choices=CACHE_FEATURES + (True, False)),
        "cache_dir": Field(
            (str, _NONE), None, help="disk cache of features (cache_features: disk)"
        ),
        "strategy": Field((str,), "auto", choices=STRATEGIES),
        "precision": Field((str,), "float32", choices=PRECISIONS),
        "jit_compile": Field((bool, str), False, choices=(True, False, "auto")),
        "resume": Field((bool,), True, help="continue an interrupted run (BackupAndRestore)"),
        "tensorboard": Field((bool,), True),
        "verbose": Field((int, str), "auto", choices=(0, 1, 2, "auto")),
        "steps_per_execution": Field((int,), 1, min=1),
        "precise_bn": Field(
            (int, bool, str),
            "auto",
            help="recompute trainable BatchNorm statistics over N batches "
            "each epoch (true = 4); auto: on (4) for a random-init backbone whose "
            "BatchNorm trains, where the moving averages lag far behind",
        ),
    },
    "finetune": {
        "epochs": Field((int,), 0, min=0, help="phase 2 epochs; 0 skips phase 2"),
        "freeze": Field((str, dict, bool), "none", help="policy while fine-tuning"),
        "learning_rate": Field((float, int, _NONE), None, help="default: train.learning_rate / 10"),
        "schedule": Field((str,), "cosine", choices=SCHEDULES),
        "warmup_epochs": Field((int, float), 0, min=0),
        "gradual_every": Field((int,), 0, min=0, help="unfreeze one group every N epochs"),
        "layer_decay": Field((float, int, _NONE), None, help="discriminative rates, in (0, 1]"),
    },
    "evaluate": {
        "top_k": Field((int,), 5, min=1),
        "threshold": Field((float,), 0.5, min=0.0, max=1.0),
    },
    "export": {
        "formats": Field((list, str), [], help=f"any of {list(EXPORT_FORMATS)}"),
        "quantize": Field((list, str), []),
        "name": Field((str, _NONE), None),
        "version": Field(
            (int, _NONE), None, min=1, help="SavedModel version; null = highest present + 1"
        ),
    },
}


def _type_name(types: tuple) -> str:
    names = {
        int: "integer",
        float: "number",
        str: "string",
        bool: "true/false",
        list: "list",
        dict: "mapping",
        _NONE: "null",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


def _number_from_text(value: Any, types: tuple) -> Any:
    """A string that reads as a number, for a number field: ``"1e-3"`` -> ``0.001``.

    PyYAML reads ``1e-3`` (no dot in the mantissa) as a string. Integer fields take
    the string only when it is a whole number (``"1e3"`` -> ``1000``); anything else
    is returned unchanged, for the type check to refuse.
    """
    if not isinstance(value, str) or str in types or not ({int, float} & set(types)):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    if not math.isfinite(number):
        return value
    if float in types:
        return number
    return int(number) if number.is_integer() else value


def _check_value(key: str, value: Any, spec: Field, where: str) -> Any:
    types = spec.types
    value = _number_from_text(value, types)
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:
        ok = False  # YAML's true is not an integer here
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"{where}: {key}: expected {_type_name(types)}, got {type(value).__name__} {value!r}."
        )
    if spec.choices is not None and not isinstance(value, (list, dict)):
        if value not in spec.choices:
            valid = [c for c in spec.choices if c is not None]
            close = difflib.get_close_matches(str(value), [str(c) for c in valid], n=2, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"{where}: {key}: unknown value {value!r}.{hint} Valid choices: "
                + ", ".join(repr(c) for c in valid)
                + "."
            )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.min is not None and value < spec.min:
            raise ConfigError(f"{where}: {key}: expected >= {spec.min}, got {value!r}.")
        if spec.max is not None and value > spec.max:
            raise ConfigError(f"{where}: {key}: expected <= {spec.max}, got {value!r}.")
    return value


def _validate(section: dict, schema: dict, prefix: str, where: str) -> dict:
    if not isinstance(section, dict):
        raise ConfigError(
            f"{where}: {prefix.rstrip('.') or 'the file'}: expected a mapping of keys, "
            f"got {type(section).__name__} {section!r}."
        )
    out: dict[str, Any] = {}
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=2, cutoff=0.6)
            # A key placed in the wrong section: say where it belongs.
            elsewhere = [
                f"{s}.{key}"
                for s, sub in SCHEMA.items()
                if isinstance(sub, dict) and key in sub and f"{s}." != prefix
            ]
            hint = (
                f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?"
                if close
                else f" It belongs under {elsewhere[0]!r}."
                if elsewhere
                else ""
            )
            raise ConfigError(
                f"{where}: unknown key {dotted!r}.{hint} Valid keys"
                + (f" under {prefix.rstrip('.')!r}" if prefix else "")
                + ": "
                + ", ".join(sorted(schema))
                + "."
            )
        spec = schema[key]
        if isinstance(spec, dict):
            out[key] = _validate(value if value is not None else {}, spec, dotted + ".", where)
        else:
            out[key] = _check_value(dotted, value, spec, where)
    for key, spec in schema.items():
        if key in out:
            continue
        if isinstance(spec, dict):
            out[key] = _validate({}, spec, f"{prefix}{key}.", where)
        elif spec.required:
            raise ConfigError(f"{where}: missing required key {prefix + key!r} ({spec.help}).")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def validate_config(config: dict, where: str = "config") -> dict:
    """Validate a run config and fill in defaults.

    Args:
        config: The parsed YAML (a dict).
        where: Names the file in error messages.

    Returns:
        The resolved config: every key present, types checked.

    Raises:
        ConfigError: pointing at the offending key, with close matches.

    Example:
        >>> cfg = {"model": {"backbone": "resnet50"}, "data": {"path": "x"}}
        >>> validate_config(cfg)["train"]["epochs"]
        10
        >>> validate_config({**cfg, "train": {"epoch": 3}})
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: config: unknown key 'train.epoch'. Did you mean 'train.epochs'? ...
    """
    resolved = _validate(config or {}, SCHEMA, "", where)
    _cross_checks(resolved, where)
    return resolved


def _cross_checks(cfg: dict, where: str) -> None:
    from kerastl.zoo import get_spec

    try:
        spec = get_spec(cfg["model"]["backbone"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: model.backbone: {exc}") from None
    _check_modality(spec, where)
    data = cfg["data"]
    if data["source"] == "tfds" and not data["name"]:
        raise ConfigError(f"{where}: data.name: source 'tfds' needs the dataset name.")
    if data["source"] != "tfds" and not data["path"]:
        raise ConfigError(f"{where}: data.path: missing (a folder, CSV, .npz or JSONL file).")
    if data["source"] == "tfds" and data["val_path"]:
        raise ConfigError(
            f"{where}: data.val_path: got {data['val_path']!r}, but source 'tfds' reads no "
            "paths (data.split selects the training split). Select the TFDS validation split "
            "with data.val_tfds_split (e.g. 'validation' or 'test') and remove data.val_path."
        )
    _check_input_size(cfg["model"]["input_size"], spec, where)
    _check_weights(cfg["model"]["weights"], spec, where)
    _check_augment(data["augment"], spec, where)
    _check_policies(cfg, spec, where)
    decay = cfg["finetune"]["layer_decay"]
    if decay is not None and not 0.0 < decay <= 1.0:
        raise ConfigError(
            f"{where}: finetune.layer_decay: expected a factor in (0, 1], got {decay!r}."
        )
    _check_export(cfg["export"], where)
    _check_monitor(cfg, where)
    pbn = cfg["train"]["precise_bn"]
    if isinstance(pbn, str) and pbn != "auto":
        raise ConfigError(
            f"{where}: train.precise_bn: expected auto, true/false or a number of batches, "
            f"got {pbn!r}."
        )
    if cfg["train"]["epochs"] == 0 and cfg["finetune"]["epochs"] == 0:
        raise ConfigError(
            f"{where}: train.epochs and finetune.epochs are both 0: nothing to train."
        )


def _check_monitor(cfg: dict, where: str) -> None:
    """``train.monitor`` names a metric the task logs: another name kept no best epoch
    (the checkpoint saw no value and the last epoch's weights stayed)."""
    task, monitor = cfg["model"]["task"], cfg["train"]["monitor"]
    names = TASK_METRICS[task]
    valid = [f"val_{n}" for n in names] + list(names)
    if monitor not in valid:
        raise ConfigError(
            f"{where}: train.monitor: {_choice_text('train.monitor', monitor, valid)} "
            f"(the metrics model.task {task!r} logs; val_ ones need validation data, "
            "top5 more than 5 classes)"
        )


#: Backbone modalities a run config trains (its data sources read images and text).
CONFIG_MODALITIES = ("image", "text")


def _check_modality(spec: Any, where: str) -> None:
    """Refuse an audio backbone: run configs have no audio data source yet."""
    if spec.modality in CONFIG_MODALITIES:
        return
    raise ConfigError(
        f"{where}: model.backbone: {spec.name!r} is an {spec.modality} model, and run configs "
        f"(kerastl train, kerastl.train) take {' and '.join(CONFIG_MODALITIES)} backbones only: "
        "they have no audio data source yet. Use the Python API: model = kerastl.build("
        f"{spec.name!r}, num_classes=N); model.fit(waveforms, labels) with waveforms a float32 "
        "(N, samples) array of 16 kHz audio in [-1, 1]; then kerastl.export(model, 'out'). "
        "Or choose an image or text backbone (kerastl models --modality image / text)."
    )


def _choice_text(key: str, value: Any, valid: tuple | list) -> str:
    from kerastl.errors import choice_error

    return str(choice_error(key, value, valid))


def _choices(where: str, key: str, value: Any, valid: tuple | list) -> ConfigError:
    return ConfigError(f"{where}: {key}: {_choice_text(key, value, valid)}")


def _check_input_size(size: Any, spec: Any, where: str) -> None:
    if isinstance(size, list) and (len(size) != 2 or not all(isinstance(v, int) for v in size)):
        raise ConfigError(
            f"{where}: model.input_size: expected an int or [height, width], got {size!r}."
        )
    if size is None or spec.modality != "image":
        return
    sides = size if isinstance(size, list) else [size, size]
    if min(sides) < spec.min_input_size:
        raise ConfigError(
            f"{where}: model.input_size: {size!r} is below the minimum of {spec.name} "
            f"({spec.min_input_size} px per side; default {spec.input_size}). Valid: an int "
            f">= {spec.min_input_size} or [height, width] with both >= {spec.min_input_size}."
        )


def _weight_names(spec: Any) -> list[str]:
    """Named weights ``model.weights`` accepts for ``spec`` (no TensorFlow needed)."""
    names = list(spec.pretrained)
    if spec.source == "keras_hub" and spec.modality == "image" and spec.pretrained:
        names.append("imagenet")  # the entry's own pretrained preset (kerastl.build)
    if spec.source == "keras_hub":  # presets of the same family load into this architecture
        from kerastl.zoo import get_spec, list_models

        for other in list_models(source="keras_hub"):
            o = get_spec(other)
            if o.family == spec.family:
                names.extend(o.pretrained)
    return sorted(set(names))


def _check_weights(weights: Any, spec: Any, where: str) -> None:
    if weights is None or weights.startswith(_URL_SCHEMES):
        return
    looks_like_path = (
        os.sep in weights or weights.startswith((".", "~")) or weights.endswith(_PATH_SUFFIXES)
    )
    if os.path.exists(os.path.expanduser(weights)):
        check_weights_architecture(os.path.expanduser(weights), spec, f"{where}: model.weights")
        return
    if looks_like_path:
        raise ConfigError(
            f"{where}: model.weights: no file or folder at {weights!r}. Valid: null (random "
            f"init), {', '.join(repr(w) for w in spec.pretrained)}, an existing weights file / "
            "preset folder / archive, or a URL with '#sha256='."
        )
    names = _weight_names(spec)
    if weights not in names:
        raise _choices(where, "model.weights", weights, [*names, "null", "<a file path>"])


def saved_backbone(path: str | os.PathLike) -> str | None:
    """The backbone a kerastl ``.keras`` file was saved from, read without TensorFlow.

    None for another file, a plain Keras model or a file that cannot be read (loading
    it reports why).

    Example:
        >>> saved_backbone("no/such/model.keras") is None
        True
    """
    import json
    import zipfile

    if not str(path).endswith(".keras"):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        backbone = config["config"]["kerastl_config"]["backbone"]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    return backbone if isinstance(backbone, str) else None


def check_weights_architecture(path: str | os.PathLike, spec: Any, argument: str) -> None:
    """Refuse a kerastl ``.keras`` file saved from another backbone than ``spec``'s.

    Raises:
        ConfigError: naming ``argument``, the file, the backbone it holds and the one asked for.
    """
    from kerastl.zoo import get_spec

    held = saved_backbone(path)
    if held is None:
        return
    try:
        same = get_spec(held).name == spec.name
    except ConfigError:  # a name this registry no longer has
        same = held == spec.name
    if same:
        return
    named = ", ".join(repr(w) for w in spec.pretrained)
    raise ConfigError(
        f"{argument}: {str(path)!r} holds a {held!r} model, which cannot seed the "
        f"backbone asked for, {spec.name!r} (a different architecture). Valid: a .keras "
        f"model or weights file of a {spec.name!r} backbone, "
        + (f"{named}, " if named else "")
        + f"or null (random init); or set the backbone to {held!r} to start from this file."
    )


def _check_augment(augment: Any, spec: Any, where: str) -> None:
    if augment in (None, False, "none", []):
        return
    if spec.modality != "image":  # the pipeline augments images only
        raise ConfigError(
            f"{where}: data.augment: got {augment!r}, but {spec.name!r} is a {spec.modality} "
            "model: augmentation applies to images only and would be ignored. Remove "
            "data.augment or set it to 'none'."
        )
    if augment is True:
        raise ConfigError(
            f"{where}: data.augment: got true; name a preset {list(AUGMENT_PRESETS)} "
            f"or list blocks from {list(AUGMENT_BLOCKS)}."
        )
    if isinstance(augment, str):
        if augment not in AUGMENT_PRESETS + AUGMENT_BLOCKS:
            raise _choices(where, "data.augment", augment, AUGMENT_PRESETS + AUGMENT_BLOCKS)
        return
    for block in augment:
        if block not in AUGMENT_BLOCKS:
            raise _choices(where, "data.augment", block, AUGMENT_BLOCKS)


def _check_policies(cfg: dict, spec: Any, where: str) -> None:
    from kerastl.core.policy import parse_policy

    groups = [g for g, _ in spec.groups]
    policies = {
        "model.freeze": cfg["model"]["freeze"],
        "finetune.freeze": cfg["finetune"]["freeze"],
    }
    for key, value in policies.items():
        try:
            policy = parse_policy(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
        if policy.kind == "up_to" and groups and policy.value not in groups:
            raise _choices(where, key, f"up_to:{policy.value}", [f"up_to:{g}" for g in groups])
        if policy.kind == "last" and groups and policy.value > len(groups):
            raise ConfigError(
                f"{where}: {key}: 'last:{policy.value}' asks for more groups than "
                f"{spec.name} has ({len(groups)}: {groups})."
            )
    ft = cfg["finetune"]
    if ft["gradual_every"] and ft["epochs"]:
        kind = parse_policy(ft["freeze"]).kind
        if kind not in ("none", "last", "up_to"):
            raise ConfigError(
                f"{where}: finetune.freeze: {ft['freeze']!r} cannot be combined with "
                f"finetune.gradual_every={ft['gradual_every']}: gradual unfreezing opens groups "
                "from the top down to the limit finetune.freeze sets. Valid with gradual_every: "
                "'none' (every group), 'last:N' or 'up_to:GROUP'."
            )


def check_export_name(cfg: dict, where: str = "config") -> None:
    """The name a run's exported files take (``export.name``, else the run's ``name``) is
    checked before training, not when the export starts after it.

    Example:
        >>> check_export_name({"name": "exp 1", "export": {"formats": ["tflite"], "name": None}})
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: config: name: 'exp 1' names the exported files (export.formats ['tflite']), which take letters, digits, '_', '-' and '.' (starting with a letter or digit); rename the run or set export.name.
    """
    from kerastl.export.pipeline import NAME_RE  # no TensorFlow import

    export = cfg["export"]
    if not export["formats"]:
        return
    key, name = ("export.name", export["name"]) if export["name"] else ("name", cfg["name"])
    if not NAME_RE.match(str(name)):
        raise ConfigError(
            f"{where}: {key}: {name!r} names the exported files (export.formats "
            f"{export['formats']}), which take letters, digits, '_', '-' and '.' (starting with "
            "a letter or digit); rename the run or set export.name."
        )


def _check_export(export: dict, where: str) -> None:
    for key in ("formats", "quantize"):
        if isinstance(export[key], str):
            export[key] = [s.strip() for s in export[key].split(",") if s.strip()]
    for fmt in export["formats"]:
        if fmt == "keras":
            raise ConfigError(
                f"{where}: export.formats: 'keras' is no export format: every run writes its "
                "model as model.keras in the run folder. Remove it; valid choices: "
                + ", ".join(repr(c) for c in EXPORT_FORMATS)
                + "."
            )
        if fmt not in EXPORT_FORMATS:
            close = difflib.get_close_matches(str(fmt), EXPORT_FORMATS, n=2, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"{where}: export.formats: unknown format {fmt!r}.{hint} Valid choices: "
                + ", ".join(repr(c) for c in EXPORT_FORMATS)
                + "."
            )
    for q in export["quantize"]:
        if q not in QUANTIZE:
            raise _choices(where, "export.quantize", q, QUANTIZE)
    if export["quantize"] and "tflite" not in export["formats"]:
        raise ConfigError(
            f"{where}: export.quantize: {export['quantize']} applies to TFLite files only; "
            f"add 'tflite' to export.formats (now {export['formats']})."
        )
    formats = export["formats"]
    if export["version"] is not None and formats and "saved_model" not in formats:
        raise ConfigError(
            f"{where}: export.version: {export['version']!r} applies to saved_model only; "
            f"add 'saved_model' to export.formats (now {export['formats']}) or set it to null."
        )


def check_data_paths(cfg: dict, where: str = "config") -> None:
    """Refuse data paths that do not exist (before any run file is written).

    Example:
        >>> cfg = load_config(None, {"model.backbone": "resnet50", "data.path": "/no/such"})
        >>> check_data_paths(cfg)
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: config: data.path: no file or folder at '/no/such'.
    """
    data = cfg["data"]
    if data["source"] == "tfds":
        return
    for key in ("path", "val_path"):
        value = data[key]
        if value and not os.path.exists(value):
            raise ConfigError(f"{where}: data.{key}: no file or folder at {value!r}.")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (value in YAML syntax).

    Example:
        >>> parse_override("train.epochs=3")
        ('train.epochs', 3)
        >>> parse_override("data.class_names=[a,b")
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: --set data.class_names: '[a,b' is not a YAML value (expected ',' or ']', but got '<stream end>'); quote a string, close lists ([a, b]) and maps ({k: v}).
    """
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set: expected KEY=VALUE such as train.epochs=3, got {text!r}.")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"--set {key.strip()}: {value!r} is not a YAML value ({problem}); quote a string, "
            "close lists ([a, b]) and maps ({k: v})."
        ) from None


def set_key(config: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating sections as needed."""
    parts = dotted.split(".")
    node = config
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a section.")
    node[parts[-1]] = value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Read a YAML run config (optional), apply ``{dotted.key: value}`` overrides, validate.

    Relative data paths are resolved against the YAML file's folder.

    Example:
        >>> cfg = load_config(None, {"model.backbone": "resnet50", "data.path": "x"})
        >>> cfg["name"]
        'run'
    """
    import yaml

    raw: dict = {}
    where = "config"
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config: no file at {str(path)!r}.")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML{at}: {problem}.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping at the top, got {type(raw).__name__}.")
        base = path.resolve().parent
    for key, value in (overrides or {}).items():
        set_key(raw, key, value)
    cfg = validate_config(raw, where)
    if cfg["name"] is None:
        cfg["name"] = path.stem if path is not None else "run"
    check_export_name(cfg, where)
    for key in ("path", "val_path", "root", "data_dir"):
        v = cfg["data"].get(key)
        if v and not os.path.isabs(os.path.expanduser(v)):
            cfg["data"][key] = str((base / v).resolve())
        elif v:
            cfg["data"][key] = os.path.expanduser(v)
    if path is not None and not os.path.isabs(cfg["output_dir"]):
        cfg["output_dir"] = str(Path.cwd() / cfg["output_dir"])
    return cfg
