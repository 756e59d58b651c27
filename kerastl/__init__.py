"""kerastl: transfer learning with TensorFlow/Keras, from registry to deployment.

Listing and describing models never imports TensorFlow; everything else is
loaded on first use.

Example:
    >>> import kerastl
    >>> kerastl.list_models("resnet5*")
    ['resnet50', 'resnet50_v2']
"""

from __future__ import annotations

import importlib
import os
from typing import Any

#: TensorFlow's oneDNN CPU allocator pools the memory TensorFlow frees and never hands it
#: back: after loading and running ConvNeXt-B's SavedModel and letting it go, 2.13 GB stayed
#: resident with the pool, 1.32 GB without (1.24 and 1.22 before loading it). Training speed was the same (ResNet-50, 320
#: images, two runs each). Set before TensorFlow makes its CPU device; a value the user set
#: is kept.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")

from kerastl._version import __version__  # noqa: E402
from kerastl.errors import (  # noqa: E402
    ConfigError,
    DataError,
    ExportError,
    KerastlError,
    MissingDependencyError,
    UnknownNameError,
    ValidationError,
    WeightsError,
)
from kerastl.zoo import get_spec, list_models, model_info  # noqa: E402

# Public name -> module that defines it (imported lazily: these import TensorFlow).
_LAZY = {
    "build": "kerastl.builder",
    "compile_for_task": "kerastl.core.heads",
    "KerastlModel": "kerastl.core.model",
    "load_model": "kerastl.builder",
    "metadata": "kerastl.core.model",
    "FreezePolicy": "kerastl.freeze",
    "apply_policy": "kerastl.freeze",
    "GradualUnfreezing": "kerastl.freeze",
    "discriminative_optimizer": "kerastl.freeze",
    "apply_l2sp": "kerastl.freeze",
    "add_class": "kerastl.prototypes",
    "add_examples": "kerastl.prototypes",
    "forgetting_report": "kerastl.forgetting",
    "export": "kerastl.export",
    "load_artifact": "kerastl.export",
    "rank": "kerastl.decide._rank",
    "advise": "kerastl.decide._advise",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kerastl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "ConfigError",
    "DataError",
    "ExportError",
    "KerastlError",
    "MissingDependencyError",
    "UnknownNameError",
    "ValidationError",
    "WeightsError",
    "__version__",
    "get_spec",
    "list_models",
    "model_info",
    *_LAZY,
]
