"""The one adapter contract every backbone source implements.

An adapter turns a :class:`~kerastl.zoo.ModelSpec` into Keras objects: the raw
model inputs, the in-graph preprocessing, the backbone (a nested
``keras.Model`` named ``"backbone"``), pooled features, named layer groups and
multi-scale feature taps. Heads, freezing policies, training and export only
talk to this contract, so they work the same for every source.

What an adapter can do beyond the contract it declares in :class:`Capabilities`;
callers read ``adapter.capabilities`` instead of probing for methods. Which class
serves an entry is the table :data:`ADAPTERS`, keyed by source and modality.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import keras

from kerastl.errors import ConfigError, choice_error, unknown_arguments_error
from kerastl.zoo._spec import ModelSpec

#: ``(source, modality)`` -> ``"module:Class"`` of its adapter (imported on first use).
ADAPTERS: dict[tuple[str, str], str] = {
    ("keras.applications", "image"): "kerastl.zoo.sources.keras_apps:KerasAppsAdapter",
    ("keras_hub", "image"): "kerastl.zoo.sources.hub_image:HubImageAdapter",
    ("keras_hub", "text"): "kerastl.zoo.sources.hub_text:HubTextAdapter",
    ("keras_hub", "audio"): "kerastl.zoo.sources.hub_audio:HubAudioAdapter",
}


@dataclass(frozen=True)
class Capabilities:
    """What an adapter offers beyond the contract, declared rather than probed.

    Attributes:
        lora: :meth:`Adapter.enable_lora` adds LoRA factors (freeze policy ``"lora:R"``).
        export_split: The layer whose output the TFLite / ONNX files take in place of
            the raw input (``"preprocess"``: token ids for text, log-mel features for
            Whisper), or ``None`` when the whole graph exports as one file.

    Example:
        >>> Capabilities(lora=True, export_split="preprocess").lora
        True
    """

    lora: bool = False
    export_split: str | None = None


class InputShape(tuple):
    """A resolved input shape (no batch axis) with the options it was resolved with.

    A value: :meth:`Adapter.resolve_input_shape` returns it and the other calls
    read their options (``sequence_length``, ``tokenizer``, ``backbone_config``...)
    from it, so no call depends on state an earlier call left on the adapter.

    Example:
        >>> shape = InputShape((64,), {"tokenizer": "bert_tiny_en_uncased"})
        >>> shape == (64,), options_of(shape)["tokenizer"], options_of((64,))
        (True, 'bert_tiny_en_uncased', {})
    """

    options: dict[str, Any]

    def __new__(cls, shape: Any, options: dict[str, Any] | None = None) -> InputShape:
        obj = super().__new__(cls, shape)
        obj.options = dict(options or {})
        return obj


def options_of(input_shape: Any) -> dict[str, Any]:
    """The source options of a resolved shape (none for a plain tuple)."""
    return dict(input_shape.options) if isinstance(input_shape, InputShape) else {}


#: Global poolings of a ``(batch, height, width, channels)`` feature map.
MAP_POOLINGS = ("avg", "max")


def pool_feature_map(features: Any, pooling: str) -> Any:
    """Global average or max pooling of a feature map, as the layer ``"pool"``."""
    if pooling not in MAP_POOLINGS:
        raise choice_error("pooling", pooling, MAP_POOLINGS)
    layer = (
        keras.layers.GlobalAveragePooling2D(name="pool")
        if pooling == "avg"
        else keras.layers.GlobalMaxPooling2D(name="pool")
    )
    return layer(features)


def image_shape(input_shape: Any, default_size: int) -> tuple:
    """``None``, a side or ``(height, width)`` as ``(height, width, channels)`` (RGB default).

    Example:
        >>> image_shape(None, 224), image_shape(96, 224), image_shape((64, 80), 224)
        ((224, 224, 3), (96, 96, 3), (64, 80, 3))
    """
    if input_shape is None:
        return (default_size, default_size, 3)
    if isinstance(input_shape, int):
        return (input_shape, input_shape, 3)
    shape = tuple(input_shape)
    return (*shape, 3) if len(shape) == 2 else shape


def detach_rest(whole: keras.Model, part: keras.Model) -> keras.Model:
    """Unlink ``part``'s layers from the layers of ``whole`` that ``part`` does not use.

    A Keras layer keeps a link to every later call of its output: the encoder's last
    layer names the decoder's cross-attention layers as readers. Without this, a cut-out
    encoder keeps the whole decoder alive, weights included, long after ``whole`` is
    dropped (Whisper large: 0.9 B decoder parameters, 3.6 GB, for a 0.64 B encoder).
    Returns ``part``.

    Example:
        >>> inp = keras.Input((4,))
        >>> mid = keras.layers.Dense(3, name="mid")(inp)
        >>> whole = keras.Model(inp, keras.layers.Dense(2, name="top")(mid))
        >>> part = detach_rest(whole, keras.Model(inp, mid))
        >>> [n.operation.name for n in whole.get_layer("mid")._outbound_nodes]
        []
    """
    kept = {id(layer) for layer in part._flatten_layers(include_self=True, recursive=True)}
    for layer in whole._flatten_layers(include_self=False, recursive=True):
        if id(layer) in kept:
            layer._outbound_nodes = [n for n in layer._outbound_nodes if id(n.operation) in kept]
    return part


def tap_indices(out_indices: Any, n: int, name: str, what: str) -> list[int]:
    """``out_indices`` (None: all) as indices ``0..n-1``; a bad one is a ConfigError.

    ``what`` describes the ``n`` taps in the message (``"5 taps (strides ...)"``).

    Example:
        >>> tap_indices([0, -1], 3, "m", "3 taps")
        [0, 2]
        >>> tap_indices([3], 3, "m", "3 taps")
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: out_indices: got 3; m has 3 taps, valid indices 0..2.
    """
    chosen = []
    for i in range(n) if out_indices is None else out_indices:
        if not isinstance(i, int) or not -n <= i < n:
            raise ConfigError(
                f"out_indices: got {i!r}; {name} has {what}, valid indices 0..{n - 1}."
            )
        chosen.append(i % n)
    return chosen


class Adapter:
    """Base class: the contract. Subclasses implement one backbone source.

    Call order: :meth:`resolve_input_shape` first (its result carries the
    options), then :meth:`make_inputs`, :meth:`preprocess`, :meth:`backbone`
    (which may complete the preprocessing, e.g. with the preset's tokenizer).

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
    #: Source options (``build`` keyword arguments) this adapter takes besides ``input_shape``.
    option_names: tuple[str, ...] = ()
    #: What this adapter offers beyond the contract.
    capabilities = Capabilities()

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    # -- input -----------------------------------------------------------------
    def check_options(self, options: Any, own: Any = (), caller: str = "kerastl.build()") -> None:
        """Refuse keyword arguments that are neither ``own`` nor in :attr:`option_names`.

        The error names each unknown argument, its close matches among all the
        accepted ones (``caller``'s ``own`` arguments and this backbone's options)
        and lists them.

        Example:
            >>> from kerastl.zoo import get_adapter
            >>> get_adapter("mobilenet_v3_small").check_options({"frezee": 1}, own=["freeze"])
            Traceback (most recent call last):
            ...
            kerastl.errors.ConfigError: kerastl.build() takes no argument 'frezee' (mobilenet_v3_small is an image backbone). Did you mean 'freeze'? The valid options are kerastl.build()'s own: freeze; the image backbone's: none.
        """
        unknown = set(options) - set(own) - set(self.option_names)
        if not unknown:
            return
        spec = self.spec
        a = "an" if spec.modality[0] in "aeiou" else "a"
        accepted = {
            f"{caller}'s own": list(own),
            f"the {spec.modality} backbone's": self.option_names,
        }
        if not own:
            accepted = {f"the {spec.modality} backbone's": self.option_names}
        note = f"{spec.name} is {a} {spec.modality} backbone"
        raise unknown_arguments_error(caller, unknown, accepted, note)

    def resolve_input_shape(self, input_shape: Any, **options: Any) -> tuple:
        """Validate and normalise the user's ``input_shape`` (and source options).

        Sources that take options return an :class:`InputShape`, which carries them.
        """
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

    def idle_groups(self, pooling: str | None) -> frozenset[str]:
        """Groups whose output a head on ``pooling`` never reads: they get no gradient.

        Freezing policies leave them frozen and out of the group count. Only a text
        encoder's pooler has one so far (its output is read by ``pooling="pooler"`` only).
        """
        return frozenset()

    def feature_extractor(self, backbone: keras.Model, out_indices: Any = None) -> keras.Model:
        """A model from backbone input to the chosen multi-scale taps."""
        taps = self.spec.taps
        if not taps:
            raise ConfigError(f"features_only: {self.spec.name} declares no feature taps.")
        what = f"{len(taps)} taps (strides {[t.stride for t in taps]})"
        chosen = [taps[i] for i in tap_indices(out_indices, len(taps), self.spec.name, what)]
        outs = [
            backbone.output if t.layer == "@output" else backbone.get_layer(t.layer).output
            for t in chosen
        ]
        return detach_rest(backbone, keras.Model(backbone.inputs, outs, name="features"))

    def enable_lora(self, backbone: keras.Model, rank: int) -> int:
        """Add rank-``rank`` LoRA factors; only when ``capabilities.lora`` is declared.

        Raises:
            ConfigError: this adapter declares no LoRA support.
        """
        raise ConfigError(f"freeze: LoRA is not offered for {self.spec.name}.")

    @staticmethod
    def is_batchnorm(layer: keras.Layer) -> bool:
        """True for normalisation layers with moving statistics."""
        return isinstance(layer, keras.layers.BatchNormalization)


def get_adapter(name_or_spec: str | ModelSpec) -> Adapter:
    """Return the adapter for a registry name or spec (from :data:`ADAPTERS`).

    Example:
        >>> type(get_adapter("resnet50")).__name__
        'KerasAppsAdapter'
        >>> get_adapter("bert_tiny_en_uncased").capabilities.lora
        True
    """
    from kerastl.zoo._registry import get_spec

    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    where = ADAPTERS.get((spec.source, spec.modality))
    if where is None:
        raise ConfigError(f"No adapter for source={spec.source!r}, modality={spec.modality!r}.")
    module, _, cls = where.partition(":")
    return getattr(importlib.import_module(module), cls)(spec)
