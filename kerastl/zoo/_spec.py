"""The data every registry entry declares: :class:`ModelSpec` and :class:`Tap`.

A spec is plain data (no TensorFlow import) so that listing and describing
models is instant. The adapter reads it to build the backbone, the freezing
policies read its ``groups`` and ``features_only`` reads its ``taps``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MODALITIES = ("image", "text", "audio")
SOURCES = ("keras.applications", "keras_hub")
# How a backbone expects its input scaled. Every kerastl model takes raw 0-255
# RGB and applies the matching conversion inside the graph.
PREPROCESSING = {
    "caffe": "RGB->BGR, subtract the ImageNet mean (0-255 scale)",
    "tf": "scale 0-255 to [-1, 1]",
    "torch": "scale to [0, 1], normalise by the ImageNet mean and std",
    "in_model": "the backbone rescales raw 0-255 input itself",
    "keras_hub": "the KerasHub preprocessor of the preset (inside the model)",
}


@dataclass(frozen=True)
class Tap:
    """One multi-scale feature output of a backbone.

    Attributes:
        layer: Layer name in the backbone, or ``"@output"`` for its last output.
        channels: Channels of that feature map (a text encoder: its hidden size).
        stride: Input pixels per feature-map pixel (a text encoder's layer: 1 token).
    """

    layer: str
    channels: int
    stride: int


@dataclass(frozen=True)
class ModelSpec:
    """Everything kerastl knows about one backbone, as data.

    Attributes:
        name: Registry name, lowercase snake case (``"resnet50"``).
        family: Family name (``"resnet"``); one entry of a zoo table declares a family.
        source: ``"keras.applications"`` or ``"keras_hub"``.
        modality: ``"image"``, ``"text"`` or ``"audio"``.
        constructor: Keras class name, or the KerasHub preset/architecture name.
        input_size: Default square image size (images) or sequence length (text)
            or number of samples (audio).
        min_input_size: Smallest legal ``input_size``.
        preprocessing: Key of :data:`PREPROCESSING`.
        feature_dim: Width of the pooled feature vector.
        params: Parameters of the backbone without its classifier.
        top1: ImageNet top-1 accuracy published by Keras, or ``None``.
        license: Licence of the architecture and its pretrained weights.
        pretrained: Weight tags that can be downloaded (``("imagenet",)``).
        groups: Ordered ``(group name, last layer)`` pairs, input side first.
            A backbone layer belongs to the first group whose last layer is at
            or after it in the backbone's (topological) layer order;
            ``"@output"`` names the backbone's final layer. Anchoring on stable
            layer names keeps groups right whatever Keras auto-names the rest.
        taps: Multi-scale feature outputs.
        aliases: Other accepted names (the Keras class name, for instance).
        extra: Free-form facts (sequence length limit, sample rate, ...).
    """

    name: str
    family: str
    source: str
    modality: str
    constructor: str
    input_size: int
    min_input_size: int
    preprocessing: str
    feature_dim: int
    params: int
    top1: float | None = None
    license: str = "Apache-2.0"
    pretrained: tuple[str, ...] = ()
    groups: tuple[tuple[str, str], ...] = ()
    taps: tuple[Tap, ...] = ()
    aliases: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group_names(self) -> list[str]:
        """Names of the layer groups, input side first."""
        return [g for g, _ in self.groups]

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data."""
        d = asdict(self)
        d["taps"] = [asdict(t) for t in self.taps]
        d["groups"] = [list(g) for g in self.groups]
        d["aliases"] = list(self.aliases)
        d["pretrained"] = list(self.pretrained)
        return d
