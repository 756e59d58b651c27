"""Candidate backbones named on the command line: ``NAME[@WEIGHTS][:tapK]`` (no TensorFlow).

* ``NAME`` is a registry name or a shell wildcard (``'efficientnet_lite*'``);
* ``@WEIGHTS``: ``imagenet`` (the default for image models), ``random`` (random
  init) or a path (weights file, saved model, local KerasHub/Hugging Face preset);
* ``:tapK``: the K-th multi-scale tap of the backbone (``kerastl info NAME``),
  average-pooled, instead of its last layer (an earlier cut point).

Example:
    >>> [c.label for c in parse_candidates("efficientnet_lite0,efficientnet_lite0@random:tap2")]
    ['efficientnet_lite0', 'efficientnet_lite0@random:tap2']
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kerastl.errors import ConfigError, choice_error

RUNTIMES = ("tflite", "onnx", "none")


@dataclass(frozen=True)
class Candidate:
    """One backbone to score: registry name, weights (``None`` = random) and tap (or final)."""

    name: str
    weights: str | None = "imagenet"
    tap: int | None = None

    @property
    def label(self) -> str:
        """The candidate as written on the command line (defaults left out)."""
        w = "" if self.weights == "imagenet" else f"@{self.weights or 'random'}"
        if self.weights not in (None, "imagenet") and os.sep in self.weights:
            w = "@…/" + "/".join(os.path.normpath(self.weights).split(os.sep)[-2:])
        return f"{self.name}{w}" + ("" if self.tap is None else f":tap{self.tap}")

    @property
    def arch_key(self) -> str:
        """What the exported size and latency depend on (not the weights' values)."""
        return f"{self.name}:{self.tap}"


def _one(word: str, default_weights: str | None, arg: str = "--candidates") -> list[Candidate]:
    from kerastl.errors import UnknownNameError
    from kerastl.zoo import get_spec, list_models

    name, tap = word, None
    if ":tap" in word:
        name, _, k = word.rpartition(":tap")
        if not k.isdigit():
            raise ConfigError(f"--candidates: {word!r}: ':tap' needs a number, e.g. ':tap2'.")
        tap = int(k)
    weights = default_weights
    if "@" in name:
        name, _, weights = name.partition("@")
        weights = None if weights.lower() in ("random", "none") else weights
    names = list_models(name) if any(ch in name for ch in "*?[") else [name]
    if not names:
        raise ConfigError(f"--candidates: the pattern {name!r} matches no registry model.")
    out = []
    for n in names:
        try:
            spec = get_spec(n)
        except UnknownNameError as exc:  # keeps its close matches, names our argument
            raise UnknownNameError(f"{arg}: {exc}") from None
        if weights == "imagenet" and spec.modality != "image":
            raise ConfigError(
                f"{arg}: {n!r} is a {spec.modality} model without 'imagenet' weights; give a preset path "
                f"('{n}@/path/to/preset', or --weights for advise) or random init ('{n}@random')."
            )
        if weights not in (None, "imagenet") and not os.path.exists(weights):
            raise ConfigError(f"--candidates: {word!r}: weights path {weights!r} does not exist.")
        if tap is not None and not 0 <= tap < len(spec.taps):
            raise choice_error(f"{arg} ({n}:tapK) K", tap, [str(i) for i in range(len(spec.taps))])
        out.append(Candidate(spec.name, weights, tap))
    return out


def parse_candidates(
    text: str | list[str], default_weights: str | None = "imagenet", argument: str = "--candidates"
) -> list[Candidate]:
    """Candidates from a comma-separated string or a list; validated against the registry.

    Raises:
        ConfigError: an unknown name (with close matches), a bad tap or weights path.

    Example:
        >>> parse_candidates(["efficientnet_lite1:tap3"])[0]
        Candidate(name='efficientnet_lite1', weights='imagenet', tap=3)
    """
    words = text.split(",") if isinstance(text, str) else list(text)
    words = [w.strip() for w in words if w.strip()]
    if not words:
        raise ConfigError("--candidates: give at least one backbone, e.g. 'efficientnet_lite*'.")
    out: list[Candidate] = []
    for w in words:
        out.extend(c for c in _one(w, default_weights, argument) if c not in out)
    return out


def check_runtime(runtime: str) -> str:
    """The runtime the cost is measured in (:data:`RUNTIMES`).

    Example:
        >>> check_runtime("tflite")
        'tflite'
    """
    if runtime not in RUNTIMES:
        raise choice_error("--runtime", runtime, RUNTIMES)
    return runtime
