"""The registry's tables, kerastl/zoo/tables/*.json, are exactly what tools/write_zoo_tables.py
measures on the installed Keras and KerasHub (regenerate with that tool, never edit the JSON).

The default run regenerates a representative part in seconds: two keras.applications
families and one preset per kind of KerasHub architecture (text, CNN, ViT with an expanded
encoder, both audio front ends), which also checks each family's ``group_rule`` against
the layer groups stored for real models. The whole regeneration (minutes) is marked slow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import write_zoo_tables as tables  # noqa: E402

QUICK_APPS = ["vgg", "efficientnet_lite"]
QUICK_HUB = {
    "bert": "bert_tiny_en_uncased",
    "resnet": "resnet_18_imagenet",
    "mobilenet": "mobilenet_v3_small_050_imagenet",
    "deit": "deit_tiny_distilled_patch16_224_imagenet",
    "whisper": "whisper_tiny_en",
    "moonshine": "moonshine_tiny_en",
}


def test_tables_are_written_in_the_tools_format():
    for source in tables.SOURCES:
        text = (tables.TABLES / f"{source}.json").read_text(encoding="utf-8")
        table = tables.checked_in(source)
        assert tables.dumps(table) == text, f"run: python tools/write_zoo_tables.py {source}"
        assert list(table) == tables.family_names(source)


def test_representative_part_regenerates_to_the_checked_in_tables():
    apps = tables.regenerate("keras_apps", QUICK_APPS)
    assert tables.differences("keras_apps", apps) == []
    hub = tables.regenerate("keras_hub", list(QUICK_HUB), presets=list(QUICK_HUB.values()))
    assert [list(f["variants"]) for f in hub.values()] == [[p] for p in QUICK_HUB.values()]
    assert tables.differences("keras_hub", hub, partial=True) == []


@pytest.mark.slow
@pytest.mark.parametrize("source", tables.SOURCES)
def test_whole_tables_regenerate_to_the_checked_in_tables(source):
    assert tables.differences(source, tables.regenerate(source)) == []
