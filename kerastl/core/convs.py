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
    with _backend_rewrite("conv", conv_as_depthwise):
        yield


#: XNNPACK (LiteRT's default CPU delegate) runs depthwise kernels of up to this many taps in
#: one pass; larger ones take a multi-pass path that ``python -m bench.int8_latency`` times
#: at 4.4x (float32) and 16x (int8) the built-in kernel on this CPU, for 7x7 at 56x56x96.
XNNPACK_SINGLE_PASS_TAPS = 25


def split_columns(kh: int, kw: int, taps: int = XNNPACK_SINGLE_PASS_TAPS) -> list[int]:
    """Column widths of the parts a ``kh x kw`` kernel is cut into, each of <= ``taps`` taps.

    Example:
        >>> split_columns(7, 7), split_columns(5, 5), split_columns(5, 7), split_columns(11, 3)
        ([3, 3, 1], [5], [5, 2], [2, 1])
    """
    step = max(1, min(kw, taps // kh))
    return [min(step, kw - c) for c in range(0, kw, step)]


def _splits(kh: int, kw: int) -> bool:
    """Whether cutting a ``kh x kw`` kernel into columns gives parts of <= 25 taps."""
    return kh * kw > XNNPACK_SINGLE_PASS_TAPS and kh <= XNNPACK_SINGLE_PASS_TAPS


def _ones(value: Any) -> bool:
    return all(int(v) == 1 for v in (value if isinstance(value, (list, tuple)) else [value]))


def split_depthwise(
    inputs: Any,
    kernel: Any,
    strides: Any = 1,
    padding: str = "valid",
    data_format: str | None = None,
    dilation_rate: Any = 1,
    fallback: Any = None,
) -> Any:
    """Keras' ``depthwise_conv``, with a large stride-1 kernel computed in column parts.

    A ``kh x kw`` kernel over :data:`XNNPACK_SINGLE_PASS_TAPS` taps (and of at most that
    many rows) becomes depthwise convolutions over slices of the padded input, one per
    :func:`split_columns` part, summed: the same numbers, in kernels XNNPACK runs in one
    pass. Strided, dilated, channels-first and small convolutions, and inputs of unknown
    width, go to ``fallback`` (default ``keras.ops.depthwise_conv``).

    Example:
        >>> import numpy as np, keras
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2, 9, 8, 3)).astype("float32")
        >>> k = rng.normal(size=(7, 7, 3, 2)).astype("float32")
        >>> want = keras.ops.depthwise_conv(x, k, padding="same")
        >>> got = split_depthwise(x, k, padding="same")
        >>> bool(np.allclose(got, want, atol=1e-4)), tuple(got.shape)
        (True, (2, 9, 8, 6))
    """
    import tensorflow as tf

    fallback = fallback or keras.ops.depthwise_conv
    data_format = data_format or keras.config.image_data_format()
    kh, kw = tuple(kernel.shape[:2]) if len(kernel.shape) == 4 else (0, 0)
    if (
        not _splits(kh, kw)
        or len(inputs.shape) != 4
        or inputs.shape[2] is None
        or data_format != "channels_last"
        or not (_ones(strides) and _ones(dilation_rate))
        or str(padding).lower() not in ("same", "valid")
    ):
        return fallback(inputs, kernel, strides, padding, data_format, dilation_rate)
    x = inputs
    if str(padding).lower() == "same":
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        x = tf.pad(x, [[0, 0], [ph, kh - 1 - ph], [pw, kw - 1 - pw], [0, 0]])
    width = x.shape[2] - kw + 1
    out, c0 = None, 0
    for g in split_columns(kh, kw):
        part = tf.nn.depthwise_conv2d(
            x[:, :, c0 : c0 + width + g - 1, :], kernel[:, c0 : c0 + g], [1, 1, 1, 1], "VALID"
        )
        out, c0 = part if out is None else out + part, c0 + g
    return out


@contextlib.contextmanager
def large_depthwise_split() -> Iterator[None]:
    """While inside, traced depthwise convolutions run as :func:`split_depthwise`.

    kerastl traces the graph it converts to TFLite inside this block when
    :func:`has_large_depthwise` says the model needs it: ConvNeXt-T's int8 file then runs
    in 45 ms instead of 354 ms with XNNPACK (``python -m bench.int8_latency``).

    Example:
        >>> import numpy as np, keras
        >>> layer = keras.layers.DepthwiseConv2D(7, padding="same")
        >>> x = np.ones((1, 8, 8, 2), "float32")
        >>> want = layer(x).numpy()
        >>> with large_depthwise_split():
        ...     got = layer(x).numpy()
        >>> bool(np.allclose(got, want, atol=1e-5))
        True
    """
    with _backend_rewrite("depthwise_conv", split_depthwise):
        yield


def has_large_depthwise(model: Any) -> bool:
    """Whether a layer of ``model`` is a depthwise convolution :func:`split_depthwise` splits.

    ``DepthwiseConv2D`` layers and grouped ``Conv2D`` layers of one channel per group (run
    as depthwise, :func:`conv_as_depthwise`), stride 1, channels last, kernel over 25 taps
    and at most 25 rows, input width known.

    Example:
        >>> import keras
        >>> x = keras.Input((16, 16, 4))
        >>> small = keras.Model(x, keras.layers.DepthwiseConv2D(5, padding="same")(x))
        >>> large = keras.Model(x, keras.layers.Conv2D(4, 7, padding="same", groups=4)(x))
        >>> has_large_depthwise(small), has_large_depthwise(large)
        (False, True)
    """
    for layer in model._flatten_layers(include_self=False):
        kernel = getattr(layer, "kernel", None) if getattr(layer, "built", False) else None
        shape = tuple(getattr(kernel, "shape", ()))
        if len(shape) != 4 or not _splits(shape[0], shape[1]):
            continue
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        grouped = isinstance(layer, keras.layers.Conv2D) and shape[2] == 1 and layer.groups > 1
        if (
            (depthwise or grouped)
            and _ones(layer.strides)
            and _ones(layer.dilation_rate)
            and layer.data_format == "channels_last"
            and _known_width(layer)
        ):
            return True
    return False


def _known_width(layer: Any) -> bool:
    """False when the layer's input width is known to be None (then nothing is split)."""
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):  # not called in a functional graph, or called twice
        return True
    return len(shape) != 4 or shape[2] is not None


@contextlib.contextmanager
def _backend_rewrite(name: str, rewrite: Any) -> Iterator[None]:
    """While inside, Keras' TensorFlow backend ``nn.<name>`` runs ``rewrite``.

    ``rewrite`` takes the backend op's arguments and ``fallback=`` (the op it replaces).
    Nesting is a no-op; other backends than TensorFlow are left alone.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    from keras.src.backend.tensorflow import nn as backend_nn

    before = getattr(backend_nn, name)
    if getattr(before, "_kerastl_depthwise", None) is rewrite:
        yield
        return

    def op(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        return rewrite(
            inputs, kernel, strides, padding, data_format, dilation_rate, fallback=before
        )

    op._kerastl_depthwise = rewrite
    with patched((backend_nn, name, op)):
        yield
