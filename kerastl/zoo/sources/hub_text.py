"""KerasHub text backbones: ``"text"`` (raw strings) -> ``"preprocess"`` (the KerasHub
tokenizer and text-classifier preprocessor: padding and truncation to
``sequence_length``) -> ``"backbone"`` -> ``"pool"`` (masked mean, first token or
BERT pooler) -> head.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl.errors import ConfigError, WeightsError, choice_error
from kerastl.zoo.sources.base import Capabilities, detach_rest, options_of, tap_indices
from kerastl.zoo.sources.keras_hub import KerasHubAdapter, hub_backbone_of
from kerastl.zoo.sources.layers import HubTextPreprocessing, SequencePooling, import_keras_hub
from kerastl.zoo.sources.lora import enable_lora
from kerastl.zoo.weights import check_preset_dir, is_path, offline_message

_TEXT_POOLINGS = ("avg", "max", "cls", "pooler")
#: Backbones whose preprocessor emits segment ids (sentence A / B) besides tokens.
SEGMENT_ID_BACKBONES = frozenset({"BertBackbone", "AlbertBackbone", "ElectraBackbone"})


class HubTextAdapter(KerasHubAdapter):
    """Adapter over a KerasHub text encoder; offers LoRA on its attention layers."""

    input_name = "text"
    capabilities = Capabilities(lora=True, export_split="preprocess")
    option_names = ("sequence_length", "tokenizer", "backbone_config")
    wrapper_layers = ("padding_mask_out",)  # the wrapper's own mask pass-through

    def max_len(self, options: dict[str, Any] | None = None) -> int:
        """Most tokens the position embeddings take."""
        cfg = self.config(options)
        return int(cfg.get("max_sequence_length", self.spec.extra.get("max_sequence_length", 512)))

    def _resolve(self, input_shape: Any, options: dict[str, Any]) -> tuple:
        spec = self.spec
        sequence_length = options.get("sequence_length")
        if input_shape is not None and sequence_length is not None:
            raise ConfigError(
                f"{spec.name}: give the text length once, as sequence_length="
                f"{sequence_length!r} (input_shape={input_shape!r} was also given)."
            )
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
            if len(shape) != 1:
                raise ConfigError(
                    f"input_shape: {spec.name} is a text model (raw strings in); it takes "
                    f"sequence_length=N (tokens), not an image shape: got "
                    f"input_shape={input_shape!r}."
                )
            sequence_length = shape[0]
        max_len = self.max_len(options)
        if sequence_length is None:
            sequence_length = min(spec.input_size, max_len)
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)):
            raise ConfigError(
                f"sequence_length: expected a whole number of tokens, got {sequence_length!r}."
            )
        if not spec.min_input_size <= sequence_length <= max_len:
            raise ConfigError(
                f"sequence_length: {spec.name} takes {spec.min_input_size} to {max_len} tokens "
                f"(its position embeddings stop at max_sequence_length={max_len}); got "
                f"sequence_length={sequence_length}."
            )
        return (int(sequence_length),)

    def input_spec(self, input_shape: tuple) -> dict[str, Any]:
        return {
            "name": "text",
            "shape": [],
            "dtype": "string",
            "range": None,
            "layout": "one UTF-8 string per example",
            "preprocessing": "keras_hub tokenizer: " + str(self.spec.extra.get("tokenizer")),
            "sequence_length": int(input_shape[0]),
            "max_sequence_length": self.max_len(options_of(input_shape)),
        }

    def make_inputs(self, input_shape: tuple) -> keras.KerasTensor:
        return keras.Input(shape=(), dtype="string", name="text")

    def _preprocessing_layer(self, input_shape: tuple, options: dict[str, Any]) -> keras.Layer:
        keys = ["token_ids", "padding_mask"]
        if self.spec.extra["backbone_class"] in SEGMENT_ID_BACKBONES:
            keys.append("segment_ids")
        return HubTextPreprocessing(input_shape[0], keys, name="preprocess")

    # -- backbone --------------------------------------------------------------------
    def _random_config(self, cls, input_shape: tuple, options: dict[str, Any]) -> dict:
        cfg = self.config(options)
        if input_shape[0] > int(cfg.get("max_sequence_length", 512)):
            raise ConfigError(
                f"sequence_length: {input_shape[0]} is above the backbone's "
                f"max_sequence_length={cfg.get('max_sequence_length')}."
            )
        return cfg

    def _check_loaded(self, hub, input_shape: tuple) -> None:
        max_len = int(hub.get_config().get("max_sequence_length", 512))
        if input_shape[0] > max_len:
            raise ConfigError(
                f"sequence_length: {input_shape[0]} is above the maximum of this "
                f"preset ({max_len} tokens)."
            )

    def _attach(self, layer, preset: str | None, hub, options: dict[str, Any]) -> None:
        spec = self.spec
        source = next(
            s for s in (options.get("tokenizer"), preset, spec.extra["preset"]) if s is not None
        )
        tokenizer = self._tokenizer(source)
        _check_vocabulary(tokenizer, hub)
        pre_cls = getattr(import_keras_hub().models, spec.extra["preprocessor"])
        pre = pre_cls(
            tokenizer=tokenizer,
            sequence_length=layer.sequence_length,
            name=f"{spec.family}_preprocessor",
        )
        locked = layer._tracker.locked  # built by its symbolic call: track the new sublayer
        layer._tracker.unlock()
        layer.preprocessor = pre
        if locked:
            layer._tracker.lock()

    def _tokenizer(self, source: Any):
        """The tokenizer ``source`` names: a Tokenizer, its arguments, a preset or folder."""
        spec = self.spec
        hub = import_keras_hub()
        tok_cls = getattr(hub.models, spec.extra["tokenizer"])
        if isinstance(source, hub.tokenizers.Tokenizer):
            return source
        if isinstance(source, dict):
            try:
                return tok_cls(**source)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(
                    f"tokenizer: {spec.extra['tokenizer']} rejected {sorted(source)}: {exc}"
                ) from exc
        if not isinstance(source, (str, os.PathLike)):
            raise ConfigError(
                f"tokenizer: expected a preset name, a folder, a keras_hub Tokenizer or a "
                f"dict of {spec.extra['tokenizer']} arguments, got {source!r}."
            )
        source = os.fspath(source)
        if is_path(source):
            check_preset_dir(Path(source), spec.name)
        try:
            return tok_cls.from_preset(source)
        except Exception as exc:  # noqa: BLE001
            if os.path.isdir(source):
                raise WeightsError(
                    f"tokenizer: could not load a {spec.extra['tokenizer']} from {source!r}: {exc}"
                ) from exc
            err = offline_message(spec, source, exc)
            raise WeightsError(  # the fix first: a table of failed candidates cuts it short
                f"tokenizer: could not get the vocabulary of preset {source!r} "
                f"({type(exc).__name__}); random init (weights=None) needs one too. Pass "
                "tokenizer='local/preset/folder' (CLI --tokenizer DIR: a KerasHub or Hugging "
                f"Face folder) or a keras_hub tokenizer. {err}"
            ) from exc

    def _wrap(self, hub) -> keras.Model:
        """Nest the KerasHub backbone whole; its padding mask goes out too (masked pooling)."""
        inputs = {
            t.name: keras.Input(shape=(None,), dtype=t.dtype, name=t.name)
            for t in keras.tree.flatten(hub.input)
        }
        out = hub(inputs)
        # An input cannot be an output: the mask passes through an Identity.
        mask = keras.layers.Identity(name="padding_mask_out")(inputs["padding_mask"])
        outputs = {
            "sequence_output": out["sequence_output"] if isinstance(out, dict) else out,
            "padding_mask": mask,
        }
        if isinstance(out, dict) and "pooled_output" in out:
            outputs["pooled_output"] = out["pooled_output"]
        return keras.Model(inputs, outputs, name="backbone")

    def pooled(self, features, pooling: str):
        if pooling not in _TEXT_POOLINGS:
            raise choice_error("pooling", pooling, _TEXT_POOLINGS)
        if pooling == "pooler":
            if "pooled_output" not in features:
                raise ConfigError(
                    f"pooling: {self.spec.name} has no pooler layer; use 'avg' (masked mean), "
                    "'max' or 'cls' (first token)."
                )
            return keras.layers.Identity(name="pool")(features["pooled_output"])
        return SequencePooling(pooling, name="pool")(
            features["sequence_output"], features["padding_mask"]
        )

    def idle_groups(self, pooling: str | None) -> frozenset[str]:
        """The ``pooler`` group (a dense layer on the first token), unless the head reads it.

        Example:
            >>> from kerastl.zoo import get_adapter
            >>> a = get_adapter("bert_tiny_en_uncased")
            >>> sorted(a.idle_groups("avg")), sorted(a.idle_groups("pooler"))
            (['pooler'], [])
        """
        has_pooler = "pooler" in self.spec.group_names
        return frozenset({"pooler"} if has_pooler and pooling != "pooler" else ())

    def feature_extractor(self, backbone: keras.Model, out_indices: Any = None) -> keras.Model:
        """The masked mean of each chosen layer's token states: one ``(batch, hidden)`` per tap.

        A text encoder's taps are its layers (``kerastl info NAME``); padding tokens are
        left out of the mean, as the final ``"avg"`` pooling does.
        """
        taps = self.spec.taps
        if not taps:
            return super().feature_extractor(backbone, out_indices)
        n = len(taps)
        what = f"{n} layer taps ({taps[0].layer} .. {taps[-1].layer})"
        chosen = tap_indices(out_indices, n, self.spec.name, what)
        hub = hub_backbone_of(backbone)
        have = {layer.name for layer in hub.layers}
        distinct = list(dict.fromkeys(chosen))  # a tap asked for twice is pooled once
        for i in distinct:
            if taps[i].layer not in have:  # backbone_config or a preset of another depth
                n_built = sum(t.layer in have for t in taps)
                raise ConfigError(
                    f"out_indices: tap {i} ({taps[i].layer}) is not in this {self.spec.name} "
                    f"backbone, which was built with {n_built} of the registry's {n} layers "
                    "(backbone_config or a preset of another depth); valid indices "
                    f"0..{n_built - 1}."
                )
        outs = [hub.get_layer(taps[i].layer).output for i in distinct]
        states = keras.Model(hub.input, outs, name="layer_states")
        seqs = keras.tree.flatten(states(backbone.input))
        mask = backbone.input["padding_mask"]
        pooled = {
            i: SequencePooling("avg", name=f"tap{i}")(x, mask) for i, x in zip(distinct, seqs)
        }
        features = keras.Model(backbone.input, [pooled[i] for i in chosen], name="features")
        return detach_rest(backbone, features)

    def enable_lora(self, backbone: keras.Model, rank: int) -> int:
        """Add rank-``rank`` LoRA adapters to the attention query/value projections.

        Every other backbone weight is frozen (variable by variable), so only
        the LoRA factors train. Returns the number of adapted layers.
        """
        return enable_lora(backbone, rank, self.spec.name)


def _check_vocabulary(tokenizer, hub_backbone) -> None:
    """The tokenizer's ids must fit the backbone's embedding table."""
    vocab = tokenizer.vocabulary_size()
    cfg = hub_backbone.get_config()
    emb = int(cfg.get("vocabulary_size", cfg.get("vocab_size", vocab)))
    if vocab > emb:
        raise ConfigError(
            f"tokenizer: its vocabulary has {vocab} tokens but the backbone embeds only "
            f"{emb}; use the tokenizer of the same preset, or set backbone_config="
            f"{{'vocabulary_size': {vocab}}} for random init."
        )
