"""Grouped convolutions with one input channel per group, run as depthwise convolutions.

ConvNeXt's 7x7 "depthwise" layer is ``Conv2D(groups=channels)``. Keras' TensorFlow
backend runs every grouped convolution through an XLA-compiled function, because
TensorFlow's CPU kernels have none; a grouped convolution whose groups each read one
channel is exactly a depthwise convolution, which TensorFlow, LiteRT and onnxruntime run
natively. ``python -m bench.grouped_conv`` on this 2-core CPU: ConvNeXt-B inference
0.986 -> 0.244 s at batch 1; a ConvNeXt-T training step (96 px, batch 16) 3.91 -> 0.81 s.

:func:`grouped_convs_as_depthwise` swaps Keras' backend ``conv`` for
:func:`conv_as_depthwise` while kerastl traces a model (training, feature extraction,
export). The weights and the saved model are unchanged: the kernel is reshaped in the graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras

from kerastl.core.patching import patched


def conv_as_depthwise(
    inputs: Any,
    kernel: Any,
    strides: Any = 1,
    padding: str = "valid",
    data_format: str | None = None,
    dilation_rate: Any = 1,
    fallback: Any = None,
) -> Any:
    """Keras' ``conv``, as a depthwise convolution when each group has one input channel.

    A grouped convolution whose kernel is ``(k.., 1, channels * m)`` computes what a
    depthwise convolution with the kernel reshaped to ``(k.., channels, m)`` computes,
    output channels in the same order. Other convolutions go to ``fallback`` (default
    ``keras.ops.conv``).

    Example:
        >>> import numpy as np, keras
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2, 9, 9, 4)).astype("float32")
        >>> k = rng.normal(size=(3, 3, 1, 8)).astype("float32")  # 4 groups, 2 filters each
        >>> want = keras.ops.conv(x, k, strides=2, padding="same")
        >>> got = conv_as_depthwise(x, k, strides=2, padding="same")
        >>> bool(np.allclose(got, want, atol=1e-5)), tuple(got.shape)
        (True, (2, 5, 5, 8))
    """
    from keras.src.backend.tensorflow import nn as backend_nn

    fallback = fallback or keras.ops.conv
    data_format = data_format or keras.config.image_data_format()
    shape = tuple(kernel.shape)
    channels = inputs.shape[-1 if data_format == "channels_last" else 1]
    if (
        len(inputs.shape) not in (3, 4)
        or None in shape
        or shape[-2] != 1
        or not channels
        or channels == 1
        or shape[-1] % channels
        or _too_small(inputs.shape, shape, padding, data_format, dilation_rate)
    ):
        return fallback(inputs, kernel, strides, padding, data_format, dilation_rate)
    import tensorflow as tf

    kernel = tf.reshape(kernel, (*shape[:-2], channels, shape[-1] // channels))
    as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return backend_nn.depthwise_conv(
        inputs, kernel, as_tuple(strides), padding, data_format, as_tuple(dilation_rate)
    )


def _too_small(input_shape, kernel_shape, padding, data_format, dilation_rate) -> bool:
    """Whether a ``valid`` convolution has no output: Keras' own conv says so, TF's would not."""
    if str(padding).lower() != "valid":
        return False
    spatial = input_shape[1:-1] if data_format == "channels_last" else input_shape[2:]
    rates = dilation_rate if isinstance(dilation_rate, (list, tuple)) else [dilation_rate] * 2
    return any(
        size is not None and size < (k - 1) * r + 1
        for size, k, r in zip(spatial, kernel_shape[:-2], rates)
    )


@contextlib.contextmanager
def grouped_convs_as_depthwise() -> Iterator[None]:
    """While inside, Keras' TensorFlow backend runs one-channel groups as depthwise convs.

    Only what is traced or run inside is affected; nesting is a no-op. Other backends than
    TensorFlow are left alone.

    Example:
        >>> import numpy as np, keras
        >>> layer = keras.layers.Conv2D(6, 3, groups=6)
        >>> x = np.ones((1, 5, 5, 6), "float32")
        >>> want = layer(x).numpy()
        >>> with grouped_convs_as_depthwise():
        ...     got = layer(x).numpy()
        >>> bool(np.allclose(got, want, atol=1e-5))
        True
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    from keras.src.backend.tensorflow import nn as backend_nn

    before = backend_nn.conv
    if getattr(before, "_kerastl_depthwise", False):
        yield
        return

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        return conv_as_depthwise(
            inputs, kernel, strides, padding, data_format, dilation_rate, fallback=before
        )

    conv._kerastl_depthwise = True
    with patched((backend_nn, "conv", conv)):
        yield
