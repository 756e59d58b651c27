"""The one adapter contract every backbone source implements.

An adapter turns a :class:`~kerastl.zoo.ModelSpec` into Keras objects: the raw
model inputs, the in-graph preprocessing, the backbone (a nested
``keras.Model`` named ``"backbone"``), pooled features, named layer groups and
multi-scale feature taps. Heads, freezing policies, training and export only
talk to this contract, so they work the same for every source.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import keras

from kerastl._errors import ConfigError
from kerastl.zoo._spec import ModelSpec


class Adapter:
    """Base class: the contract. Subclasses implement one backbone source.

    Example:
        >>> from kerastl.zoo import get_adapter
        >>> adapter = get_adapter("mobilenet_v3_small")
        >>> adapter.input_spec(adapter.resolve_input_shape(96))["shape"]
        [96, 96, 3]
        >>> adapter.input_spec((96, 96, 3))["name"]
        'image'
    """

    #: Name of the raw model input (``"image"``, ``"text"``, ``"audio"``).
    input_name = "image"

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    # -- input -----------------------------------------------------------------
    def resolve_input_shape(self, input_shape: Any, **options: Any) -> tuple:
        """Validate and normalise the user's ``input_shape`` (and source options)."""
        raise NotImplementedError

    def input_spec(self, input_shape: tuple) -> dict[str, Any]:
        """Name, shape (without batch), dtype and range of the resolved raw input."""
        raise NotImplementedError

    def make_inputs(self, input_shape: tuple) -> keras.KerasTensor:
        """The ``keras.Input`` of raw data (0-255 pixels, strings, waveforms)."""
        raise NotImplementedError

    def preprocess(self, inputs: keras.KerasTensor, input_shape: tuple) -> Any:
        """Apply in-graph preprocessing to raw inputs; returns backbone inputs."""
        raise NotImplementedError

    # -- backbone --------------------------------------------------------------
    def backbone(self, input_shape: tuple, weights: Any = None) -> keras.Model:
        """Build the backbone (named ``"backbone"``), with weights loaded."""
        raise NotImplementedError

    def classifier_weights(self, weights: Any) -> tuple[Any, Any, list[str]]:
        """The pretrained classifier of ``weights``: ``(kernel, bias, class names)``.

        Raises:
            ConfigError: this source keeps no classifier with its weights.
        """
        from kerastl._errors import ConfigError

        raise ConfigError(
            f"pretrained_head: {self.spec.name} ({self.spec.source}) has no pretrained "
            "classifier kerastl can attach; build a new head (pretrained_head=False)."
        )

    def pooled(self, features: Any, pooling: str) -> Any:
        """Reduce backbone output to one feature vector per example."""
        raise NotImplementedError

    def layer_groups(self, backbone: keras.Model) -> OrderedDict[str, list[keras.Layer]]:
        """Backbone layers by named group, input side first."""
        order = list(backbone.layers)
        index = {layer.name: i for i, layer in enumerate(order)}
        groups: OrderedDict[str, list[keras.Layer]] = OrderedDict()
        start = 0
        for gname, anchor in self.spec.groups:
            if anchor == "@output":
                end = len(order) - 1
            elif anchor in index:
                end = index[anchor]
            else:
                raise ConfigError(
                    f"{self.spec.name}: group {gname!r} ends at layer {anchor!r}, "
                    "which the built backbone does not have."
                )
            groups[gname] = order[start : end + 1]
            start = end + 1
        if start < len(order):  # anything after the last anchor joins the last group
            groups[next(reversed(groups))].extend(order[start:])
        return groups

    def feature_extractor(self, backbone: keras.Model, out_indices: Any = None) -> keras.Model:
        """A model from backbone input to the chosen multi-scale taps."""
        taps = self.spec.taps
        if not taps:
            raise ConfigError(f"features_only: {self.spec.name} declares no feature taps.")
        if out_indices is None:
            out_indices = range(len(taps))
        chosen = []
        for i in out_indices:
            if not isinstance(i, int) or not -len(taps) <= i < len(taps):
                raise ConfigError(
                    f"out_indices: got {i!r}; {self.spec.name} has {len(taps)} taps, "
                    f"valid indices 0..{len(taps) - 1} (strides {[t.stride for t in taps]})."
                )
            chosen.append(taps[i])
        outs = [
            backbone.output if t.layer == "@output" else backbone.get_layer(t.layer).output
            for t in chosen
        ]
        return keras.Model(backbone.inputs, outs, name="features")

    @staticmethod
    def is_batchnorm(layer: keras.Layer) -> bool:
        """True for normalisation layers with moving statistics."""
        return isinstance(layer, keras.layers.BatchNormalization)


def get_adapter(name_or_spec: str | ModelSpec) -> Adapter:
    """Return the adapter for a registry name or spec.

    Example:
        >>> type(get_adapter("resnet50")).__name__
        'KerasAppsAdapter'
    """
    from kerastl.zoo._registry import get_spec

    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if spec.source == "keras.applications":
        from kerastl.zoo._keras_apps_adapter import KerasAppsAdapter

        return KerasAppsAdapter(spec)
    if spec.source == "keras_hub":
        from kerastl.zoo._keras_hub_adapter import keras_hub_adapter

        return keras_hub_adapter(spec)
    raise ConfigError(f"No adapter for source={spec.source!r}.")
