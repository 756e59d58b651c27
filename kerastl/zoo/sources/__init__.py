"""Backbone sources: one adapter per source and modality, with declared capabilities.

* :mod:`.base`: the :class:`~kerastl.zoo.sources.base.Adapter` contract,
  :class:`~kerastl.zoo.sources.base.Capabilities` and the ``(source, modality)``
  table :data:`~kerastl.zoo.sources.base.ADAPTERS` behind ``get_adapter``;
* :mod:`.keras_apps`: ``keras.applications`` (and :mod:`.native`, the backbones
  kerastl builds itself, :mod:`.efficientnet_lite`);
* :mod:`.keras_hub` (shared), :mod:`.hub_image`, :mod:`.hub_text`,
  :mod:`.hub_audio`: KerasHub backbones; :mod:`.lora` for text;
* :mod:`.layers`: the serialisable layers of KerasHub models, listed in one table
  (:func:`custom_objects`).

Importing this package imports no TensorFlow.
"""

from __future__ import annotations


def custom_objects() -> dict[str, type]:
    """Every kerastl layer a zoo model may hold, by registered name; registers them.

    Importing :mod:`kerastl.zoo.sources.layers` (which this does) is what a
    ``.keras`` file holding a KerasHub backbone needs before it loads.

    Example:
        >>> "kerastl>HubTextPreprocessing" in custom_objects()
        True
    """
    from kerastl.zoo.sources.layers import CUSTOM_OBJECTS

    return dict(CUSTOM_OBJECTS)
