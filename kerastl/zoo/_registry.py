"""The model registry: register specs, resolve names, list with wildcards.

Importing this module never imports TensorFlow: the entries are read, on the first
lookup or listing, from the JSON tables in ``kerastl/zoo/tables/`` (written by
``tools/write_zoo_tables.py``).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from pathlib import Path

from kerastl.errors import ConfigError, UnknownNameError, choice_error
from kerastl.zoo._keras_apps_family import apps_specs
from kerastl.zoo._keras_hub_family import hub_specs
from kerastl.zoo._spec import MODALITIES, SOURCES, ModelSpec

_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}
_TABLE_DIR = Path(__file__).resolve().parent / "tables"
# Each table and what turns it into specs, in registration order.
_TABLES = (("keras_apps.json", apps_specs), ("keras_hub.json", hub_specs))
_loaded = False


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry.

    Raises:
        ConfigError: if the name or one of its aliases is already taken.

    Example:
        >>> from kerastl.zoo import get_spec
        >>> get_spec("resnet50").constructor
        'ResNet50'
    """
    for key in (spec.name, *spec.aliases):
        k = _normalise(key)
        if k in _REGISTRY or k in _ALIASES:
            raise ConfigError(f"Model name {key!r} is registered twice.")
    if spec.modality not in MODALITIES:
        raise ConfigError(f"{spec.name}: modality={spec.modality!r}, valid: {MODALITIES}")
    if spec.source not in SOURCES:
        raise ConfigError(f"{spec.name}: source={spec.source!r}, valid: {SOURCES}")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[_normalise(alias)] = spec.name
    return spec


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for file, specs_of in _TABLES:
        table = json.loads((_TABLE_DIR / file).read_text(encoding="utf-8"))
        for spec in specs_of(table):
            register(spec)


def get_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` registered as ``name`` (or an alias).

    Raises:
        UnknownNameError: naming close matches among the registered models.

    Example:
        >>> get_spec("ResNet50").name
        'resnet50'
    """
    _ensure_loaded()
    if not isinstance(name, str):
        raise ConfigError(f"Model name must be a string, got {type(name).__name__}: {name!r}.")
    key = _normalise(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]]
    raise UnknownNameError(_unknown_name_message(name, key))


def suggest_names(query: str, limit: int = 10) -> list[str]:
    """Registered names for a mistyped or partial ``query``, best first.

    Names that start with the query, then names that contain it, then close
    spellings (edit distance); aliases count as their model's name.

    Example:
        >>> suggest_names("resnet5")[:2]
        ['resnet50', 'resnet50_v2']
    """
    _ensure_loaded()
    key = _normalise(query)
    names = {n: n for n in _REGISTRY} | {a: c for a, c in _ALIASES.items()}
    found: list[str] = []
    if key:
        found += sorted({c for n, c in names.items() if n.startswith(key)})
        found += sorted({c for n, c in names.items() if key in n})
    # the 3 closest models (aliases of one model match together: ask for more names)
    close = difflib.get_close_matches(key, list(names), n=12, cutoff=0.6)
    found += list(dict.fromkeys(names[c] for c in close))[:3]
    return list(dict.fromkeys(found))[:limit]


def _unknown_name_message(name: str, key: str) -> str:
    """The message of an unknown model name: suggestions, the count, where to list them."""
    msg = f"Unknown model {name!r} (argument 'name')."
    close = suggest_names(name)
    if close:
        msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    more = len({n for n in _REGISTRY if key and key in n} - set(close))
    if more:
        msg += f" ({more} more contain {key!r}: `kerastl models '*{key}*'`.)"
    return (
        msg + f" {len(_REGISTRY)} models in all; list them with `kerastl models` or "
        "kerastl.list_models()."
    )


def list_models(
    pattern: str = "*",
    modality: str | None = None,
    source: str | None = None,
    pretrained: bool | str | None = None,
) -> list[str]:
    """List registered model names, sorted.

    Args:
        pattern: Shell wildcard over names (``"efficientnet*"``), case-insensitive.
        modality: Keep only ``"image"``, ``"text"`` or ``"audio"`` models.
        source: Keep only ``"keras.applications"`` or ``"keras_hub"`` models.
        pretrained: ``True`` keeps models with downloadable weights, ``False``
            those without, a string keeps models offering that weight tag.

    Returns:
        Matching registry names.

    Example:
        >>> list_models("mobilenet_v3*", source="keras.applications")
        ['mobilenet_v3_large', 'mobilenet_v3_small']
        >>> list_models("mobilenet_v3_small*", source="keras_hub")
        ['mobilenet_v3_small_050_imagenet', 'mobilenet_v3_small_100_imagenet']
    """
    _ensure_loaded()
    if modality is not None and modality not in MODALITIES:
        raise choice_error("modality", modality, MODALITIES)
    if source is not None and source not in SOURCES:
        raise choice_error("source", source, SOURCES)
    pat = _normalise(pattern or "*")
    out = []
    for name, spec in _REGISTRY.items():
        if not fnmatch.fnmatchcase(name, pat):
            continue
        if modality and spec.modality != modality:
            continue
        if source and spec.source != source:
            continue
        if isinstance(pretrained, bool) and bool(spec.pretrained) != pretrained:
            continue
        if isinstance(pretrained, str) and pretrained not in spec.pretrained:
            continue
        out.append(name)
    return sorted(out)


def model_info(name: str) -> dict:
    """Describe a model: input spec, preprocessing, groups, taps, params, licence.

    Example:
        >>> model_info("resnet50")["feature_dim"]
        2048
    """
    return get_spec(name).to_dict()


def all_specs() -> list[ModelSpec]:
    """Every registered spec, sorted by name."""
    _ensure_loaded()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
