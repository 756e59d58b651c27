"""How a keras.applications family module turns its table into registry entries."""

from __future__ import annotations

from typing import Any

from kerastl.zoo._registry import register
from kerastl.zoo._spec import ModelSpec, Tap


def declare_family(family: str, license: str, variants: dict[str, dict[str, Any]]) -> None:
    """Register every variant of a keras.applications family.

    Args:
        family: Family name shared by the variants.
        license: Licence of code and weights.
        variants: Registry name -> fields of :class:`ModelSpec` (taps as
            ``(layer, channels, stride)`` tuples, groups as ``(name, last layer)``).
    """
    for name, fields in variants.items():
        fields = dict(fields)
        register(
            ModelSpec(
                name=name,
                family=family,
                source="keras.applications",
                modality="image",
                license=license,
                pretrained=("imagenet",),
                aliases=(fields["constructor"],),
                taps=tuple(Tap(*t) for t in fields.pop("taps")),
                groups=tuple(tuple(g) for g in fields.pop("groups")),
                **fields,
            )
        )
