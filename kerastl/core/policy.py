"""Freezing policies as data: parsed and checked without TensorFlow.

:mod:`kerastl.freeze` applies them to a model; ``kerastl train --print-config``
checks them here before TensorFlow is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kerastl.errors import ConfigError, choice_error

POLICY_KINDS = ("backbone", "none", "up_to", "last", "regex", "lora")


@dataclass(frozen=True)
class FreezePolicy:
    """Which part of the backbone is frozen.

    Attributes:
        kind: ``"backbone"`` (feature extraction: all frozen), ``"none"`` (full
            fine-tune), ``"up_to"`` (freeze groups from the stem up to and
            including ``value``), ``"last"`` (train only the last ``value``
            groups), ``"regex"`` (freeze layers whose name matches ``value``).
        value: Group name, group count or regex, per ``kind``.
        train_batchnorm: Let BatchNorm layers of trainable groups update their
            statistics and affine weights. Off by default.

    Example:
        >>> parse_policy("up_to:stage2")
        FreezePolicy(kind='up_to', value='stage2', train_batchnorm=False)
    """

    kind: str
    value: Any = None
    train_batchnorm: bool = False

    def to_string(self) -> str:
        """The policy in its string form (``"last:2"``)."""
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


def parse_policy(freeze: Any, train_batchnorm: bool = False) -> FreezePolicy:
    """Read a policy from a string, dict, bool or :class:`FreezePolicy`.

    Accepted: ``"backbone"``, ``"none"``, ``"up_to:GROUP"``, ``"last:N"``,
    ``"regex:PATTERN"``, ``{"up_to": "stage2"}``, ``{"last": 2}``,
    ``{"regex": "^conv1"}``, ``True`` (= backbone), ``False``/``None`` (= none),
    ``"lora:RANK"`` / ``{"lora": 8}`` (KerasHub text backbones: frozen backbone
    plus trainable LoRA adapters of that rank on the attention projections).
    """
    if isinstance(freeze, FreezePolicy):
        return freeze
    if freeze is None or freeze is False:
        return FreezePolicy("none", None, train_batchnorm)
    if freeze is True:
        return FreezePolicy("backbone", None, train_batchnorm)
    if isinstance(freeze, dict):
        if len(freeze) != 1:
            raise ConfigError(
                f"freeze: a dict policy has exactly one key of {POLICY_KINDS[2:]}, got {freeze!r}."
            )
        ((kind, value),) = freeze.items()
    elif isinstance(freeze, str):
        kind, _, value = freeze.partition(":")
        value = value or None
    else:
        raise ConfigError(
            f"freeze: expected a string such as 'backbone', 'none', 'up_to:stage2', "
            f"'last:2' or 'regex:^conv1', got {type(freeze).__name__} {freeze!r}."
        )
    kind = kind.strip().lower()
    if kind not in POLICY_KINDS:
        raise choice_error("freeze", freeze if isinstance(freeze, str) else kind, POLICY_KINDS)
    if kind in ("backbone", "none") and value is not None:
        raise ConfigError(f"freeze: {kind!r} takes no value, got {freeze!r}.")
    if kind == "lora":  # LoRA adapters of rank N on a frozen KerasHub text backbone
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"freeze: 'lora' needs a rank, e.g. 'lora:8', got {freeze!r}."
            ) from None
        if value < 1:
            raise ConfigError(f"freeze: 'lora' needs a rank >= 1, got {value}.")
    if kind in ("up_to", "regex") and not value:
        raise ConfigError(f"freeze: {kind!r} needs a value, e.g. '{kind}:...', got {freeze!r}.")
    if kind == "last":
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"freeze: 'last' needs a whole number of groups, got {freeze!r}."
            ) from None
        if value < 0:
            raise ConfigError(f"freeze: 'last' needs N >= 0, got {value}.")
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"freeze: invalid regex {value!r}: {exc}.") from None
    return FreezePolicy(kind, value, train_batchnorm)
