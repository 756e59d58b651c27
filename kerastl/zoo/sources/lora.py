"""LoRA on KerasHub attention projections: the freeze policy ``"lora:R"``.

Example:
    >>> LORA_TARGETS
    ('query_dense', 'value_dense', 'query', 'value')
"""

from __future__ import annotations

import keras

from kerastl.errors import ConfigError

#: Layers that receive LoRA adapters (KerasHub's own default targets).
LORA_TARGETS = ("query_dense", "value_dense", "query", "value")
#: The Keras layer types that implement ``enable_lora``.
LORA_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense)


def enable_lora(backbone: keras.Model, rank: int, name: str) -> int:
    """Add rank-``rank`` LoRA adapters to the attention query/value projections.

    Every other backbone weight is frozen (variable by variable), so only the
    LoRA factors train. ``name`` is the registry entry, for messages. Returns
    the number of adapted layers.

    Raises:
        ConfigError: LoRA of another rank is already on, or nothing to adapt.
    """
    backbone.trainable = True
    adapted = 0
    lora_ids = set()
    for layer in backbone._flatten_layers(include_self=False):
        if layer.name not in LORA_TARGETS or not isinstance(layer, LORA_LAYERS):
            continue
        if layer.lora_enabled:
            if layer.lora_rank != rank:
                raise ConfigError(
                    f"freeze: LoRA of rank {layer.lora_rank} is already on; cannot "
                    f"switch to rank {rank} (rebuild the model)."
                )
        else:
            layer.enable_lora(rank)
        lora_ids.update(id(v) for v in (layer.lora_kernel_a, layer.lora_kernel_b))
        adapted += 1
    if not adapted:
        raise ConfigError(f"freeze: {name} has no attention layer to adapt.")
    for v in backbone.weights:
        v.trainable = id(v) in lora_ids
    return adapted
