"""One way to turn encoded image bytes into model pixels: training, ``predict``, serving.

:func:`decode_and_resize` is the only image decoder/resizer in kerastl. The training
pipeline maps it over files, :meth:`kerastl.export.modalities.image.ImageExporter.load_files`
(``kerastl predict`` and ``load_artifact``) runs it on each file's bytes, and the
SavedModel's ``serving_bytes`` signature runs it in the graph, so the same JPEG becomes
the same uint8 tensor on all three paths. The steps, in order:

1. **Decode.** A JPEG that is at least twice the target size is decoded at 1/2, 1/4 or
   1/8 scale (libjpeg's scaled IDCT, what PIL's ``draft`` mode uses); other files at
   full size with TensorFlow's decoder (JPEG, PNG, GIF, BMP, WebP).
2. **Turn upright.** The EXIF orientation tag (0x0112) of a JPEG (APP1 ``Exif`` segment)
   or PNG (``eXIf`` chunk) is read with string ops in the graph and applied, so a phone photo stored
   sideways is seen the way it is shown (the eight cases of ``PIL.ImageOps.exif_transpose``).
3. **Resize.** Shrinking by more than 2x uses an area (box-filter) resize; up to 2x and
   enlarging, bilinear. Then round to uint8.

Files TensorFlow cannot decode (TIFF, ...) are read by PIL with ``exif_transpose`` and then
go through the same :func:`resize_uint8`: in ``predict``, and in training through
:func:`decode_file` (a ``tf.numpy_function``, so not in the graphs that are exported).

Example:
    >>> import numpy as np, tensorflow as tf
    >>> png = tf.io.encode_png(np.zeros((40, 60, 3), np.uint8))
    >>> decode_and_resize(png, (20, 30), 3).shape
    TensorShape([20, 30, 3])
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import tensorflow as tf

#: The orientation entry's first 8 bytes (tag 0x0112, type 3 = SHORT, count 1) per byte order.
_ENTRY_LE = b"\x12\x01\x03\x00\x01\x00\x00\x00"
_ENTRY_BE = b"\x01\x12\x00\x03\x00\x00\x00\x01"


def _bytes_at(data: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """``n`` bytes of ``data`` from ``pos`` as int32, zero-filled past the end."""
    pos = tf.clip_by_value(pos, 0, tf.strings.length(data))
    raw = tf.io.decode_raw(tf.strings.substr(data, pos, n), tf.uint8)
    raw = tf.cast(tf.reshape(raw, [-1]), tf.int32)
    return tf.reshape(tf.pad(raw, [[0, n - tf.size(raw)]]), [n])


def _number(b: tf.Tensor, little: tf.Tensor) -> tf.Tensor:
    """Unsigned integer from its bytes ``b`` (last axis), little- or big-endian."""
    k = b.shape[-1]
    weights = tf.constant([256**i for i in range(k)], tf.int64)
    le = tf.reduce_sum(tf.cast(b, tf.int64) * weights, -1)
    be = tf.reduce_sum(tf.cast(b, tf.int64) * weights[::-1], -1)
    return tf.cast(tf.where(little, le, be), tf.int32)


def _is_png(data: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")


def _is_webp(data: tf.Tensor) -> tf.Tensor:
    riff = tf.equal(tf.strings.substr(data, 0, 4), b"RIFF")
    kind = tf.strings.substr(data, tf.minimum(8, tf.strings.length(data)), 4)
    return tf.logical_and(riff, tf.equal(kind, b"WEBP"))


def _tf_decodes(data: tf.Tensor) -> tf.Tensor:
    """Whether ``data`` starts like a file TensorFlow's decoder reads (JPEG, PNG, GIF, BMP, WebP)."""
    head = tf.strings.substr(data, 0, 4)
    gif_or_bmp = tf.logical_or(
        tf.equal(tf.strings.substr(head, 0, 3), b"GIF"),
        tf.equal(tf.strings.substr(head, 0, 2), b"BM"),
    )
    return tf.reduce_any(tf.stack([tf.io.is_jpeg(data), _is_png(data), _is_webp(data), gif_or_bmp]))


def _tiff_offset(data: tf.Tensor) -> tf.Tensor:
    """Where the EXIF TIFF header starts, or -1: found by a search, not a segment walk.

    The EXIF block is tagged ``Exif\\0\\0`` in a JPEG's APP1 segment (searched in the first
    64 KiB: EXIF must come first, and an APP segment holds at most 64 KiB), ``eXIf`` in a
    PNG chunk and ``EXIF`` in a WebP chunk (searched in the whole file: both may follow the
    pixels). A hit counts only if
    a TIFF header (``II*\\0`` or ``MM\\0*``) follows, so bytes that happen to spell the tag
    inside compressed data are not taken for it. One string split, no loop: the walk over
    segments it replaces cost more than the decode of a small JPEG.
    """
    jpeg, png, webp = tf.io.is_jpeg(data), _is_png(data), _is_webp(data)
    n = tf.strings.length(data)
    tag = tf.where(jpeg, b"Exif\0\0", tf.where(png, b"eXIf", b"EXIF"))
    skip = tf.where(jpeg, 6, tf.where(png, 4, 8))  # tag (+ chunk size in WebP)
    searched = tf.where(jpeg, tf.strings.substr(data, 0, 65536), data)
    parts = tf.strings.split(searched, sep=tag, maxsplit=1)
    tiff = tf.strings.length(parts[0]) + skip
    # some WebP writers keep JPEG's "Exif\0\0" prefix inside the chunk
    prefixed = tf.equal(tf.strings.substr(data, tf.minimum(tiff, n), 6), b"Exif\0\0")
    tiff = tf.where(tf.logical_and(webp, prefixed), tiff + 6, tiff)
    head = tf.strings.substr(data, tf.minimum(tiff, n), 4)
    valid = tf.logical_or(tf.equal(head, b"II*\0"), tf.equal(head, b"MM\0*"))
    found = tf.logical_and(tf.logical_or(jpeg, tf.logical_or(png, webp)), tf.size(parts) > 1)
    return tf.where(tf.logical_and(found, valid), tiff, -1)


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of JPEG, PNG or WebP bytes; 1 when absent or unreadable.

    The orientation entry (tag 0x0112, type SHORT, count 1) is found by searching the
    EXIF block for its 8 bytes in the block's byte order, then its value is read: a few
    string ops per image, cheap enough for the training pipeline.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> int(exif_orientation(tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8))))
        1
    """
    data = tf.convert_to_tensor(data, tf.string)
    tiff = _tiff_offset(data)

    def read() -> tf.Tensor:
        block = tf.strings.substr(data, tiff, 65536)
        little = tf.equal(tf.strings.substr(block, 0, 2), b"II")
        parts = tf.strings.split(block, sep=tf.where(little, _ENTRY_LE, _ENTRY_BE), maxsplit=1)
        value = _number(_bytes_at(block, tf.strings.length(parts[0]) + 8, 2), little)
        ok = tf.logical_and(tf.size(parts) > 1, tf.logical_and(value >= 1, value <= 8))
        return tf.where(ok, value, 1)

    return tf.cond(tiff >= 0, read, lambda: tf.constant(1))


def apply_orientation(img: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn an ``(H, W, C)`` image upright for an EXIF orientation (1-8).

    Each case is a transpose (5-8) followed by flips, with the permutation and flip axes
    computed from ``orientation`` (no branches): 2 mirror, 3 half turn, 4 flip, 5
    transpose, 6 quarter turn clockwise, 7 transverse, 8 quarter turn anticlockwise.

    Example:
        >>> import numpy as np
        >>> img = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
        >>> apply_orientation(img, 6)[..., 0].numpy().tolist()
        [[3, 0], [4, 1], [5, 2]]
    """
    o = tf.clip_by_value(tf.cast(orientation, tf.int32), 1, 8)
    transpose = o >= 5
    flip_lr = tf.reduce_any(tf.equal(o, [2, 3, 6, 7]))
    flip_ud = tf.reduce_any(tf.equal(o, [3, 4, 7, 8]))
    img = tf.transpose(img, tf.where(transpose, [1, 0, 2], [0, 1, 2]))
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip_ud, flip_lr]))
    return tf.reverse(img, axes)


def resize_uint8(img: tf.Tensor, size: tuple[int, int] | None) -> tf.Tensor:
    """Resize an ``(H, W, C)`` image to ``size`` (area above 2x shrink, else bilinear); uint8.

    Not ``antialias=True``: its kernel does not run in parallel in tf.data (one image at
    a time, about 930 images/s on the development machine whatever the thread count).

    Example:
        >>> import numpy as np
        >>> int(resize_uint8(np.full((64, 64, 1), 7, np.uint8), (8, 8)).numpy().max())
        7
    """
    img = tf.convert_to_tensor(img)
    if size is not None:
        shape = tf.shape(img)
        big = tf.logical_or(shape[0] > 2 * size[0], shape[1] > 2 * size[1])
        img = tf.cond(
            big,
            lambda: tf.image.resize(img, size, method="area"),
            lambda: tf.image.resize(img, size),
        )
    return tf.cast(tf.clip_by_value(tf.round(tf.cast(img, tf.float32)), 0, 255), tf.uint8)


def fit_channels(img: tf.Tensor, channels: int) -> tf.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by luma (rounded), as uint8; else unchanged.

    Example:
        >>> import numpy as np
        >>> fit_channels(np.full((2, 2, 1), 9, np.uint8), 3).shape
        TensorShape([2, 2, 3])
    """
    img = tf.convert_to_tensor(img)
    have = img.shape[-1]
    if have == channels or have is None:
        return img
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(img)
    if have == 3 and channels == 1:
        return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(img, tf.float32))), img.dtype)
    return img


def _decode_jpeg_reduced(data: tf.Tensor, size: Any, channels: int) -> tf.Tensor:
    """Decode a JPEG at 1/8, 1/4 or 1/2 scale when it stays at least ``size`` (stored axes)."""
    shape = tf.image.extract_jpeg_shape(data)
    h, w = shape[0], shape[1]
    ratios = (8, 4, 2)
    fits = [tf.logical_and(h // r >= size[0], w // r >= size[1]) for r in ratios]
    index = tf.where(fits[0], 0, tf.where(fits[1], 1, tf.where(fits[2], 2, 3)))
    branches = [
        (lambda r=r: tf.io.decode_jpeg(data, channels=channels, ratio=r)) for r in ratios
    ] + [lambda: tf.io.decode_jpeg(data, channels=channels)]
    return tf.switch_case(index, branches)


def decode_and_resize(data: Any, size: tuple[int, int] | None, channels: int) -> tf.Tensor:
    """Encoded image bytes -> upright ``(H, W, channels)`` uint8 at ``size`` (or native size).

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> jpeg = tf.io.encode_jpeg(np.zeros((300, 200, 3), np.uint8))
        >>> decode_and_resize(jpeg, (64, 64), 3).dtype
        tf.uint8
    """
    data = tf.convert_to_tensor(data, tf.string)
    orientation = exif_orientation(data)

    def decode_any() -> tf.Tensor:
        if channels != 1:
            return tf.io.decode_image(data, channels=channels, expand_animations=False)
        # TensorFlow's GIF, BMP and WebP decoders refuse channels=1: decode RGB, then grey
        return tf.cond(
            tf.logical_or(tf.io.is_jpeg(data), _is_png(data)),
            lambda: tf.io.decode_image(data, channels=1, expand_animations=False),
            lambda: fit_channels(
                tf.ensure_shape(
                    tf.io.decode_image(data, channels=3, expand_animations=False), [None, None, 3]
                ),
                1,
            ),
        )

    turned = orientation >= 5  # a quarter turn swaps the stored height and width
    stored = None
    if size is not None:
        stored = (tf.where(turned, size[1], size[0]), tf.where(turned, size[0], size[1]))
    if size is None or channels not in (1, 3):
        img = decode_any()
    else:
        img = tf.cond(
            tf.io.is_jpeg(data),
            lambda: _decode_jpeg_reduced(data, stored, channels),
            decode_any,
        )
    img.set_shape([None, None, channels])
    # resize the stored image, then turn the small result: flips and transposes commute
    # with the (symmetric) area and bilinear kernels, and turning fewer pixels is cheaper
    img = resize_uint8(img, stored)
    img = tf.cond(
        tf.equal(orientation, 1), lambda: img, lambda: apply_orientation(img, orientation)
    )
    if size is not None:
        img = tf.ensure_shape(img, [size[0], size[1], channels])
    return img


#: PIL mode of each channel count PIL decodes to.
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def pil_pixels(data: bytes, channels: int) -> np.ndarray:
    """Upright (``exif_transpose``) ``(H, W, channels)`` uint8 pixels of any image PIL reads.

    What ``kerastl predict`` does with the files TensorFlow cannot decode (TIFF, ...).

    Raises:
        ValueError: PIL cannot read ``data`` (the reason, without PIL's object repr).

    Example:
        >>> buf = io.BytesIO()
        >>> from PIL import Image
        >>> Image.new("RGB", (5, 4)).save(buf, format="TIFF")
        >>> pil_pixels(buf.getvalue(), 3).shape
        (4, 5, 3)
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    channels = int(channels)
    if isinstance(data, np.ndarray):  # a scalar string tensor's value in tf.numpy_function
        data = data.item()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img).convert(_PIL_MODES.get(channels, "RGB"))
            return np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, channels)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        reason = re.sub(r" <[^>]*>", "", str(exc))  # PIL names its BytesIO object
        raise ValueError(f"not a readable image ({reason})") from None


def decode_file(data: Any, size: tuple[int, int] | None, channels: int) -> tf.Tensor:
    """:func:`decode_and_resize` for what TensorFlow decodes; else :func:`pil_pixels`, resized.

    The training pipeline's decoder for files such as TIFF, read as ``kerastl predict``
    reads them. The PIL branch is a ``tf.numpy_function``: fine in ``tf.data``, not in a
    graph that is saved (the ``serving_bytes`` signature uses :func:`decode_and_resize`).

    Example:
        >>> from PIL import Image
        >>> buf = io.BytesIO()
        >>> Image.new("L", (30, 20)).save(buf, format="TIFF")
        >>> decode_file(buf.getvalue(), (10, 15), 3).shape
        TensorShape([10, 15, 3])
    """
    data = tf.convert_to_tensor(data, tf.string)

    def with_pil() -> tf.Tensor:
        img = tf.numpy_function(pil_pixels, [data, channels], tf.uint8, stateful=False)
        img.set_shape([None, None, channels])
        img = resize_uint8(img, size)
        return img if size is None else tf.ensure_shape(img, [size[0], size[1], channels])

    return tf.cond(_tf_decodes(data), lambda: decode_and_resize(data, size, channels), with_pil)
