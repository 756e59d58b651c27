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

Files TensorFlow cannot decode (TIFF, ...) are read by PIL with ``exif_transpose`` in
``predict`` and then go through the same :func:`resize_uint8`.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> png = tf.io.encode_png(np.zeros((40, 60, 3), np.uint8))
    >>> decode_and_resize(png, (20, 30), 3).shape
    TensorShape([20, 30, 3])
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

#: Largest number of IFD0 entries read when looking for the orientation tag.
_MAX_ENTRIES = 64
_ORIENTATION_TAG = 0x0112


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


def _walk(data: tf.Tensor, start: int, segment: Any) -> tf.Tensor:
    """Follow a JPEG's segments or a PNG's chunks to the EXIF TIFF header; -1 if none.

    ``segment(pos)`` returns ``(tiff offset or -1, stop here, next position)`` for the
    segment/chunk at ``pos``. At most 32 steps: EXIF comes before the pixel data.
    """
    n = tf.strings.length(data)

    def cond(pos, found, steps):
        return tf.logical_and(tf.logical_and(found < 0, pos + 8 <= n), steps < 32)

    def body(pos, found, steps):
        tiff, stop, following = segment(pos)
        found = tf.where(tiff >= 0, tiff, tf.where(stop, n, found))
        return following, found, steps + 1

    _, found, _ = tf.while_loop(cond, body, (tf.constant(start), tf.constant(-1), tf.constant(0)))
    return tf.where(found >= n, -1, found)


def _jpeg_segment(data: tf.Tensor):
    exif = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0])  # APP1 payload starts "Exif\0\0"

    def segment(pos):
        head = _bytes_at(data, pos, 4)  # FF, marker, length (big-endian, without the FF xx)
        is_exif = tf.logical_and(
            tf.equal(head[1], 0xE1), tf.reduce_all(tf.equal(_bytes_at(data, pos + 4, 6), exif))
        )
        # not a marker, start of scan or end of image: no EXIF before the pixels
        stop = tf.logical_or(
            tf.not_equal(head[0], 0xFF), tf.reduce_any(tf.equal(head[1], [0xDA, 0xD9]))
        )
        return tf.where(is_exif, pos + 10, -1), stop, pos + 2 + head[2] * 256 + head[3]

    return segment


def _png_chunk(data: tf.Tensor):
    def segment(pos):
        head = _bytes_at(data, pos, 8)  # length (big-endian), type
        kind = head[4:8]
        is_exif = tf.reduce_all(tf.equal(kind, [0x65, 0x58, 0x49, 0x66]))  # "eXIf"
        stop = tf.logical_or(
            tf.reduce_all(tf.equal(kind, [0x49, 0x44, 0x41, 0x54])),  # "IDAT"
            tf.reduce_all(tf.equal(kind, [0x49, 0x45, 0x4E, 0x44])),  # "IEND"
        )
        length = _number(head[0:4], tf.constant(False))
        return tf.where(is_exif, pos + 8, -1), stop, pos + 12 + length

    return segment


def _tiff_offset(data: tf.Tensor) -> tf.Tensor:
    """Where the EXIF TIFF header starts in a JPEG (APP1) or PNG (eXIf chunk); -1 if none."""
    png = tf.constant([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
    is_png = tf.reduce_all(tf.equal(_bytes_at(data, 0, 8), png))
    return tf.case(
        [
            (tf.io.is_jpeg(data), lambda: _walk(data, 2, _jpeg_segment(data))),
            (is_png, lambda: _walk(data, 8, _png_chunk(data))),
        ],
        default=lambda: tf.constant(-1),
    )


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of JPEG or PNG bytes; 1 when absent or another format.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> int(exif_orientation(tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8))))
        1
    """
    data = tf.convert_to_tensor(data, tf.string)
    tiff = _tiff_offset(data)
    little = tf.reduce_all(tf.equal(_bytes_at(data, tiff, 2), [0x49, 0x49]))  # "II"
    ifd = tiff + _number(_bytes_at(data, tiff + 4, 4), little)
    count = _number(_bytes_at(data, ifd, 2), little)
    entries = tf.reshape(_bytes_at(data, ifd + 2, 12 * _MAX_ENTRIES), [_MAX_ENTRIES, 12])
    tags = _number(entries[:, 0:2], little)
    values = _number(entries[:, 8:10], little)
    hit = tf.logical_and(tf.equal(tags, _ORIENTATION_TAG), tf.range(_MAX_ENTRIES) < count)
    value = tf.reduce_max(tf.where(hit, values, 0))
    ok = tf.logical_and(tiff >= 0, tf.logical_and(value >= 1, value <= 8))
    return tf.where(ok, value, 1)


def apply_orientation(img: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn an ``(H, W, C)`` image upright for an EXIF orientation (1-8)."""
    upright = [
        lambda: img,
        lambda: img,
        lambda: tf.image.flip_left_right(img),
        lambda: tf.image.rot90(img, 2),
        lambda: tf.image.flip_up_down(img),
        lambda: tf.transpose(img, [1, 0, 2]),
        lambda: tf.image.rot90(img, 3),
        lambda: tf.image.rot90(tf.transpose(img, [1, 0, 2]), 2),
        lambda: tf.image.rot90(img, 1),
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 0, 8), upright)


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
        return tf.io.decode_image(data, channels=channels, expand_animations=False)

    if size is None or channels not in (1, 3):
        img = decode_any()
    else:
        # the size check runs on the stored axes, swapped for a quarter turn
        turned = orientation >= 5
        stored = (tf.where(turned, size[1], size[0]), tf.where(turned, size[0], size[1]))
        img = tf.cond(
            tf.io.is_jpeg(data),
            lambda: _decode_jpeg_reduced(data, stored, channels),
            decode_any,
        )
    img.set_shape([None, None, channels])
    img = apply_orientation(img, orientation)
    return resize_uint8(img, size)
