"""Backbone sources: one adapter per source and modality, with declared capabilities.

* :mod:`.base`: the :class:`~kerastl.zoo.sources.base.Adapter` contract,
  :class:`~kerastl.zoo.sources.base.Capabilities` and the ``(source, modality)``
  table :data:`~kerastl.zoo.sources.base.ADAPTERS` behind ``get_adapter``;
* :mod:`.keras_apps`: ``keras.applications`` (and :mod:`.native`, the backbones
  kerastl builds itself, :mod:`.efficientnet_lite`);
* :mod:`.keras_hub` (shared), :mod:`.hub_image`, :mod:`.hub_text`,
  :mod:`.hub_audio`: KerasHub backbones; :mod:`.lora` for text;
* :mod:`.layers`: the serialisable layers of KerasHub models, listed in one table
  (:data:`~kerastl.zoo.sources.layers.CUSTOM_OBJECTS`, joined to the core's by
  :func:`kerastl.zoo.custom_objects`).

Importing this package imports no TensorFlow.
"""

from __future__ import annotations
