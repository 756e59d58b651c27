"""Adapter for the keras.applications constructors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl._errors import ConfigError, WeightsError
from kerastl.layers import ImagePreprocessing
from kerastl.zoo.adapter import Adapter

# Families whose constructor takes include_preprocessing (we keep it on: the
# backbone then takes 0-255 input, which is what kerastl models take).
_POOLINGS = ("avg", "max")


def keras_cache_dir() -> Path:
    """Where weights are cached: ``$KERAS_HOME/models`` (read now) or Keras' home."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        from keras.src.backend import config

        home = config.keras_home()
    return Path(home) / "models"


@contextlib.contextmanager
def _weights_download_guard(model_name: str):
    """Wrap Keras' ``get_file`` so a failed download says what to put where.

    Keras itself reuses a cached file whose hash matches, with no network. When
    the file is missing (or its checksum is wrong) and the download fails, the
    error names the file, its URL, the cache folder and the expected hash.
    """
    from keras.src.utils import file_utils

    real_get_file = file_utils.get_file

    def guarded(fname=None, origin=None, *args, **kwargs):
        file_hash = kwargs.get("file_hash") or kwargs.get("md5_hash")
        # Keras reads KERAS_HOME once at import; we honour it at call time.
        kwargs["cache_dir"] = kwargs.get("cache_dir") or str(keras_cache_dir().parent)
        cache_dir = Path(kwargs["cache_dir"])
        target = cache_dir / kwargs.get("cache_subdir", "datasets") / (fname or "")
        existed = target.exists()
        try:
            return real_get_file(fname, origin, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Keras raises bare Exception on URL errors
            if "corrupted file" in str(exc) and target.exists():
                target.unlink()  # downloaded but wrong: never leave it in the cache
                raise WeightsError(
                    f"Downloaded weights {str(target)!r} of {model_name!r} failed their checksum "
                    f"(expected {file_hash}); the file was removed. Download again or pass a "
                    "local file."
                ) from exc
            state = "is missing"
            if existed:
                state = "was there but its checksum did not match" + (
                    " (the bad file was removed)" if not target.exists() else ""
                )
            raise WeightsError(
                f"Could not get the pretrained weights of {model_name!r}: the cached file "
                f"{str(target)!r} {state}, and downloading it from {origin} failed ({exc}). "
                f"Offline, download that URL elsewhere and place the file at {str(target)!r}"
                + (f" (expected hash {file_hash})" if file_hash else "")
                + ", or set KERAS_HOME to a folder holding models/"
                + (fname or "")
                + ", or pass weights='/path/to/weights.h5'."
            ) from exc

    file_utils.get_file = guarded
    try:
        yield
    finally:
        file_utils.get_file = real_get_file


def _transfer_weights(src: keras.Model, dst: keras.Model, where: str) -> None:
    """Copy weights layer by layer; adapt 3->1 input-channel stems (timm's in_chans).

    A convolution kernel whose input channels shrink from 3 to 1 is summed over
    the RGB axis; a per-channel vector of length 3 shrinking to 1 is averaged.
    """
    src_w = [layer for layer in src.layers if layer.weights]
    dst_w = [layer for layer in dst.layers if layer.weights]
    if len(src_w) != len(dst_w):
        raise WeightsError(
            f"{where}: the source has {len(src_w)} weighted layers, the target {len(dst_w)}."
        )
    for a, b in zip(src_w, dst_w):
        values = []
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            if wa.shape == wb.shape:
                values.append(wa)
            elif wa.ndim == 4 and wa.shape[2] == 3 and wb.shape[2] == 1:
                values.append(wa.sum(axis=2, keepdims=True))
            elif wa.ndim == 1 and wa.shape[0] == 3 and wb.shape[0] == 1:
                values.append(wa.mean(keepdims=True))
            elif wa.ndim == 0 or wa.shape == ():
                values.append(wa)
            else:
                raise WeightsError(
                    f"{where}: layer {b.name!r} expects weights of shape {wb.shape}, "
                    f"the source has {wa.shape}."
                )
        b.set_weights(values)


class KerasAppsAdapter(Adapter):
    """Adapter over ``keras.applications.<Constructor>``."""

    input_name = "image"

    def resolve_input_shape(self, input_shape: Any, **options: Any) -> tuple:
        spec = self.spec
        if options:
            raise ConfigError(
                f"{spec.name} is an image backbone and takes no {sorted(options)}; "
                "valid options: input_shape, weights, pooling."
            )
        if input_shape is None:
            return (spec.input_size, spec.input_size, 3)
        if isinstance(input_shape, int):
            input_shape = (input_shape, input_shape, 3)
        shape = tuple(input_shape)
        if len(shape) == 2:
            shape = (*shape, 3)
        if len(shape) != 3:
            raise ConfigError(
                f"input_shape: expected (height, width, channels) for an image model, "
                f"got input_shape={input_shape!r}."
            )
        h, w, c = shape
        if c not in (1, 3):
            raise ConfigError(
                f"input_shape: channels must be 3 (RGB) or 1 (grayscale), got {c} "
                f"in input_shape={input_shape!r}."
            )
        for side, v in (("height", h), ("width", w)):
            if v is None:
                continue
            if not isinstance(v, (int, np.integer)) or v < spec.min_input_size:
                raise ConfigError(
                    f"input_shape: {side} {v!r} is below the minimum of {spec.name} "
                    f"({spec.min_input_size} px); got input_shape={input_shape!r}. "
                    f"Valid: {spec.min_input_size} px or more (default {spec.input_size})."
                )
        return (h, w, c)

    def input_spec(self, input_shape: tuple) -> dict[str, Any]:
        shape = tuple(input_shape)
        return {
            "name": self.input_name,
            "shape": list(shape),
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NHWC, RGB" if shape[-1] == 3 else "NHWC, grayscale",
            "preprocessing": self.spec.preprocessing,
        }

    def make_inputs(self, input_shape: tuple) -> keras.KerasTensor:
        return keras.Input(shape=input_shape, name=self.input_name, dtype="float32")

    def preprocess(self, inputs, input_shape: tuple):
        return ImagePreprocessing(
            self.spec.preprocessing, channels=input_shape[-1], name="preprocess"
        )(inputs)

    def _construct(self, input_shape: tuple, weights: str | None) -> keras.Model:
        ctor = getattr(keras.applications, self.spec.constructor, None)
        if ctor is None:  # a backbone kerastl builds itself (EfficientNet-Lite)
            from kerastl.zoo import _native

            return _native.construct(self.spec, input_shape, weights)
        with _weights_download_guard(self.spec.name):
            model = ctor(include_top=False, weights=weights, input_shape=input_shape)
        return model

    def classifier_weights(self, weights: Any) -> tuple[Any, Any, list[str]]:
        """The ImageNet classifier that comes with ``weights``: kernel, bias, class names.

        Example:
            >>> get_adapter = __import__("kerastl.zoo", fromlist=["x"]).get_adapter
            >>> kernel, bias, names = get_adapter("efficientnet_lite0").classifier_weights(
            ...     "imagenet")  # doctest: +SKIP
        """
        from kerastl.zoo import _native

        spec = self.spec
        if getattr(keras.applications, spec.constructor, None) is None:
            return _native.classifier_weights(spec, weights)
        if weights not in spec.pretrained:
            raise ConfigError(
                f"pretrained_head: needs weights={spec.pretrained[0]!r} for {spec.name} "
                f"(the classifier comes with Keras' download); got weights={weights!r}."
            )
        ctor = getattr(keras.applications, spec.constructor)
        with _weights_download_guard(spec.name):
            full = ctor(include_top=True, weights=weights)
        kernel, bias = full.get_layer("predictions").get_weights()
        return kernel, bias, _native.imagenet_class_names()

    def backbone(self, input_shape: tuple, weights: Any = None) -> keras.Model:
        spec = self.spec
        channels = input_shape[-1]
        if weights is None:
            model = self._construct(input_shape, None)
        elif isinstance(weights, str) and weights in spec.pretrained:
            if channels == 3:
                model = self._construct(input_shape, weights)
            else:
                rgb = self._construct((*input_shape[:2], 3), weights)
                model = self._construct(input_shape, None)
                _transfer_weights(rgb, model, f"{spec.name} grayscale stem")
        elif isinstance(weights, (str, os.PathLike)) and _looks_like_path(weights):
            if str(weights).startswith(URL_SCHEMES):
                weights = fetch_weights_url(str(weights), spec.name)
            if _is_checkpoint(weights):
                from kerastl.zoo import _native

                return keras.Model(
                    *_io(_native.construct(spec, input_shape, os.fspath(weights))),
                    name="backbone",
                )
            model = self._construct(input_shape, None)
            try:
                load_backbone_weights(model, Path(weights), spec.name)
            except WeightsError:
                if channels != 1:
                    raise
                # RGB weights for a grayscale model: load them, then adapt the stem.
                rgb = self._construct((*input_shape[:2], 3), None)
                load_backbone_weights(rgb, Path(weights), spec.name)
                _transfer_weights(rgb, model, f"{spec.name} grayscale stem")
        else:
            raise ConfigError(
                f"weights: got weights={weights!r}. Valid: None (random init), "
                + ", ".join(repr(w) for w in spec.pretrained)
                + ", the path of a weights file (.weights.h5, .h5), a PyTorch/safetensors "
                "checkpoint (.pth, .pt, .bin, .safetensors or a folder) or saved kerastl model "
                "(.keras), or a URL with its checksum ('https://.../w.weights.h5#sha256=...')."
            )
        return keras.Model(model.input, model.output, name="backbone")

    def pooled(self, features, pooling: str):
        if pooling not in _POOLINGS:
            from kerastl._errors import choice_error

            raise choice_error("pooling", pooling, _POOLINGS)
        layer = (
            keras.layers.GlobalAveragePooling2D(name="pool")
            if pooling == "avg"
            else keras.layers.GlobalMaxPooling2D(name="pool")
        )
        return layer(features)


def _looks_like_path(weights) -> bool:
    s = os.fspath(weights)
    return (
        s.startswith(URL_SCHEMES)
        or os.sep in s
        or s.endswith((".h5", ".keras", *CHECKPOINT_SUFFIXES))
        or os.path.exists(s)
    )


#: File endings of PyTorch / safetensors checkpoints (see kerastl.zoo.checkpoint).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def _is_checkpoint(weights) -> bool:
    path = Path(os.fspath(weights))
    return path.suffix in CHECKPOINT_SUFFIXES or path.is_dir()


def _io(model: keras.Model) -> tuple:
    return model.input, model.output


URL_SCHEMES = ("https://", "http://", "file://")


def fetch_weights_url(url: str, name: str) -> Path:
    """Download ``URL#sha256=HEX`` into the cache, verified; return the local path.

    The SHA-256 is required. A file that fails it is deleted, never cached.
    Offline, a file already in the cache with the right hash is used as is.

    Example:
        >>> fetch_weights_url("https://host/m.weights.h5#sha256=ab12...", "resnet50")  # doctest: +SKIP
    """
    import hashlib
    import re
    from urllib.parse import urlsplit

    base, _, fragment = url.partition("#")
    m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if not m:
        raise ConfigError(
            f"weights: a URL must carry its SHA-256 as '#sha256=<64 hex digits>', got {url!r}. "
            "kerastl never loads unverified downloaded weights."
        )
    expected = m.group(1).lower()
    fname = os.path.basename(urlsplit(base).path) or "weights.h5"
    cache = keras_cache_dir() / "kerastl"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{expected[:12]}_{fname}"

    def sha256(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    if target.exists() and sha256(target) == expected:
        return target
    partial = target.with_name(target.name + ".part")
    try:
        from urllib.request import urlretrieve

        urlretrieve(base, partial)
    except Exception as exc:  # noqa: BLE001 - URLError, OSError, ValueError
        partial.unlink(missing_ok=True)
        raise WeightsError(
            f"weights: could not download {base} for {name!r} ({exc}). Offline, place the file "
            f"at {str(target)!r} or pass its local path."
        ) from exc
    got = sha256(partial)
    if got != expected:
        partial.unlink()
        raise WeightsError(
            f"weights: {base} has SHA-256 {got}, expected {expected}; refused and not cached."
        )
    os.replace(partial, target)
    return target


def load_backbone_weights(backbone: keras.Model, path: Path, name: str) -> None:
    """Seed ``backbone`` from a weights file or a saved kerastl model.

    Raises:
        WeightsError: the file is missing or does not match the architecture.
    """
    if not path.exists():
        raise WeightsError(f"weights: no file at {str(path)!r} (for {name}).")
    if path.is_dir():
        raise WeightsError(
            f"weights: {str(path)!r} is a folder; {name} takes a weights file "
            "(.weights.h5 / .h5) or a saved kerastl model (.keras)."
        )
    try:
        if path.suffix == ".keras":
            from kerastl._model import load_model

            saved = load_model(path)
            saved_backbone = (
                saved.kerastl_config.get("backbone") if hasattr(saved, "kerastl_config") else None
            )
            if saved_backbone and saved_backbone != name:
                raise WeightsError(
                    f"weights: {str(path)!r} holds a {saved_backbone!r} model, "
                    f"which cannot seed a {name!r} backbone."
                )
            src = saved.get_layer("backbone")
            _transfer_weights(src, backbone, f"weights {str(path)!r}")
        else:
            backbone.load_weights(str(path))
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/KeyError/OSError
        raise WeightsError(
            f"weights: {str(path)!r} does not match the {name!r} architecture: {exc}"
        ) from exc
