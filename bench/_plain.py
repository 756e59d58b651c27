"""The plain-Keras side of the comparisons: what a user writes without kerastl.

Models follow the Keras transfer-learning guide: a ``keras.applications`` base
with ``include_top=False``, the family's ``preprocess_input`` convention in the
graph, ``GlobalAveragePooling2D``, optional ``Dropout`` and a softmax ``Dense``.
Also small data helpers (synthetic images, scikit-learn digits).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def preprocess_layer(mode: str):
    """A Keras layer doing ``mode`` preprocessing on 0-255 RGB (the family's convention)."""
    import keras

    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")
    if mode == "unit":
        return keras.layers.Rescaling(1 / 255.0, name="rescale")
    if mode == "caffe":
        mean = np.array([103.939, 116.779, 123.68], "float32")

        def caffe(x):
            return keras.ops.flip(x, axis=-1) - mean

        return keras.layers.Lambda(caffe, name="caffe")
    if mode == "torch":
        mean = np.array([0.485, 0.456, 0.406], "float32") * 255.0
        std = np.array([0.229, 0.224, 0.225], "float32") * 255.0
        return keras.layers.Normalization(mean=mean, variance=std**2, name="torch")
    return None  # in_model: the base rescales itself


def base_model(name: str, input_shape: tuple, weights: Any = None):
    """``keras.applications.<Constructor>(include_top=False)`` for registry entry ``name``."""
    import keras

    from kerastl.zoo import get_spec

    spec = get_spec(name)
    ctor = getattr(keras.applications, spec.constructor)
    return ctor(include_top=False, weights=weights, input_shape=input_shape)


def freeze_batchnorm(model) -> int:
    """Set ``trainable=False`` on every BatchNormalization layer (keeps them in inference mode)."""
    import keras

    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            n += 1
    return n


def classifier(
    name: str,
    input_shape: tuple,
    num_classes: int,
    base_trainable: bool = True,
    bn_trainable: bool = True,
    dropout: float = 0.0,
    base=None,
    learning_rate: float = 1e-3,
    jit_compile: Any = "auto",
):
    """The guide's model: input -> preprocess -> base -> GAP -> Dense.

    Returns:
        ``(model, base)``, compiled with Adam, sparse categorical cross-entropy and accuracy.
    """
    import keras

    from kerastl.zoo import get_spec

    spec = get_spec(name)
    base = base or base_model(name, input_shape)
    base.trainable = base_trainable
    if base_trainable and not bn_trainable:
        freeze_batchnorm(base)
    inputs = keras.Input(shape=input_shape)
    x = inputs
    pre = preprocess_layer(spec.preprocessing)
    if pre is not None:
        x = pre(x)
    # The guide calls the base with training=False so its BatchNorm stays in inference mode;
    # a full fine-tune that trains BatchNorm calls it plainly.
    x = base(x) if (base_trainable and bn_trainable) else base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    return model, base


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Raw 0-255 float32 RGB images."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32")


def digits_rgb(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits (1797 images, 10 classes) as ``size`` x ``size`` RGB 0-255 float32."""
    import tensorflow as tf

    from kerastl.train.demo import load_digits_uint8

    x, y = load_digits_uint8()
    x = tf.image.resize(x[..., None].astype("float32"), (size, size)).numpy()
    return np.repeat(x, 3, axis=-1).clip(0, 255).astype("float32"), y


def informative_batchnorm(model, x) -> None:
    """Set BatchNorm moving statistics from one batch (random-init features stop collapsing).

    With ``weights=None`` the stored statistics are mean 0 / variance 1, and deep
    random networks then map every input to nearly the same vector. Setting the
    statistics from real inputs gives features a head can learn from.
    """
    import keras

    bns = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    saved = [(b.trainable, b.momentum) for b in bns]
    for b in bns:
        b.trainable, b.momentum = True, 0.0
    model(x, training=True)
    for b, (trainable, momentum) in zip(bns, saved):
        b.trainable, b.momentum = trainable, momentum
