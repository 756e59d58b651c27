"""Export hooks of image models: raw 0-255 pixels in, plus encoded-bytes serving."""

from __future__ import annotations

import base64
import io
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerastl.core.sampling import spread
from kerastl.errors import ConfigError, DataError
from kerastl.export.modalities import ModalityExporter, register_modality


def _decode(data: bytes, size: Any, channels: int, path: str, argument: str) -> np.ndarray:
    """Pixels of one encoded image as float32 (TensorFlow's decoder first, then PIL)."""
    import tensorflow as tf

    from kerastl.data.images import decode_and_resize

    try:
        return decode_and_resize(data, size, channels).numpy().astype(np.float32)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        pass  # not a format TensorFlow decodes: PIL below
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return _pil_pixels(img, size, channels)
    except (UnidentifiedImageError, OSError) as exc:
        reason = re.sub(r" <[^>]*>", "", str(exc))  # PIL names its BytesIO object
        raise DataError(f"{argument}: {path!r} is not a readable image ({reason}).") from exc


def _pil_pixels(img: Any, size: Any, channels: int) -> np.ndarray:
    """One PIL image as float32 model input: upright (EXIF), RGB or grey, resized by
    :func:`~kerastl.data.images.resize_uint8`."""
    from PIL import ImageOps

    from kerastl.data.images import resize_uint8

    img = ImageOps.exif_transpose(img).convert("RGB" if channels == 3 else "L")
    arr = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, channels)
    return resize_uint8(arr, size).numpy().astype(np.float32)


class ImageExporter(ModalityExporter):
    """Raw ``float32`` NHWC pixels in ``[0, 255]``; ``serving_bytes`` takes JPEG/PNG strings.

    Example:
        >>> ex = ImageExporter({"input": {"name": "image", "shape": [32, 32, 3]}})
        >>> ex.sample_inputs(2).shape
        (2, 32, 32, 3)
    """

    name = "image"
    formats = ("saved_model", "tflite", "onnx")

    @property
    def shape(self) -> tuple:
        return tuple(self.meta["input"]["shape"])

    def check_input(
        self, model_name: str, formats: Sequence[str] = (), validation_data: bool = False
    ) -> None:
        """Refuse inputs that are not NHWC images with 1 or 3 channels (tabular, NCHW...)
        where the export needs images: the SavedModel's image signatures (JPEG bytes in),
        and the synthetic validation inputs made when no ``validation_data`` is given.
        ONNX and TFLite files of such a model are written and validated on the caller's data.

        Example:
            >>> ImageExporter({"input": {"name": "image", "shape": [10]}}).check_input("tab")
            Traceback (most recent call last):
            ...
            kerastl.errors.ConfigError: model: 'tab' takes inputs of shape (batch, 10); kerastl exports image models (input (batch, height, width, channels) with 1 or 3 channels last: NHWC), and the text and audio models of kerastl.build. Other inputs export to ONNX and TFLite with validation_data (real inputs): not to a SavedModel, whose signatures take images.
            >>> ImageExporter({"input": {"name": "image", "shape": [10]}}).check_input(
            ...     "tab", ["onnx"], validation_data=True)
        """
        shape = self.shape
        if len(shape) == 3 and shape[-1] in (1, 3):
            return
        if validation_data and "saved_model" not in formats:
            return
        dims = ", ".join("None" if s is None else str(s) for s in shape)
        msg = (
            f"model: {model_name!r} takes inputs of shape (batch, {dims}); kerastl exports "
            "image models (input (batch, height, width, channels) with 1 or 3 channels last: "
            "NHWC), and the text and audio models of kerastl.build."
        )
        if len(shape) == 3 and shape[0] in (1, 3):
            h, w, c = shape[1], shape[2], shape[0]
            msg += (
                f" This looks channels-first (NCHW): export a channels-last wrapper, "
                f"inp = keras.Input(({h}, {w}, {c})); "
                "keras.Model(inp, model(keras.layers.Permute((3, 1, 2))(inp)))."
            )
        msg += (
            " Other inputs export to ONNX and TFLite with validation_data (real inputs): not to "
            "a SavedModel, whose signatures take images."
        )
        raise ConfigError(msg)

    def input_signature(self) -> list:
        import tensorflow as tf

        return [tf.TensorSpec((None, *self.shape), tf.float32, name=self.input_name)]

    def extra_signatures(self, serve_fn: Any) -> dict[str, tuple[Any, list]]:
        import tensorflow as tf

        h, w, c = self.shape

        from kerastl.data.images import decode_and_resize

        size = (h, w) if h is not None and w is not None else None

        def decode(data):
            # the decoder/resizer training and `kerastl predict` use: same uint8 pixels
            return tf.cast(decode_and_resize(data, size, c), tf.float32)

        def serve_bytes(image_bytes):
            images = tf.map_fn(
                decode, image_bytes, fn_output_signature=tf.TensorSpec((h, w, c), tf.float32)
            )
            return serve_fn(images)

        spec = [tf.TensorSpec((None,), tf.string, name=f"{self.input_name}_bytes")]
        return {"serving_bytes": (serve_bytes, spec)}

    def sample_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        """Smooth random images (gradients, blobs and noise) in 0-255, like photos."""
        h, w, c = (s or 32 for s in self.shape)
        rng = np.random.default_rng(seed)
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        out = np.empty((n, h, w, c), np.float32)
        for i in range(n):
            for ch in range(c):
                a, b, f1, f2, p = rng.uniform(-1, 1, 5)
                img = 0.5 + 0.25 * (a * xx + b * yy)
                img += 0.2 * np.sin(2 * np.pi * (3 * f1 * xx + 3 * f2 * yy) + 3 * p)
                out[i, :, :, ch] = img
        out += rng.normal(0, 0.03, out.shape)
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.float32)

    def _check(self, x: np.ndarray, argument: str) -> np.ndarray:
        want = self.shape
        if len(want) == 3:
            from kerastl.data.files import fit_image_array

            # grey (N, H, W) or (N, H, W, 1) as grey files are read; one image: a batch axis
            x = fit_image_array(x, want, argument, "the data")
        elif x.ndim == len(want) + 1 and all(
            e is None or g == e for g, e in zip(x.shape[1:], want)
        ):
            pass
        elif x.ndim == len(want) and all(e is None or g == e for g, e in zip(x.shape, want)):
            x = x[None]
        else:  # a plain Keras model's tabular input (features,)
            raise DataError(
                f"{argument}: inputs of shape {tuple(x.shape)} do not fit the model input "
                f"(batch, {', '.join(str(s) for s in want)}) named {self.input_name!r}."
            )
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{argument}: expected numeric pixels, got dtype {x.dtype}.")
        x = x.astype(np.float32)
        if x.size and float(x.max()) <= 1.0 and float(x.min()) >= -1.0:
            warnings.warn(
                f"{argument}: pixel values lie in [{float(x.min()):.2f}, {float(x.max()):.2f}]; "
                "kerastl models take raw 0-255 pixels (preprocessing is in the graph).",
                stacklevel=4,
            )
        return x

    def coerce(self, data: Any, argument: str, limit: int | None = None) -> tuple[np.ndarray, Any]:
        images, labels = _pil_images(data)
        if images is not None:
            keep = spread(len(images), limit)
            ys = None if labels is None else np.asarray(labels)[keep]
            return self.load_pil([images[i] for i in keep], argument), ys
        xs, ys = _collect(data, argument, limit)
        if isinstance(xs, list) and xs and isinstance(xs[0], str):
            if limit is not None and len(xs) > limit:  # spread over the (often sorted) list
                keep = spread(len(xs), limit)
                xs = [xs[i] for i in keep]
                ys = None if ys is None else np.asarray(ys)[keep]
            return self.load_files(xs, argument), ys
        try:
            array = np.asarray(xs)
        except ValueError as exc:  # ragged: images of different sizes, or [x, y] as a list
            raise DataError(
                f"{argument}: could not read it as one array of images ({exc}). Give an array "
                "(N, H, W, C), a tuple (x, y), a tf.data.Dataset, or image file paths."
            ) from exc
        x = self._check(array, argument)
        if limit is not None:
            x = x[:limit]
            ys = None if ys is None else np.asarray(ys)[:limit]
        if len(x) == 0:
            raise DataError(f"{argument}: no images found.")
        return x, ys

    def load_files(self, paths: list[str], argument: str = "inputs") -> np.ndarray:
        """Read image files as training does: upright (EXIF), RGB or grayscale, resized.

        Each file goes through :func:`kerastl.data.images.decode_and_resize`, the decoder the
        training pipeline and the ``serving_bytes`` signature use, so a JPEG gives the same
        pixels on all three paths. Formats TensorFlow cannot decode (TIFF, ...) are read by
        PIL (``exif_transpose``) and resized by the same :func:`~kerastl.data.images.resize_uint8`.
        """
        h, w, c = self.shape
        size = (h, w) if h is not None and w is not None else None
        batch = []
        for p in paths:
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except FileNotFoundError as exc:
                raise DataError(f"{argument}: no file at {p!r}.") from exc
            except OSError as exc:
                raise DataError(f"{argument}: could not read {p!r} ({exc}).") from exc
            arr = _decode(data, size, c, p, argument)
            batch.append(arr.reshape(arr.shape[0], arr.shape[1], c))
        return np.stack(batch)

    def load_pil(self, images: list, argument: str = "inputs") -> np.ndarray:
        """PIL images as their files would be read: upright (EXIF), RGB or grayscale,
        resized by :func:`~kerastl.data.images.resize_uint8` to the model's size.

        Example:
            >>> from PIL import Image
            >>> from kerastl.export.modalities import get_modality
            >>> m = get_modality({"input": {"name": "image", "shape": [32, 32, 3]}})
            >>> m.coerce(Image.new("L", (70, 50)), "inputs")[0].shape
            (1, 32, 32, 3)
        """
        h, w, c = self.shape
        size = (h, w) if h is not None and w is not None else None
        return np.stack([_pil_pixels(_eight_bit(img, argument), size, c) for img in images])

    def warmup_requests(self, samples: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
        import tensorflow as tf

        x = samples[:1].astype(np.float32)
        png = tf.io.encode_png(x[0].astype(np.uint8)).numpy()
        return [
            ("serving_default", {self.input_name: tf.make_tensor_proto(x)}),
            ("serving_bytes", {f"{self.input_name}_bytes": tf.make_tensor_proto([png])}),
        ]

    def rest_examples(self, samples: np.ndarray) -> dict[str, Any]:
        from PIL import Image

        x = np.clip(samples[:1], 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(x[0].squeeze(-1) if x.shape[-1] == 1 else x[0]).save(buf, format="PNG")
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        return {
            "rest_request.json": {"signature_name": "serving_default", "instances": x.tolist()},
            "rest_request_bytes.json": {
                "signature_name": "serving_bytes",
                "instances": [{"b64": b64}],
            },
        }


def _is_pil(x: Any) -> bool:
    """A PIL image (checked without importing PIL)."""
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert")


def _pil_images(data: Any) -> tuple[list | None, Any]:
    """``(images, labels)`` when ``data`` is a PIL image, a list of them, or ``(list, labels)``."""
    if _is_pil(data):
        return [data], None
    if isinstance(data, (list, tuple)) and data and all(map(_is_pil, data)):
        return list(data), None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (list, tuple)):
        if data[0] and all(map(_is_pil, data[0])):
            return list(data[0]), data[1]
    return None, None


def _eight_bit(img: Any, argument: str) -> Any:
    """A 16-bit (or 32-bit integer) PIL image scaled to 8 bits as TensorFlow's PNG decoder
    does (the high byte); a float image has no 0-255 scale and is refused."""
    from PIL import Image

    if img.mode == "F":
        raise DataError(
            f"{argument}: a float PIL image (mode 'F') has no 0-255 scale; pass "
            "np.asarray(image) scaled to raw 0-255 pixels instead."
        )
    if img.mode.startswith("I"):
        arr = np.clip(np.asarray(img, dtype=np.int64) >> 8, 0, 255)
        return Image.fromarray(arr.astype(np.uint8), "L")
    return img


def _collect(data: Any, argument: str, limit: int | None) -> tuple[Any, Any]:
    """Inputs and labels from an array, ``(x, y)``, a list of paths or a ``tf.data.Dataset``."""
    if isinstance(data, (str, bytes)):
        return [data if isinstance(data, str) else data.decode()], None
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, str) for d in data):
        return list(data), None
    if isinstance(data, tuple) and len(data) in (2, 3):
        return data[0], data[1]
    if isinstance(data, dict):
        raise DataError(
            f"{argument}: got a dict with keys {sorted(data)}; pass an array of images, "
            "(images, labels) or a tf.data.Dataset."
        )
    if hasattr(data, "as_numpy_iterator") or type(data).__name__.endswith("Dataset"):
        xs, ys, n = [], [], 0
        for element in data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data:
            if isinstance(element, dict):
                raise DataError(
                    f"{argument}: dataset elements are dicts; expected (images, labels)."
                )
            x, y = (element[0], element[1]) if isinstance(element, tuple) else (element, None)
            x = np.asarray(x)
            batched = x.ndim == 4
            xs.append(x if batched else x[None])
            if y is not None:
                y = np.asarray(y)
                ys.append(y if batched else y[None])
            n += len(xs[-1])
            if limit is not None and n >= limit:
                break
        if not xs:
            raise DataError(f"{argument}: the dataset is empty.")
        shapes = {a.shape[1:] for a in xs}
        if len(shapes) > 1:
            raise DataError(f"{argument}: images of different shapes {sorted(shapes)}.")
        return np.concatenate(xs), (np.concatenate(ys) if ys and len(ys) == len(xs) else None)
    if hasattr(data, "shape") or isinstance(data, list):
        return data, None
    raise DataError(
        f"{argument}: expected an array of images, (images, labels), image paths or a "
        f"tf.data.Dataset, got {type(data).__name__}."
    )


register_modality("image", ImageExporter)
