"""Candidate backbones named on the command line: ``NAME[@WEIGHTS][:tapK]`` (no TensorFlow).

* ``NAME`` is a registry name or a shell wildcard (``'efficientnet_lite*'``; it keeps the
  models of the data's modality, :func:`check_modality`);
* ``@WEIGHTS``: ``imagenet`` (the default for image models; for a KerasHub entry, its
  own pretrained preset), ``random`` (random init) or a path (weights file, saved model,
  local KerasHub/Hugging Face preset); the tags in any case;
* ``:tapK``: the K-th multi-scale tap of the backbone (``kerastl info NAME``),
  average-pooled, instead of its last layer (an earlier cut point).

Example:
    >>> [c.label for c in parse_candidates("efficientnet_lite0,efficientnet_lite0@random:tap2")]
    ['efficientnet_lite0', 'efficientnet_lite0@random:tap2']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kerastl.errors import ConfigError, choice_error

RUNTIMES = ("tflite", "onnx", "none")


@dataclass(frozen=True)
class Candidate:
    """One backbone to score: registry name, weights (``None`` = random) and tap (or final).

    ``pattern`` is the wildcard that selected it (``None`` when named): a wildcard keeps
    only the models of the data's modality (:func:`check_modality`).
    """

    name: str
    weights: str | None = "imagenet"
    tap: int | None = None
    pattern: str | None = field(default=None, compare=False, repr=False)

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


def check_weights(weights: str | None, arg: str = "--weights", extra: tuple = ()) -> str | None:
    """``"imagenet"``, ``None`` (random init) or an existing path, from what the user wrote.

    The tags are case-insensitive (``ImageNet``, ``RANDOM``, ``none``); ``extra`` are more
    accepted tags (a KerasHub entry's own preset name).

    Raises:
        ConfigError: a path that does not exist, or an unknown tag (with close matches).

    Example:
        >>> check_weights("ImageNet"), check_weights("RANDOM"), check_weights(None)
        ('imagenet', None, None)
        >>> check_weights("imagenet2")
        Traceback (most recent call last):
        ...
        kerastl.errors.UnknownNameError: Unknown --weights='imagenet2'. Did you mean 'imagenet'? \
Valid choices: 'imagenet', 'random', or the path of a weights file or preset folder.
    """
    if weights is None or weights.lower() in ("random", "none"):
        return None
    if weights.lower() == "imagenet":
        return "imagenet"
    if weights in extra or os.path.exists(weights):
        return weights
    if os.sep in weights or "." in os.path.basename(weights):
        raise ConfigError(f"{arg}: the weights path {weights!r} does not exist.")
    err = choice_error(arg, weights, ["imagenet", "random", *extra])
    raise type(err)(
        str(err).rstrip(".") + ", or the path of a weights file or preset folder."
    ) from None


def own_weights(c: Candidate) -> str | None:
    """What :func:`kerastl.build` is given for ``c``: the tag ``imagenet`` of a KerasHub
    entry is that entry's own pretrained preset (``efficientnet_lite0_ra_imagenet``).

    Example:
        >>> own_weights(Candidate("efficientnet_lite0_ra_imagenet"))
        'efficientnet_lite0_ra_imagenet'
        >>> own_weights(Candidate("efficientnet_lite0")), own_weights(Candidate("resnet50", None))
        ('imagenet', None)
    """
    from kerastl.zoo import get_spec

    spec = get_spec(c.name)
    if c.weights == "imagenet" and spec.source == "keras_hub" and spec.pretrained:
        return spec.pretrained[0]
    return c.weights


def _split_word(word: str, arg: str) -> tuple[str, str | None, int | None]:
    """``NAME[@WEIGHTS][:tapK]`` -> ``(name, weights as written or None, tap)``."""
    name, tap = word, None
    if ":tap" in word:
        name, _, k = word.rpartition(":tap")
        if not k.isdigit():
            raise ConfigError(f"{arg}: {word!r}: ':tap' needs a number, e.g. ':tap2'.")
        tap = int(k)
    weights = None
    if "@" in name:
        name, _, weights = name.partition("@")
        if not weights:
            raise ConfigError(f"{arg}: {word!r}: '@' needs weights: imagenet, random or a path.")
    return name, weights, tap


def _one(word: str, default_weights: str | None, arg: str = "--candidates") -> list[Candidate]:
    from kerastl.errors import UnknownNameError
    from kerastl.zoo import get_spec, list_models

    name, written, tap = _split_word(word, arg)
    pattern = name if any(ch in name for ch in "*?[") else None
    names = list_models(name) if pattern else [name]
    if not names:
        raise ConfigError(f"{arg}: the pattern {name!r} matches no registry model.")
    out = []
    for n in names:
        try:
            spec = get_spec(n)
        except UnknownNameError as exc:  # keeps its close matches, names our argument
            raise UnknownNameError(f"{arg}: {exc}") from None
        weights = default_weights
        if written is not None:
            weights = check_weights(written, f"{arg} ({word}): @WEIGHTS", spec.pretrained)
        if weights == "imagenet" and spec.modality != "image" and pattern is None:
            raise ConfigError(
                f"{arg}: {n!r} is a {spec.modality} model without 'imagenet' weights; give a preset path "
                f"('{n}@/path/to/preset', or --weights for advise) or random init ('{n}@random')."
            )
        if tap is not None and not 0 <= tap < len(spec.taps):
            raise choice_error(f"{arg} ({n}:tapK) K", tap, [str(i) for i in range(len(spec.taps))])
        out.append(Candidate(spec.name, weights, tap, pattern))
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
        raise ConfigError(f"{argument}: give at least one backbone, e.g. 'efficientnet_lite*'.")
    out: list[Candidate] = []
    for w in words:
        out.extend(c for c in _one(w, default_weights, argument) if c not in out)
    return out


def parse_backbone(
    backbone: str,
    weights: str | None = "imagenet",
    arg: str = "backbone",
    weights_arg: str = "weights",
    explicit: bool = False,
) -> Candidate:
    """The one backbone ``kerastl advise`` measures: ``NAME[@WEIGHTS]``.

    ``@WEIGHTS`` has the syntax of :func:`parse_candidates`; it overrides the default
    ``weights`` and must agree with weights given otherwise (``explicit``: ``weights``
    was given by the user, so even ``imagenet`` must agree). ``:tapK`` is refused:
    advise measures every tap itself.

    Example:
        >>> parse_backbone("efficientnet_lite0@random").weights is None
        True
        >>> parse_backbone("efficientnet_lite0", "ImageNet").weights
        'imagenet'
    """
    from kerastl.zoo import get_spec, list_models

    name, written, tap = _split_word(backbone.strip(), arg)
    named = not any(ch in name for ch in "*?[") and name.lower() in list_models("*")
    given = check_weights(weights, weights_arg, get_spec(name).pretrained if named else ())
    if tap is not None:
        raise ConfigError(
            f"{arg}: {backbone!r}: advise takes no ':tap{tap}'; it measures every tap of the "
            f"backbone itself (LogME per tap, in its reasons). Give {name!r}"
            + (f"@{written}" if written else "")
            + "."
        )
    if any(ch in name for ch in "*?["):
        n = len(parse_candidates([name], given, arg))
        raise ConfigError(f"{arg}: give one model, {backbone!r} matches {n}.")
    (c,) = parse_candidates([name if written is None else f"{name}@{written}"], given, arg)
    if written is not None and (explicit or given != "imagenet") and c.weights != given:
        raise ConfigError(
            f"{arg}: {backbone!r} gives the weights {written!r} but {weights_arg} is "
            f"{weights!r}; give them once."
        )
    return c


def check_modality(
    cands: list[Candidate], modality: str, arg: str = "--candidates"
) -> tuple[list[Candidate], list[str]]:
    """The candidates that fit data of ``modality``, and notes on the ones a wildcard dropped.

    A candidate named explicitly must fit; one a wildcard selected is left out.

    Raises:
        ConfigError: a named candidate of another modality, or none left.

    Example:
        >>> cands = parse_candidates("efficientnet_lite0")
        >>> check_modality(cands, "image")[0] == cands
        True
    """
    from kerastl.zoo import get_spec

    kept, dropped = [], {}
    for c in cands:
        m = get_spec(c.name).modality
        if m == modality:
            kept.append(c)
        elif c.pattern is None:
            raise ConfigError(
                f"{arg}: {c.label!r} is {'an' if m[0] in 'aeiou' else 'a'} {m} model but the "
                f"data is {modality} "
                f"(give {modality} models: `kerastl models --modality {modality}`)."
            )
        else:
            dropped.setdefault(c.pattern, []).append(c)
    notes = []
    for pattern, out in dropped.items():
        n = sum(1 for c in kept if c.pattern == pattern)
        notes.append(
            f"{pattern!r}: kept the {n} {modality} model(s) it matches (the data is "
            f"{modality}), left out {len(out)} of other modalities"
        )
    if not kept:
        raise ConfigError(f"{arg}: no candidate is a {modality} model, as the data is.")
    return kept, notes


def check_runtime(runtime: str) -> str:
    """The runtime the cost is measured in (:data:`RUNTIMES`).

    Example:
        >>> check_runtime("tflite")
        'tflite'
    """
    if runtime not in RUNTIMES:
        raise choice_error("--runtime", runtime, RUNTIMES)
    return runtime
