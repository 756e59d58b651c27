"""Custom Keras layers kerastl puts in model graphs.

All are registered serializable under the ``kerastl`` package, so a saved
``.keras`` file reloads without ``custom_objects`` once kerastl is imported
(``kerastl.load_model`` does that for you). Their ops are plain arithmetic so
that TFLite and ONNX converters map them to builtin ops.
"""

from __future__ import annotations

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="kerastl")
class ImagePreprocessing(keras.layers.Layer):
    """Map raw 0-255 RGB pixels to what a backbone expects.

    Args:
        mode: ``"caffe"``, ``"tf"``, ``"torch"``, ``"in_model"`` (identity: the
            backbone rescales itself) or ``"unit"`` (scale to [0, 1]).
        channels: Input channels, 3 for RGB or 1 for grayscale. For grayscale
            the per-channel constants are averaged, matching stem weights that
            were summed over RGB.

    Example:
        >>> import numpy as np
        >>> layer = ImagePreprocessing("tf")
        >>> [float(v) for v in layer(np.array([[0.0, 127.5, 255.0]]).reshape(1, 1, 1, 3))[0, 0, 0]]
        [-1.0, 0.0, 1.0]
    """

    MODES = ("caffe", "tf", "torch", "in_model", "unit")

    def __init__(self, mode: str, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            from kerastl._errors import choice_error

            raise choice_error("mode", mode, self.MODES)
        if channels not in (1, 3):
            from kerastl._errors import ConfigError

            raise ConfigError(f"channels must be 1 or 3, got channels={channels!r}.")
        self.mode = mode
        self.channels = channels
        self.supports_masking = False

    def _constants(self):
        if self.mode == "tf":
            return 1.0 / 127.5, [-1.0] * self.channels
        if self.mode == "unit":
            return 1.0 / 255.0, [0.0] * self.channels
        if self.mode == "torch":
            mean = [m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
            scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
            if self.channels == 1:
                return sum(scale) / 3, [-sum(mean) / 3]
            return scale, [-m for m in mean]
        # caffe: BGR order, mean subtraction on the 0-255 scale.
        mean = list(CAFFE_MEAN_BGR)
        if self.channels == 1:
            return 1.0, [-sum(mean) / 3]
        return 1.0, [-m for m in mean]

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "in_model":
            return x
        if self.mode == "caffe" and self.channels == 3:
            # RGB -> BGR as a 3x3 permutation matmul: a builtin op in every runtime.
            perm = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
            x = ops.matmul(x, ops.convert_to_tensor(perm, dtype=self.compute_dtype))
        scale, offset = self._constants()
        scale = ops.convert_to_tensor(scale, dtype=self.compute_dtype)
        offset = ops.convert_to_tensor(offset, dtype=self.compute_dtype)
        return x * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "channels": self.channels}
