"""What every KerasHub adapter shares: options, the architecture config, presets, groups.

One subclass per modality (:mod:`.hub_image`, :mod:`.hub_text`, :mod:`.hub_audio`)
says how its input is resolved, preprocessed and wrapped; this base builds the
``keras_hub.models.<Family>Backbone`` itself:

* ``weights=None`` builds the architecture stored in the registry with random
  weights (offline);
* a KerasHub preset name downloads it through KerasHub;
* a local folder (or archive of one) in KerasHub or Hugging Face format loads
  offline (:mod:`kerastl.zoo.weights`).

The contract builds preprocessing before the backbone, and only the backbone
sees ``weights``; preprocessing layers are therefore created first with their
static output spec and receive the preset's tokenizer or converter once the
backbone's weights are known. That hand-over (``preprocess`` then ``backbone``)
is the one order the adapter keeps; options travel in the resolved
:class:`~kerastl.zoo.sources.base.InputShape`.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import keras

from kerastl.errors import ConfigError, WeightsError, choice_error
from kerastl.zoo._keras_hub_family import group_names_for
from kerastl.zoo.sources.base import Adapter, InputShape, options_of, pool_feature_map
from kerastl.zoo.sources.layers import SequencePooling, import_keras_hub
from kerastl.zoo.weights import (
    check_preset_dir,
    extract_preset,
    is_archive,
    is_path,
    offline_message,
    torch_folder_as_safetensors,
)

_TOKEN_POOLINGS = ("avg", "max", "cls")


def init_args(cls) -> set[str]:
    """The argument names of ``cls.__init__``."""
    return set(inspect.signature(cls.__init__).parameters)


def hub_backbone_of(backbone: keras.Model) -> keras.Model:
    """The KerasHub ``Backbone`` nested in a kerastl ``"backbone"`` wrapper."""
    hub = import_keras_hub()
    for layer in backbone.layers:
        if isinstance(layer, hub.models.Backbone):
            return layer
    raise ConfigError(f"{backbone.name}: holds no KerasHub backbone.")


class KerasHubAdapter(Adapter):
    """Adapter over ``keras_hub.models.<Family>Backbone``; subclassed per modality.

    Example:
        >>> import kerastl
        >>> m = kerastl.build("bert_tiny_en_uncased", num_classes=2, weights="path/to/preset",
        ...                   sequence_length=64)  # doctest: +SKIP
    """

    #: Source options this modality takes besides ``input_shape``.
    option_names: tuple[str, ...] = ("backbone_config",)
    #: Wrapper layers of the ``"backbone"`` that belong to no layer group.
    wrapper_layers: tuple[str, ...] = ()

    def __init__(self, spec):
        super().__init__(spec)
        self._preprocessing = None  # made by preprocess(), completed by backbone()

    # -- input -----------------------------------------------------------------------
    def resolve_input_shape(self, input_shape: Any, **options: Any) -> InputShape:
        spec = self.spec
        self.check_options(options)
        bc = options.get("backbone_config")
        if bc is not None and not isinstance(bc, dict):
            raise ConfigError(
                f"backbone_config: expected a dict of {spec.extra['backbone_class']} "
                f"constructor arguments, got {bc!r}."
            )
        return InputShape(self._resolve(input_shape, options), options)

    def _resolve(self, input_shape: Any, options: dict[str, Any]) -> tuple:
        """Validate the modality's input shape; the options are already checked."""
        raise NotImplementedError

    def make_inputs(self, input_shape: tuple) -> keras.KerasTensor:
        return keras.Input(shape=input_shape, dtype="float32", name=self.input_name)

    def preprocess(self, inputs, input_shape: tuple):
        self._preprocessing = self._preprocessing_layer(input_shape, options_of(input_shape))
        return self._preprocessing(inputs)

    def _preprocessing_layer(self, input_shape: tuple, options: dict[str, Any]) -> keras.Layer:
        raise NotImplementedError

    # -- backbone --------------------------------------------------------------------
    def config(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The registry's architecture config, with ``backbone_config`` overrides."""
        cfg = copy.deepcopy(self.spec.extra["config"])
        cfg.update(copy.deepcopy((options or {}).get("backbone_config") or {}))
        for k, v in list(cfg.items()):
            if isinstance(v, list) and k == "image_shape" or k == "position_embedding_shape":
                cfg[k] = tuple(v)
        return cfg

    def _backbone_cls(self):
        return getattr(import_keras_hub().models, self.spec.extra["backbone_class"])

    def backbone(self, input_shape: tuple, weights: Any = None) -> keras.Model:
        options = options_of(input_shape)
        cls = self._backbone_cls()
        if weights is None:
            preset = None
            hub = self._random_init(cls, self._random_config(cls, input_shape, options))
        else:
            preset = self._resolve_preset(weights)
            hub = self._from_preset(cls, preset, **self._preset_kwargs(cls, input_shape))
            self._check_loaded(hub, input_shape)
        if self._preprocessing is not None:
            self._attach(self._preprocessing, preset, hub, options)
        return self._wrap(self._finish(hub, preset, options))

    def _random_config(self, cls, input_shape: tuple, options: dict[str, Any]) -> dict:
        """The constructor arguments of a randomly initialised backbone."""
        return self.config(options)

    def _random_init(self, cls, cfg: dict[str, Any]):
        try:
            return cls(**cfg)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"backbone_config: {self.spec.extra['backbone_class']} rejected the "
                f"configuration {cfg!r}: {exc}"
            ) from exc

    def _preset_kwargs(self, cls, input_shape: tuple) -> dict[str, Any]:
        """Extra ``from_preset`` arguments (the image shape, for image models)."""
        return {}

    def _check_loaded(self, hub, input_shape: tuple) -> None:
        """Check a preset's backbone against the resolved input."""

    def _attach(self, layer, preset: str | None, hub, options: dict[str, Any]) -> None:
        """Give the preprocessing layer what only the loaded preset knows."""

    def _finish(self, hub, preset: str | None, options: dict[str, Any]):
        """Last touch on the built KerasHub backbone before it is wrapped."""
        return hub

    def _wrap(self, hub) -> keras.Model:
        """Wrap the KerasHub backbone as the functional ``"backbone"`` kerastl expects."""
        raise NotImplementedError

    def _resolve_preset(self, weights: Any) -> str:
        spec = self.spec
        if isinstance(weights, (str, os.PathLike)) and is_path(weights):
            path = Path(os.path.expanduser(os.fspath(weights)))
            if path.is_file() and is_archive(path):
                path = extract_preset(path)
            path = torch_folder_as_safetensors(path)
            check_preset_dir(path, spec.name)
            return str(path)
        if weights == "imagenet" and spec.modality == "image" and spec.pretrained:
            # its own pretrained preset (ImageNet for most), as kerastl rank reads the tag
            return spec.pretrained[0]
        if isinstance(weights, str):
            known = sorted(getattr(self._backbone_cls(), "presets", {}) or {})
            if weights in spec.pretrained or weights in known:
                return weights
            raise choice_error(
                "weights",
                weights,
                [*spec.pretrained, *known],
                what=f"KerasHub preset for {spec.name}",
                cls=WeightsError,
            )
        raise ConfigError(
            f"weights: got {weights!r}. Valid: None (random init), the KerasHub preset "
            f"{spec.pretrained[0]!r}, or the path of a local preset folder (KerasHub or "
            "Hugging Face format)."
        )

    def _from_preset(self, cls, preset: str, **kwargs):
        try:
            return cls.from_preset(preset, **kwargs)
        except (WeightsError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - kagglehub/HF/h5 raise many kinds
            if os.path.isdir(preset):
                raise WeightsError(
                    f"weights: could not load the preset folder {preset!r} as a "
                    f"{self.spec.extra['backbone_class']} ({type(exc).__name__}: "
                    f"{str(exc)[:400]})."
                ) from exc
            raise offline_message(self.spec, preset, exc) from exc

    # -- pooling, groups -------------------------------------------------------------
    def pooled(self, features, pooling: str):
        """Token sequences pool with :class:`SequencePooling`, feature maps globally."""
        if len(features.shape) == 3:
            if pooling not in _TOKEN_POOLINGS:
                raise choice_error("pooling", pooling, _TOKEN_POOLINGS)
            return SequencePooling(pooling, name="pool")(features)
        return pool_feature_map(features, pooling)

    def layer_groups(self, backbone: keras.Model) -> OrderedDict[str, list[keras.Layer]]:
        """Transformer / stage groups of the backbone, from the family's group rule.

        The nested KerasHub model and the layers named in the rule's ``expand``
        are replaced by their sublayers; weightless input layers and the
        wrapper's own layers are left out.
        """
        rule = self.spec.extra["group_rule"]
        expand = set(rule.get("expand") or ())
        hub = import_keras_hub()

        def flat(layer):
            if isinstance(layer, hub.models.Backbone) or layer.name in expand:
                for sub in layer._flatten_layers(include_self=False, recursive=False):
                    yield from flat(sub)
            elif not isinstance(layer, keras.layers.InputLayer):
                yield layer

        layers = [sub for layer in backbone.layers for sub in flat(layer)]
        layers = [lyr for lyr in layers if lyr.name not in self.wrapper_layers]
        groups: OrderedDict[str, list[keras.Layer]] = OrderedDict()
        for layer, g in zip(layers, group_names_for([lyr.name for lyr in layers], rule)):
            groups.setdefault(g, []).append(layer)
        return groups

    def pyramid(self, backbone: keras.Model) -> list[tuple[str, Any]]:
        """The ``(level, tensor)`` feature pyramid of a built backbone (none by default)."""
        return []

    def feature_extractor(self, backbone: keras.Model, out_indices: Any = None) -> keras.Model:
        raise ConfigError(
            f"features_only: {self.spec.name} exposes no feature pyramid; pooled features "
            "come from kerastl.build(..., task='embedding') or the 'pool' layer."
        )
