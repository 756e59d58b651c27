"""The model zoo: registry of backbones (no TensorFlow import) and their adapters.

Example:
    >>> from kerastl import zoo
    >>> zoo.list_models("convnext*")
    ['convnext_base', 'convnext_large', 'convnext_small', 'convnext_tiny', 'convnext_xlarge']
"""

from collections.abc import Iterable
from typing import Any

from kerastl.zoo._registry import all_specs, get_spec, list_models, model_info, register
from kerastl.zoo._spec import PREPROCESSING, ModelSpec, Tap

#: Registered names of the zoo's serialisable classes; they import keras_hub.
HUB_OBJECTS = (
    "kerastl>HubImagePreprocessing",
    "kerastl>HubTextPreprocessing",
    "kerastl>HubAudioPreprocessing",
    "kerastl>SequencePooling",
    "kerastl>EfficientNetBackbone",
)


def custom_objects(needed: Iterable[str] = HUB_OBJECTS) -> dict[str, Any]:
    """Every kerastl class a saved model may name: the core's and the zoo's.

    The zoo's KerasHub layers are imported (with keras_hub) only when ``needed``,
    the registered names a file uses, includes one of them.

    Example:
        >>> sorted(custom_objects([]))[:2]
        ['kerastl>GroupRatesOptimizer', 'kerastl>ImagePreprocessing']
    """
    from kerastl.core.model import CUSTOM_OBJECTS

    table = dict(CUSTOM_OBJECTS)
    if any(name in HUB_OBJECTS for name in needed):
        from kerastl.zoo.sources.layers import CUSTOM_OBJECTS as HUB

        table.update(HUB)
    return table


def get_adapter(name_or_spec):
    """Return the adapter of a registry entry (imports TensorFlow)."""
    from kerastl.zoo.sources.base import get_adapter as _get

    return _get(name_or_spec)


__all__ = [
    "PREPROCESSING",
    "ModelSpec",
    "Tap",
    "all_specs",
    "custom_objects",
    "get_adapter",
    "get_spec",
    "list_models",
    "model_info",
    "register",
]
