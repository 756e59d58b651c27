"""tf.data input pipelines and augmentation presets.

Images are decoded and resized in parallel, cached as uint8 (4x smaller than
float), shuffled with a seed, batched, augmented (training only) and
prefetched. Augmentation lives here, in the input pipeline, and never in the
model, so exported graphs are deterministic.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import tensorflow as tf

from kerastl.data._sources import TF_IMAGE_EXTENSIONS, Examples
from kerastl.data.images import decode_and_resize, decode_file, fit_channels, resize_uint8
from kerastl.errors import ConfigError, choice_error

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER_CAP = 8192

#: Augmentation building blocks: name -> (keras layer class name, kwargs).
AUGMENTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "flip": ("RandomFlip", {"mode": "horizontal"}),
    "vflip": ("RandomFlip", {"mode": "vertical"}),
    "rotation": ("RandomRotation", {"factor": 0.08}),
    "zoom": ("RandomZoom", {"height_factor": 0.15}),
    "translation": ("RandomTranslation", {"height_factor": 0.1, "width_factor": 0.1}),
    "contrast": ("RandomContrast", {"factor": 0.2, "value_range": (0, 255)}),
    "brightness": ("RandomBrightness", {"factor": 0.2, "value_range": (0, 255)}),
}
#: Named presets (lists of the blocks above).
AUGMENT_PRESETS: dict[str, list[str]] = {
    "none": [],
    "light": ["flip"],
    "standard": ["flip", "rotation", "zoom", "contrast"],
    "strong": ["flip", "rotation", "zoom", "translation", "contrast", "brightness"],
}


def augment_names(augment: Any) -> list[str]:
    """Resolve a preset name, a list of block names or ``None`` to block names.

    Example:
        >>> augment_names("light")
        ['flip']
        >>> augment_names(["flip", "zoom"])
        ['flip', 'zoom']
    """
    if augment is None or augment is False:
        return []
    if isinstance(augment, str):
        if augment in AUGMENT_PRESETS:
            return list(AUGMENT_PRESETS[augment])
        if augment in AUGMENTATIONS:
            return [augment]
        raise choice_error("augment", augment, list(AUGMENT_PRESETS) + list(AUGMENTATIONS))
    if isinstance(augment, (list, tuple)):
        for a in augment:
            if a not in AUGMENTATIONS:
                raise choice_error("augment", a, AUGMENTATIONS)
        return list(augment)
    raise ConfigError(
        f"augment: expected a preset {list(AUGMENT_PRESETS)} or a list of "
        f"{list(AUGMENTATIONS)}, got {augment!r}."
    )


def build_augmenter(augment: Any, seed: int = 0, fuse: bool = True):
    """A ``keras.Sequential`` of random layers for ``augment`` (``None`` if empty).

    Consecutive flip / rotation / zoom / translation blocks become one
    :class:`kerastl.core.layers.RandomAffine` (one resampling instead of several, same
    parameter ranges); the other blocks are the Keras layers named in
    :data:`AUGMENTATIONS`. ``fuse=False`` keeps one Keras layer per block.
    """
    import keras

    names = augment_names(augment)
    if not names:
        return None
    from kerastl.core.layers import RandomAffine

    layers = []
    i = 0
    while i < len(names):
        run = []  # consecutive flip / rotation / zoom / translation: one resampling for all
        while i + len(run) < len(names) and names[i + len(run)] in _GEOMETRIC:
            run.append(names[i + len(run)])
        if fuse and len(run) > 1 and len(set(run)) == len(run):
            kw = {_GEOMETRIC[n]: _affine_arg(n) for n in run}
            layers.append(RandomAffine(seed=seed + i, **kw))
            i += len(run)
            continue
        cls_name, kwargs = AUGMENTATIONS[names[i]]
        layers.append(getattr(keras.layers, cls_name)(seed=seed + i, **kwargs))
        i += 1
    return keras.Sequential(layers, name="augmentation")


#: Geometric blocks that :class:`kerastl.core.layers.RandomAffine` fuses -> its argument name.
_GEOMETRIC = {
    "flip": "horizontal_flip",
    "rotation": "rotation",
    "zoom": "zoom",
    "translation": "translation",
}


def _affine_arg(name: str) -> Any:
    kwargs = AUGMENTATIONS[name][1]
    if name == "flip":
        return True
    if name == "rotation":
        return kwargs["factor"]
    if name == "zoom":
        return kwargs["height_factor"]
    return (kwargs["height_factor"], kwargs["width_factor"])


def _resolve_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = tuple(image_size)[:2]
    return (int(h), int(w))


def _decode_file(path, size, channels, decode=decode_file):
    """Read one image file the way ``predict`` and ``serving_bytes`` read bytes."""
    return decode(tf.io.read_file(path), size, channels)


def _file_decoder(paths: np.ndarray) -> Any:
    """The decoder of ``paths``: the graph's own when TensorFlow reads them all (JPEG, PNG...),
    else one that reads the others (TIFF...) with PIL, as ``predict`` does."""
    if all(str(p).lower().endswith(TF_IMAGE_EXTENSIONS) for p in paths):
        return decode_and_resize
    return decode_file


def examples_to_dataset(ex: Examples, image_size: Any = None, channels: int = 3) -> tf.data.Dataset:
    """Unbatched ``(input, label)`` dataset in index order: decoded uint8 images or strings."""
    size = _resolve_size(image_size)
    labels = ex.y
    if ex.kind == "text":
        return tf.data.Dataset.from_tensor_slices((np.asarray(ex.x, dtype=str), labels))
    if ex.kind == "files":
        paths = np.asarray(ex.x, dtype=str)
        decode = _file_decoder(paths)
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        return ds.map(
            lambda p, y: (_decode_file(p, size, channels, decode), y),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    if ex.kind == "arrays":
        x = ex.x
        ds = tf.data.Dataset.from_tensor_slices((x, labels))
        need = size is not None and tuple(x.shape[1:3]) != size
        if need or x.dtype != np.uint8 or x.shape[-1] != channels:
            ds = ds.map(
                lambda img, y: (
                    fit_channels(resize_uint8(img, size if need else None), channels),
                    y,
                ),
                num_parallel_calls=AUTOTUNE,
                deterministic=True,
            )
        return ds
    if ex.kind == "tfds":
        import tensorflow_datasets as tfds

        info = ex.tfds
        builder = tfds.builder(info["name"], data_dir=info["data_dir"])
        ds = builder.as_dataset(split=info["split"], shuffle_files=False)
        if "indices" in info:
            mask = np.zeros(builder.info.splits[info["split"]].num_examples, dtype=bool)
            mask[np.asarray(info["indices"], dtype=np.int64)] = True
            keep = tf.constant(mask)
            ds = ds.enumerate().filter(lambda i, e: keep[i]).map(lambda i, e: e)
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(labels)))
        ikey = info["image_key"]
        return ds.map(
            lambda e, y: (fit_channels(resize_uint8(e[ikey], size), channels), y),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    raise ConfigError(f"Examples.kind={ex.kind!r} is not one of 'files', 'arrays', 'text', 'tfds'.")


def shuffle_and_batch(
    ds: tf.data.Dataset,
    n: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Seeded shuffle (reshuffled every epoch) then batch; shared by images and cached features.

    The same ``n``, ``seed`` and ``batch_size`` give the same order of examples
    whatever the element type, which is what makes training on cached features
    reproduce training on images.
    """
    if shuffle:
        ds = ds.shuffle(
            min(max(n, 1), SHUFFLE_BUFFER_CAP), seed=seed, reshuffle_each_iteration=True
        )
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def cache_file(path: str, ex: Any, image_size: Any, channels: int) -> str:
    """The file ``data.cache: <path>`` caches ``ex`` in: the path with a key of the data
    and its decoding (a cache of other data, or of another size, is never read back:
    TensorFlow's cache takes any file of the name as complete), its folder made.

    Example:
        >>> from kerastl.data import from_numpy
        >>> a = from_numpy(np.zeros((4, 8, 8, 3), "uint8"), [0, 1] * 2)
        >>> b = from_numpy(np.ones((4, 8, 8, 3), "uint8"), [0, 1] * 2)
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> cache_file(f"{d}/c", a, 16, 3) == cache_file(f"{d}/c", a, 16, 3)
        True
        >>> len({cache_file(f"{d}/c", a, 16, 3), cache_file(f"{d}/c", b, 16, 3),
        ...      cache_file(f"{d}/c", a, 32, 3)})
        3
    """
    key = hashlib.sha256(f"{ex.fingerprint()}|{image_size}|{channels}".encode()).hexdigest()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return f"{path}.{key[:16]}"


def make_dataset(
    ex: Examples,
    image_size: Any = None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    augment: Any = None,
    cache: bool | str = True,
    channels: int = 3,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """The batched tf.data pipeline of ``ex``: ``(float32 0-255 images | strings, labels)``.

    Args:
        ex: Examples from a source function.
        image_size: ``(height, width)`` or an int; images are resized to it.
        batch_size: Global batch size.
        shuffle: Shuffle with ``seed`` (reshuffled each epoch).
        seed: Seed of the shuffle and of the augmentation.
        augment: Preset or block list (:data:`AUGMENT_PRESETS`), images only.
        cache: ``True`` caches decoded images in memory; a path caches on disk.
        channels: 3 (RGB) or 1.
        drop_remainder: Drop the last partial batch.

    Returns:
        A prefetched ``tf.data.Dataset``.

    Example:
        >>> from kerastl.data import from_numpy, make_dataset
        >>> ex = from_numpy(np.zeros((10, 8, 8, 3), "uint8"), [0, 1] * 5)
        >>> x, y = next(iter(make_dataset(ex, image_size=16, batch_size=4)))
        >>> tuple(x.shape), x.dtype.name
        ((4, 16, 16, 3), 'float32')
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size!r}.")
    ds = examples_to_dataset(ex, image_size, channels)
    if cache:
        ds = ds.cache(cache_file(cache, ex, image_size, channels) if isinstance(cache, str) else "")
    ds = shuffle_and_batch(ds, len(ex), batch_size, shuffle, seed, drop_remainder)
    if ex.kind != "text":
        aug = build_augmenter(augment, seed)
        if aug is not None:
            ds = ds.map(
                lambda x, y: (aug(tf.cast(x, tf.float32), training=True), y),
                num_parallel_calls=AUTOTUNE,
            )
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return ds.with_options(options).prefetch(AUTOTUNE)
