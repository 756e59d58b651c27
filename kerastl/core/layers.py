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
            from kerastl.errors import choice_error

            raise choice_error("mode", mode, self.MODES)
        if channels not in (1, 3):
            from kerastl.errors import ConfigError

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


def _range(value: float | tuple[float, float], name: str) -> tuple[float, float]:
    lo, hi = (-abs(value), abs(value)) if isinstance(value, (int, float)) else value
    if lo > hi:
        raise ValueError(f"{name}: expected (low, high) with low <= high, got {value!r}.")
    return float(lo), float(hi)


@keras.saving.register_keras_serializable(package="kerastl")
class RandomAffine(keras.layers.RandomRotation):
    """Random rotation, zoom and translation in one resampling.

    ``RandomRotation`` then ``RandomZoom`` then ``RandomTranslation`` resample
    the image three times (three interpolations, three passes over the pixels);
    this layer composes the three transforms into one matrix per image and
    resamples once, with the same parameter conventions as those layers:
    ``rotation`` in fractions of a full turn, ``zoom`` as ``RandomZoom``'s
    ``height_factor`` (positive zooms out, aspect ratio kept), ``translation``
    as fractions of height and width.

    Args:
        rotation: ``f`` or ``(low, high)``: angle uniform in ``2*pi*[low, high]``.
        zoom: ``f`` or ``(low, high)``: scale ``1 + u``, ``u`` uniform in ``[low, high]``.
        translation: ``(height_factor, width_factor)``, each ``f`` or ``(low, high)``.
        horizontal_flip: Also mirror half of the images left-right (``RandomFlip``
            in ``"horizontal"`` mode), inside the same resampling.
        fill_mode, interpolation, seed, fill_value: as in ``RandomRotation``.

    Example:
        >>> import numpy as np
        >>> layer = RandomAffine(rotation=0.08, zoom=0.15, seed=0)
        >>> layer(np.zeros((2, 32, 32, 3), "float32"), training=True).shape
        TensorShape([2, 32, 32, 3])
    """

    def __init__(
        self,
        rotation: float | tuple[float, float] = 0.0,
        zoom: float | tuple[float, float] = 0.0,
        translation: tuple[float | tuple[float, float], float | tuple[float, float]] = (0.0, 0.0),
        horizontal_flip: bool = False,
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        **kwargs,
    ):
        super().__init__(
            factor=_range(rotation, "rotation"),
            fill_mode=fill_mode,
            interpolation=interpolation,
            seed=seed,
            fill_value=fill_value,
            **kwargs,
        )
        self.zoom = _range(zoom, "zoom")
        self.translation = (
            _range(translation[0], "translation[0]"),
            _range(translation[1], "translation[1]"),
        )
        self.horizontal_flip = bool(horizontal_flip)

    def get_random_transformation(self, data, training=True, seed=None):
        if not training:
            return None
        ops_ = self.backend
        images = data["images"] if isinstance(data, dict) else data
        shape = ops_.core.shape(images)
        batched = len(shape) == 4
        batch = shape[0] if batched else 1
        h, w = (shape[1], shape[2]) if batched else (shape[0], shape[1])
        if self.data_format == "channels_first":
            h, w = (shape[2], shape[3]) if batched else (shape[1], shape[2])
        if seed is None:
            seed = self._get_seed_generator(ops_._backend)

        def uniform(bounds):
            return ops_.random.uniform((batch,), minval=bounds[0], maxval=bounds[1], seed=seed)

        angle = uniform((self.factor[0] * 360.0, self.factor[1] * 360.0))
        scale = 1.0 + uniform(self.zoom)
        dy = uniform(self.translation[0]) * ops_.cast(h, "float32")
        dx = uniform(self.translation[1]) * ops_.cast(w, "float32")
        zeros = ops_.numpy.zeros((batch,))
        matrix = self._compute_affine_matrix(
            center_x=0.5,
            center_y=0.5,
            angle=angle,
            translate_x=-dx,
            translate_y=-dy,
            scale=scale,
            shear_x=zeros,
            shear_y=zeros,
            height=h,
            width=w,
        )
        if self.horizontal_flip:
            # Output pixel x reads where x' = (w - 1) - x would have read: negate the
            # x column of the map and move its offset, for the images drawn to flip.
            flip = ops_.cast(uniform((0.0, 1.0)) < 0.5, matrix.dtype)
            sign = 1.0 - 2.0 * flip
            wm1 = ops_.cast(w, matrix.dtype) - 1.0
            a0, b0 = matrix[:, 0], matrix[:, 3]
            matrix = ops_.numpy.stack(
                [
                    a0 * sign,
                    matrix[:, 1],
                    matrix[:, 2] + flip * a0 * wm1,
                    b0 * sign,
                    matrix[:, 4],
                    matrix[:, 5] + flip * b0 * wm1,
                    matrix[:, 6],
                    matrix[:, 7],
                ],
                axis=1,
            )
        if not batched:
            matrix = ops_.numpy.squeeze(matrix, axis=0)
        return {
            "angle": angle,
            "rotation_matrix": matrix,
            "image_height": h,
            "image_width": w,
            "batch_size": batch,
        }

    def get_config(self):
        config = super().get_config()
        config.pop("factor", None)
        return {
            **config,
            "rotation": self.factor,
            "zoom": self.zoom,
            "translation": self.translation,
            "horizontal_flip": self.horizontal_flip,
        }
