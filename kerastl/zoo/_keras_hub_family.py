"""How a KerasHub family module turns its table into registry entries (no TensorFlow here).

A family module (``kerastl/zoo/keras_hub/<family>.py``) calls :func:`declare_hub_family`
once with family-wide facts (backbone class, preprocessing, layer-group rule, a tiny
config for tests) and one dict per KerasHub preset holding the backbone's
constructor kwargs, so ``weights=None`` builds the real architecture offline.

Also here: :func:`group_names_for`, the pure-Python rule that assigns backbone layers
(by name) to layer groups; the adapter and the family generator share it.
"""

from __future__ import annotations

import re
from typing import Any

from kerastl.zoo._registry import register
from kerastl.zoo._spec import ModelSpec, Tap

#: Default text sequence length when the user does not choose one.
DEFAULT_SEQUENCE_LENGTH = 128
#: Audio: KerasHub's audio encoders expect 16 kHz mono waveforms.
SAMPLE_RATE = 16000
_AUDIO_SECONDS = {"whisper": 30, "moonshine": 10}


def side_multiple(config: dict[str, Any]) -> int:
    """What an image side must be a multiple of: the patch, and for windowed attention
    (Swin) the window at every stage: ``patch x window x 2 ** (stages - 1)``.

    Example:
        >>> side_multiple({"patch_size": 4, "window_size": 7, "depths": [2, 2, 6, 2]})
        224
        >>> side_multiple({"patch_size": 16}), side_multiple({})
        (16, 1)
    """
    patch = int(config.get("patch_size") or 1)
    window, depths = config.get("window_size"), config.get("depths")
    if window and depths:
        return patch * int(window) * 2 ** (len(depths) - 1)
    return patch


def declare_hub_family(
    family: str,
    modality: str,
    backbone_class: str,
    license: str,
    description: str,
    groups: dict[str, Any],
    variants: dict[str, dict[str, Any]],
    tiny: dict[str, Any] | None = None,
    converter: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    preprocessor: str | None = None,
    audio: str | None = None,
    min_input_size: int = 32,
    fixed_size: bool = False,
) -> None:
    """Register every preset of a KerasHub family.

    Args:
        family: Family name shared by the variants.
        modality: ``"image"``, ``"text"`` or ``"audio"``.
        backbone_class: ``keras_hub.models`` class of the backbone.
        license: Licence of code and weights.
        description: One line about the family.
        groups: Layer-group rule: ``first`` (group before the first block),
            ``block`` (regex on layer names whose first capture is the block
            index), ``name`` (format of a block group), ``last`` (group after the
            last block, or ``None`` to keep those layers in the last block),
            optional ``expand`` (layers whose sublayers are grouped instead).
        variants: Preset name -> measured facts: ``config`` (constructor kwargs),
            ``params``, ``feature_dim``, ``input_size``, ``groups``, ``taps``.
        tiny: Constructor overrides giving a tiny model of the same family
            (tests and quick from-scratch experiments).
        converter: Image scale/offset used with ``weights=None``.
        tokenizer: ``keras_hub.models`` tokenizer class (text).
        preprocessor: ``keras_hub.models`` text-classifier preprocessor class.
        audio: Audio front end: ``"whisper"`` (log-mel) or ``"moonshine"`` (raw).
        min_input_size: Smallest image side.
        fixed_size: The architecture's position embeddings fix the image size
            of pretrained weights (ViT, DeiT, Swin).
    """
    for name, facts in variants.items():
        facts = dict(facts)
        config = facts.pop("config")
        note = facts.pop("check", "")  # the generator's note on how params were verified
        extra: dict[str, Any] = {
            "preset": name,
            "backbone_class": backbone_class,
            "config": config,
            "tiny_config": tiny or {},
            "group_rule": groups,
            "description": description,
        }
        if note.startswith("not built"):  # too large to build: groups/params from metadata
            extra["params_note"] = note
        if modality == "image":
            extra["converter"] = converter
            extra["fixed_size"] = fixed_size
            input_size = facts.pop("input_size")
            min_size = max(min_input_size, side_multiple(config))
        elif modality == "text":
            max_len = int(config.get("max_sequence_length", 512))
            extra.update(
                tokenizer=tokenizer,
                preprocessor=preprocessor,
                max_sequence_length=max_len,
                vocabulary_size=config.get("vocabulary_size", config.get("vocab_size")),
            )
            facts.pop("input_size", None)
            input_size, min_size = min(DEFAULT_SEQUENCE_LENGTH, max_len), 4
        else:
            seconds = _AUDIO_SECONDS[audio]
            extra.update(audio=audio, sample_rate=SAMPLE_RATE, max_seconds=seconds)
            facts.pop("input_size", None)
            input_size, min_size = SAMPLE_RATE * seconds, SAMPLE_RATE // 10
        register(
            ModelSpec(
                name=name.lower(),
                family=family,
                source="keras_hub",
                modality=modality,
                constructor=name,
                input_size=input_size,
                min_input_size=min_size,
                preprocessing="keras_hub",
                feature_dim=facts.pop("feature_dim"),
                params=facts.pop("params"),
                license=license,
                pretrained=(name,),
                groups=tuple(tuple(g) for g in facts.pop("groups")),
                taps=tuple(Tap(*t) for t in facts.pop("taps", ())),
                extra={**extra, **facts},
            )
        )


def group_names_for(layer_names: list[str], rule: dict[str, Any]) -> list[str]:
    """Assign each layer name (in backbone order) to a group name.

    Layers before the first block go to ``rule["first"]``; a layer matching
    ``rule["block"]`` starts (or continues) the group ``rule["name"]`` formatted
    with the captured index; layers after the last block go to ``rule["last"]``
    when set, else stay in the last block.

    Example:
        >>> group_names_for(["tok", "transformer_layer_0", "transformer_layer_1", "pool"],
        ...     {"first": "embeddings", "block": r"^transformer_layer_(\\d+)$",
        ...      "name": "layer_{}", "last": "pooler"})
        ['embeddings', 'layer_0', 'layer_1', 'pooler']
    """
    pattern = re.compile(rule["block"]) if rule.get("block") else None
    matches = [pattern.search(n) if pattern else None for n in layer_names]
    hit = [i for i, m in enumerate(matches) if m]
    last_hit = hit[-1] if hit else -1
    out, current = [], rule["first"]
    for i, m in enumerate(matches):
        if m:
            current = rule["name"].format(*m.groups())
        elif hit and i > last_hit and rule.get("last"):
            current = rule["last"]
        out.append(current)
    return out
