"""Decide before training: which backbone (``kerastl.rank``) and which strategy (``kerastl.advise``).

Importing this package does not import TensorFlow; the scores are NumPy and
the feature pass loads TensorFlow on first use.

Example:
    >>> from kerastl.decide import logme, pareto_flags
    >>> pareto_flags([0.9, 0.5], [3.0, 1.0])
    [True, True]
"""

from __future__ import annotations

import importlib
from typing import Any

from kerastl.decide._candidates import RUNTIMES, Candidate, parse_candidates
from kerastl.decide._scores import (
    ESTIMATORS,
    knn_loo_accuracy,
    linear_probe_accuracy,
    logme,
    pareto_flags,
    score,
)

_LAZY = {
    "rank": "kerastl.decide._rank",
    "RankTable": "kerastl.decide._rank",
    "features_of": "kerastl.decide._rank",
    "advise": "kerastl.decide._advise",
    "Advice": "kerastl.decide._advise",
    "config_overrides": "kerastl.decide._advise",
    "resolve_strategy_from": "kerastl.decide._advise",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kerastl.decide' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ESTIMATORS",
    "RUNTIMES",
    "Candidate",
    "knn_loo_accuracy",
    "linear_probe_accuracy",
    "logme",
    "parse_candidates",
    "pareto_flags",
    "score",
    *_LAZY,
]
