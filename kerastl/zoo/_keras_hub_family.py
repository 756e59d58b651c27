"""How the KerasHub table (``tables/keras_hub.json``) becomes registry entries (no TensorFlow).

The table holds, per family, family-wide facts (backbone class, preprocessing,
layer-group rule, a tiny config for tests) and one dict per KerasHub preset with
the backbone's constructor kwargs, so ``weights=None`` builds the real
architecture offline. ``tools/write_zoo_tables.py`` writes it.

Also here: :func:`group_names_for`, the pure-Python rule that assigns backbone layers
(by name) to layer groups; the adapter and the table generator share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

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


def hub_specs(table: dict[str, dict[str, Any]]) -> Iterator[ModelSpec]:
    """One :class:`ModelSpec` per preset of every KerasHub family.

    Args:
        table: Family name -> family facts: ``modality``, ``backbone_class``,
            ``license``, ``description``, ``group_rule`` (see :func:`group_names_for`;
            optional ``expand``: layers whose sublayers are grouped instead),
            optional ``tiny`` (constructor overrides giving a tiny model of the
            family), ``converter`` (image scale/offset used with ``weights=None``),
            ``tokenizer`` and ``preprocessor`` (text), ``audio`` (``"whisper"``
            log-mel or ``"moonshine"`` raw), ``min_input_size``, ``fixed_size``
            (position embeddings fix the image size of pretrained weights), and
            ``variants``: preset name -> measured facts (``config`` constructor
            kwargs, ``params``, ``feature_dim``, ``input_size``, ``groups``, ``taps``,
            ``check``: how the generator verified ``params``).

    Example:
        >>> fam = {"modality": "text", "backbone_class": "BertBackbone",
        ...     "license": "Apache-2.0", "description": "BERT", "group_rule": {},
        ...     "variants": {"Bert_X": {"config": {"max_sequence_length": 64},
        ...     "params": 10, "feature_dim": 8, "groups": [["embeddings", "emb"]]}}}
        >>> spec = next(hub_specs({"bert": fam}))
        >>> spec.name, spec.input_size, spec.groups, spec.extra["max_sequence_length"]
        ('bert_x', 64, (('embeddings', 'emb'),), 64)
    """
    for family, fam in table.items():
        for name, facts in fam["variants"].items():
            yield _hub_spec(family, fam, name, dict(facts))


def _hub_spec(family: str, fam: dict[str, Any], name: str, facts: dict[str, Any]) -> ModelSpec:
    config = facts.pop("config")
    note = facts.pop("check", "")  # the generator's note on how params were verified
    extra: dict[str, Any] = {
        "preset": name,
        "backbone_class": fam["backbone_class"],
        "config": config,
        "tiny_config": fam.get("tiny") or {},
        "group_rule": fam["group_rule"],
        "description": fam["description"],
    }
    if note.startswith("not built"):  # too large to build: groups/params from metadata
        extra["params_note"] = note
    input_size, min_size = _sizes(fam, config, facts, extra)
    taps = tuple(Tap(*t) for t in facts.pop("taps", ())) or _text_taps(fam, facts)
    return ModelSpec(
        name=name.lower(),
        family=family,
        source="keras_hub",
        modality=fam["modality"],
        constructor=name,
        input_size=input_size,
        min_input_size=min_size,
        preprocessing="keras_hub",
        feature_dim=facts.pop("feature_dim"),
        params=facts.pop("params"),
        license=fam["license"],
        pretrained=(name,),
        groups=tuple(tuple(g) for g in facts.pop("groups")),
        taps=taps,
        extra={**extra, **facts},
    )


def _text_taps(fam: dict[str, Any], facts: dict[str, Any]) -> tuple[Tap, ...]:
    """A text encoder's taps: the output of each of its own layers (stride 1, one per token).

    Only encoders whose layers each have their own weights (group ``layer_K``): an ALBERT
    group is one layer called many times, so it has no single output to tap.

    Example:
        >>> fam = {"modality": "text", "group_rule": {"name": "layer_{}"}}
        >>> groups = [["embeddings", "emb"], ["layer_0", "t0"], ["layer_1", "t1"]]
        >>> [t.layer for t in _text_taps(fam, {"groups": groups, "feature_dim": 8})]
        ['t0', 't1']
    """
    if fam["modality"] != "text" or fam["group_rule"].get("name") != "layer_{}":
        return ()
    blocks = [last for g, last in facts.get("groups", ()) if re.fullmatch(r"layer_\d+", g)]
    return tuple(Tap(last, facts["feature_dim"], 1) for last in blocks)


def _sizes(
    fam: dict[str, Any], config: dict[str, Any], facts: dict[str, Any], extra: dict[str, Any]
) -> tuple[int, int]:
    """Default and smallest input size by modality; adds the modality's facts to ``extra``."""
    modality = fam["modality"]
    if modality == "image":
        extra["converter"] = fam.get("converter")
        extra["fixed_size"] = fam.get("fixed_size", False)
        step = side_multiple(config)
        floor = fam.get("min_input_size", 32)
        return facts.pop("input_size"), -(-floor // step) * step  # the first multiple >= floor
    facts.pop("input_size", None)
    if modality == "text":
        max_len = int(config.get("max_sequence_length", 512))
        extra.update(
            tokenizer=fam.get("tokenizer"),
            preprocessor=fam.get("preprocessor"),
            max_sequence_length=max_len,
            vocabulary_size=config.get("vocabulary_size", config.get("vocab_size")),
        )
        return min(DEFAULT_SEQUENCE_LENGTH, max_len), 4
    seconds = _AUDIO_SECONDS[fam["audio"]]
    extra.update(audio=fam["audio"], sample_rate=SAMPLE_RATE, max_seconds=seconds)
    return SAMPLE_RATE * seconds, SAMPLE_RATE // 10


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
