"""The model zoo: registry of backbones (no TensorFlow import) and their adapters.

Example:
    >>> from kerastl import zoo
    >>> zoo.list_models("convnext*")
    ['convnext_base', 'convnext_large', 'convnext_small', 'convnext_tiny', 'convnext_xlarge']
"""

from kerastl.zoo._registry import all_specs, get_spec, list_models, model_info, register
from kerastl.zoo._spec import PREPROCESSING, ModelSpec, Tap


def get_adapter(name_or_spec):
    """Return the adapter of a registry entry (imports TensorFlow)."""
    from kerastl.zoo.sources.base import get_adapter as _get

    return _get(name_or_spec)


__all__ = [
    "PREPROCESSING",
    "ModelSpec",
    "Tap",
    "all_specs",
    "get_adapter",
    "get_spec",
    "list_models",
    "model_info",
    "register",
]
