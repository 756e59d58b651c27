"""Training: tf.distribute strategies, cached features, the two-phase recipe, evaluation.

Importing this package does not import TensorFlow; the functions below load
it on first use (so ``kerastl --help`` stays fast).

Example:
    >>> from kerastl.train import train
    >>> result = train("run.yaml")  # doctest: +SKIP
    >>> result.run_dir, result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from kerastl.train._config import SCHEMA, load_config, validate_config

_LAZY = {
    "train": "kerastl.train.run",
    "RunResult": "kerastl.train.run",
    "load_examples": "kerastl.train.context",
    "evaluate_model": "kerastl.train.evaluate",
    "evaluate_run": "kerastl.train.evaluate",
    "cross_validate": "kerastl.train.kfold",
    "get_strategy": "kerastl.train._strategy",
    "is_chief": "kerastl.train._strategy",
    "FeatureCache": "kerastl.train._cache",
    "split_model": "kerastl.train._cache",
    "BestCheckpoint": "kerastl.train._callbacks",
    "make_schedule": "kerastl.train._callbacks",
    "compute_metrics": "kerastl.train._metrics",
    "run_demo": "kerastl.train.demo",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kerastl.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["SCHEMA", "load_config", "validate_config", *_LAZY]
