"""kerastl.zoo.sources: one adapter per source and modality, capabilities declared."""

from __future__ import annotations

import keras
import pytest

from kerastl.zoo import HUB_OBJECTS, all_specs, custom_objects, get_adapter
from kerastl.zoo.sources.base import ADAPTERS, Capabilities, options_of


def test_every_entry_has_an_adapter_with_declared_capabilities():
    pairs = {(s.source, s.modality) for s in all_specs()}
    assert pairs <= set(ADAPTERS)
    for source, modality in sorted(pairs - {("keras_hub", "audio")}):
        spec = next(s for s in all_specs() if (s.source, s.modality) == (source, modality))
        caps = get_adapter(spec).capabilities
        assert isinstance(caps, Capabilities)
        assert caps.lora == (modality == "text")
        assert caps.export_split == {"image": None, "text": "preprocess"}.get(modality, "?")
    whisper, moonshine = get_adapter("whisper_tiny_en"), get_adapter("moonshine_tiny_en")
    assert whisper.capabilities.export_split == "preprocess"
    assert moonshine.capabilities.export_split is None


def test_resolved_shape_carries_the_options_not_the_adapter():
    adapter = get_adapter("bert_tiny_en_uncased")
    short = adapter.resolve_input_shape(None, sequence_length=16)
    adapter.resolve_input_shape(None, sequence_length=32, backbone_config={"num_layers": 1})
    assert short == (16,) and options_of(short) == {"sequence_length": 16}
    assert adapter.input_spec(short)["sequence_length"] == 16


def test_the_names_that_trigger_the_hub_import_are_the_hub_layer_table():
    # load_model imports the KerasHub layers only for a file naming one of HUB_OBJECTS
    # (a TensorFlow-free list): it must be exactly the layers module's table.
    from kerastl.zoo.sources.layers import CUSTOM_OBJECTS

    assert set(HUB_OBJECTS) == set(CUSTOM_OBJECTS)
    assert set(custom_objects([])).isdisjoint(HUB_OBJECTS)


@pytest.mark.parametrize("name", sorted(custom_objects(HUB_OBJECTS)))
def test_the_layer_table_resolves_by_registered_name(name):
    cls = custom_objects(HUB_OBJECTS)[name]
    assert keras.saving.get_registered_object(name) is cls
    assert name == f"kerastl>{cls.__name__}"
