"""LoRA on KerasHub attention projections: the freeze policy ``"lora:R"``.

Example:
    >>> LORA_TARGETS
    ('query_dense', 'value_dense', 'query', 'value')
"""

from __future__ import annotations

import keras
import numpy as np

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


def lora_layers(model: keras.Model) -> list[keras.Layer]:
    """The layers of ``model`` (nested models included) whose LoRA is on, in a fixed order."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, LORA_LAYERS) and getattr(layer, "lora_enabled", False)
    ]


def lora_factors(model: keras.Model) -> dict[str, np.ndarray]:
    """Each LoRA layer's unmerged kernel and factors, keyed ``"<i>/kernel|a|b"``.

    Keras writes a LoRA layer's kernel with ``A @ B`` merged in and loads it back with
    both factors zero, from which they cannot train again (each one's gradient is the
    other); these values put a reloaded layer back where it was.
    """
    out = {}
    for i, layer in enumerate(lora_layers(model)):
        out[f"{i}/kernel"] = keras.ops.convert_to_numpy(layer._kernel)
        out[f"{i}/a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
        out[f"{i}/b"] = keras.ops.convert_to_numpy(layer.lora_kernel_b)
    return out


def set_lora_factors(model: keras.Model, factors: dict[str, np.ndarray]) -> bool:
    """Assign :func:`lora_factors` back; False (nothing assigned) when they do not fit."""
    layers = lora_layers(model)
    if len(factors) != 3 * len(layers):
        return False
    pairs = []
    for i, layer in enumerate(layers):
        for key, var in (("kernel", layer._kernel), ("a", layer.lora_kernel_a),
                         ("b", layer.lora_kernel_b)):  # fmt: skip
            value = factors.get(f"{i}/{key}")
            if value is None or tuple(value.shape) != tuple(var.shape):
                return False
            pairs.append((var, value))
    for var, value in pairs:
        var.assign(value)
    return True


def reseed_lora(model: keras.Model, seed: int | None = None) -> int:
    """Give LoRA layers whose factors are both zero (as Keras loads them) a fresh ``A``
    (``he_uniform``, as ``enable_lora`` draws it; ``B`` stays zero), so they train again;
    the outputs do not change. Returns how many were reseeded.

    Example:
        >>> import keras, numpy as np
        >>> x = keras.Input((4,))
        >>> dense = keras.layers.Dense(3, name="query")
        >>> m = keras.Model(x, dense(x))
        >>> dense.enable_lora(2)
        >>> _ = dense.lora_kernel_a.assign(np.zeros((4, 2), "float32"))
        >>> reseed_lora(m, seed=0), bool(np.any(dense.lora_kernel_a.numpy()))
        (1, True)
    """
    init = keras.initializers.HeUniform(seed=seed)
    done = 0
    for layer in lora_layers(model):
        a, b = layer.lora_kernel_a, layer.lora_kernel_b
        if np.any(keras.ops.convert_to_numpy(a)) or np.any(keras.ops.convert_to_numpy(b)):
            continue
        a.assign(init(tuple(a.shape), dtype=a.dtype))
        done += 1
    return done
