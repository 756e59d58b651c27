"""Cached backbone features: with a frozen backbone, run it once and train the head alone.

A kerastl model is ``input -> preprocess -> backbone -> pool -> head``. With
the backbone frozen (and its BatchNorm in inference mode) everything up to
the head is a fixed function, so its output can be computed once per example
and the head trained on those vectors. The head model built here *shares* its
layers with the full model: training it trains the full model's head, and the
full model is assembled by construction.

Features are kept in memory or on disk, keyed by backbone, the backbone's
weights (a hash of their values), input shape, dtype policy and the data's
fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl.core.meta import ModelMeta
from kerastl.core.progress import progress_bar
from kerastl.errors import ConfigError

log = logging.getLogger(__name__)

#: Head layer names written by kerastl.core.heads.attach_head, input side first.
HEAD_LAYERS = ("head_dropout", "logits", "predictions", "projection", "probabilities", "embedding")


def head_layers(model: keras.Model) -> list[keras.Layer]:
    """The head's layers of a kerastl model, in call order."""
    names = {layer.name for layer in model.layers}
    layers = [model.get_layer(n) for n in HEAD_LAYERS if n in names]
    if not layers:
        raise ConfigError(
            "cache_features: the model has no kerastl head (layers named "
            f"{HEAD_LAYERS}); build it with kerastl.build()."
        )
    return layers


def split_model(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """``(feature_model, head_model)`` of a kerastl model; the head shares the model's layers.

    Example:
        >>> feats, head = split_model(kerastl.build("mobilenet_v3_small", num_classes=3,
        ...                                         input_shape=(32, 32, 3)))  # doctest: +SKIP
        >>> head.input_shape  # doctest: +SKIP
        (None, 576)
    """
    layers = head_layers(model)
    feature_tensor = layers[0].input
    feature_model = keras.Model(model.inputs, feature_tensor, name="features")
    x = inp = keras.Input(
        shape=tuple(feature_tensor.shape[1:]), name="features", dtype=feature_tensor.dtype
    )
    for layer in layers:
        x = layer(x)
    head_model = keras.Model(inp, x, name="head")
    return feature_model, head_model


def backbone_is_frozen(model: keras.Model) -> bool:
    """True when no weight before the head trains (so features are a fixed function)."""
    head_ids = {id(v) for layer in head_layers(model) for v in layer.weights}
    return not any(id(v) not in head_ids for v in model.trainable_weights)


def weights_hash(model: keras.Model) -> str:
    """A hash of every weight value of ``model`` (identifies random or fine-tuned weights)."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.asarray(keras.ops.convert_to_numpy(w))
        h.update(f"{w.path}|{a.shape}|{a.dtype}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def cache_key(model: keras.Model, feature_model: keras.Model, data_fingerprint: str) -> str:
    """Key of a feature cache: what the features depend on.

    Backbone, weights (and a hash of their values), the input (shape; for text the
    sequence length, in the model's input metadata), preprocessing and pooling, the
    features' shape, the dtype policy and the data.
    """
    meta = ModelMeta.of(model)
    how = {"input": meta.input, "preprocessing": meta.preprocessing, "pooling": meta.pooling}
    parts = [
        str(meta.backbone or model.name),
        str(meta.weights),
        weights_hash(feature_model),
        str(tuple(feature_model.input_shape)),
        json.dumps(how, sort_keys=True, default=str),
        str(tuple(feature_model.output_shape)),
        keras.mixed_precision.global_policy().name,
        data_fingerprint,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


#: Pixels per batch of the feature pass: 128 images of 128 x 128. Inference has no
#: gradients to keep, and on CPU a batch of 128 runs a small backbone about twice as
#: fast per image as a batch of 32 (bench/features.py).
FEATURE_BATCH_PIXELS = 128 * 128 * 128
FEATURE_BATCH_MAX = 128


def feature_batch_size(image_size: tuple[int, int] | None, batch_size: int) -> int:
    """Batch size of the feature pass: large for small images, never below ``batch_size``.

    Example:
        >>> feature_batch_size((128, 128), 32), feature_batch_size((224, 224), 16)
        (128, 32)
        >>> feature_batch_size((512, 512), 16), feature_batch_size(None, 8)
        (16, 8)
    """
    if image_size is None:
        return batch_size
    fits = FEATURE_BATCH_PIXELS // max(1, int(image_size[0]) * int(image_size[1]))
    pow2 = 1 << max(0, fits.bit_length() - 1)  # a power of two: one shape per pass
    return max(batch_size, min(FEATURE_BATCH_MAX, pow2))


def _inference_fn(feature_model: keras.Model) -> Any:
    """``feature_model`` in inference mode as one graph for any batch size.

    Traced once per model (train and validation passes and the last, partial batch
    share it: each trace of a backbone costs about as much as a second of inference).
    """
    import tensorflow as tf

    fn = feature_model.__dict__.get("_kerastl_inference_fn")
    if fn is None:
        inp = feature_model.inputs[0]

        @tf.function(reduce_retracing=True)
        def graph(x):
            return feature_model(x, training=False)

        spec = tf.TensorSpec((None, *inp.shape[1:]), inp.dtype)
        if spec.shape[1:].is_fully_defined():
            graph = graph.get_concrete_function(spec)

        def fn(x):
            x = tf.convert_to_tensor(x)
            return graph(x if x.dtype == spec.dtype else tf.cast(x, spec.dtype))

        # Kept on the model (outside Keras' attribute tracking), freed with it.
        object.__setattr__(feature_model, "_kerastl_inference_fn", fn)
    return fn


def compute_features(
    feature_model: keras.Model,
    dataset: Any,
    steps: int | None = None,
    verbose: int = 1,
    label: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``feature_model`` over a batched ``(x, y)`` dataset in order (a bar on a terminal).

    Returns:
        ``(features, labels)`` as NumPy arrays.
    """
    run = _inference_fn(feature_model)
    feats, labels = [], []
    if verbose:
        log.info(f"caching {label}")
    for x, y in progress_bar(dataset, total=steps, show=bool(verbose), unit="batch", leave=False):
        feats.append(np.asarray(run(x), dtype=np.float32))
        labels.append(np.asarray(y))
    if not feats:
        return np.zeros((0,) + tuple(feature_model.output_shape[1:]), np.float32), np.zeros(0)
    return np.concatenate(feats), np.concatenate(labels)


class FeatureCache:
    """Features of datasets, in memory (this process) or on disk (across runs).

    Args:
        mode: ``"memory"`` or ``"disk"``.
        directory: Folder of the disk cache (default ``~/.cache/kerastl/features``).

    Example:
        >>> cache = FeatureCache("disk", "/tmp/feats")  # doctest: +SKIP
        >>> x, y = cache.get(model, feature_model, ex.fingerprint(), dataset)  # doctest: +SKIP
    """

    _memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __init__(self, mode: str = "memory", directory: str | os.PathLike | None = None):
        if mode not in ("memory", "disk"):
            raise ConfigError(f"cache_features: expected 'memory' or 'disk', got {mode!r}.")
        self.mode = mode
        self.directory = Path(directory or Path.home() / ".cache" / "kerastl" / "features")
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0

    def get(
        self,
        model: keras.Model,
        feature_model: keras.Model,
        fingerprint: str,
        dataset: Any,
        steps: int | None = None,
        verbose: int = 1,
        label: str = "features",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of ``dataset``, computed at most once per key."""
        key = cache_key(model, feature_model, fingerprint)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.directory / f"{key}.npz"
        if self.mode == "disk" and path.is_file():
            with np.load(path) as z:
                value = (z["x"], z["y"])
            self.hits += 1
            if verbose:
                log.info(f"{label}: loaded cached features {path}")
            self._memory[key] = value
            return value
        self.misses += 1
        t0 = time.perf_counter()
        value = compute_features(feature_model, dataset, steps, verbose, label)
        self.seconds += time.perf_counter() - t0
        if self.mode == "disk":
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, x=value[0], y=value[1])
            os.replace(tmp, path)
        self._memory[key] = value
        return value

    @classmethod
    def clear_memory(cls) -> None:
        """Forget the in-memory features of this process."""
        cls._memory.clear()
