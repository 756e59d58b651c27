"""How the keras.applications table (``tables/keras_apps.json``) becomes registry entries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kerastl.zoo._spec import ModelSpec, Tap


def apps_specs(table: dict[str, dict[str, Any]]) -> Iterator[ModelSpec]:
    """One :class:`ModelSpec` per variant of every keras.applications family.

    Args:
        table: Family name -> ``license`` and ``variants`` (registry name -> fields
            of :class:`ModelSpec`, taps as ``[layer, channels, stride]``, groups as
            ``[name, last layer]``), as written by ``tools/write_zoo_tables.py``.

    Example:
        >>> table = {"vgg": {"license": "Apache-2.0", "variants": {"vgg16": {
        ...     "constructor": "VGG16", "input_size": 224, "min_input_size": 32,
        ...     "preprocessing": "caffe", "feature_dim": 512, "params": 14714688,
        ...     "taps": [["block5_pool", 512, 32]], "groups": [["stem", "block1_pool"]]}}}}
        >>> [(s.name, s.aliases, s.taps[0].stride) for s in apps_specs(table)]
        [('vgg16', ('VGG16',), 32)]
    """
    for family, fam in table.items():
        for name, fields in fam["variants"].items():
            fields = dict(fields)
            yield ModelSpec(
                name=name,
                family=family,
                source="keras.applications",
                modality="image",
                license=fam["license"],
                pretrained=("imagenet",),
                aliases=(fields["constructor"],),
                taps=tuple(Tap(*t) for t in fields.pop("taps")),
                groups=tuple(tuple(g) for g in fields.pop("groups")),
                **fields,
            )
