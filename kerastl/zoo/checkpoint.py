"""Read PyTorch and safetensors checkpoints into numpy, without torch and without pickle code.

Four forms are accepted (see :func:`checkpoint_format`):

* ``torch-legacy``: a ``.pth``/``.pt``/``.bin``/``.ckpt`` file in PyTorch's legacy
  (non-zip) serialization: magic number, protocol version, sys_info, the main pickle,
  the list of storage keys, then each storage as an int64 element count and raw bytes.
* ``torch-zip``: the same extensions in PyTorch's zip format (the default since 1.6):
  ``<archive>/data.pkl`` plus one uncompressed member ``<archive>/data/<key>`` per storage.
* ``safetensors``: a ``.safetensors`` file, read with the ``safetensors`` package's numpy API.
* ``folder``: a Hugging Face / timm folder with ``model.safetensors``, else
  ``pytorch_model.bin``, else shards listed by ``model.safetensors.index.json`` or
  ``pytorch_model.bin.index.json``; its ``config.json`` is read by :func:`read_folder_config`.

Security: PyTorch checkpoints are pickles, and a pickle can run any code. They are read here
by a restricted unpickler that resolves only ``collections.OrderedDict``, the tensor rebuild
functions of ``torch._utils`` (turned into numpy views, nothing of torch is imported) and the
torch storage and dtype names (mapped to numpy dtypes). Any other global, such as
``os.system`` or ``builtins.eval``, raises :class:`kerastl.errors.WeightsError` before
anything is called. TorchScript archives (which carry code) are refused.

Memory: each storage is read once into one numpy buffer and every tensor is a view of it
(``np.lib.stride_tricks.as_strided``); a tensor is copied only when it is not C-contiguous
(e.g. saved transposed), when it is bfloat16 (widened to float32) or when its file is
big-endian. Storages become arrays one at a time, and the buffer of a storage whose
tensors were all copied is released before the next is read, so the peak is the result plus
at most one storage. Tensors that share a storage in the file share memory in the result.
Only the storages of the returned state dict are read: the optimizer state of a training
checkpoint is skipped.

This module imports only numpy, the standard library, ``safetensors`` (lazily) and
``kerastl.errors``: never torch, TensorFlow or Keras.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from kerastl.errors import WeightsError

__all__ = ["checkpoint_format", "read_folder_config", "read_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_SAFETENSORS_SUFFIX = ".safetensors"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_FOLDER_SINGLE = ("model.safetensors", "pytorch_model.bin")
_FOLDER_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_ACCEPTED = (
    "a PyTorch file (.pth, .pt, .bin, .ckpt; legacy or zip serialization), a .safetensors "
    "file, or a folder holding model.safetensors, pytorch_model.bin or a sharded "
    "*.index.json"
)
_SAVE_HINT = (
    "If you trust the file, load it with PyTorch and save only the weights: "
    "torch.save(model.state_dict(), 'weights.pth') or safetensors.torch.save_file(...)."
)

# torch storage class name -> numpy dtype ("bfloat16" is widened to float32 after striding).
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
# torch dtype name (as pickled for _rebuild_tensor_v3) -> numpy dtype.
_TORCH_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "float64": "float64",
    "double": "float64",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "complex64": "complex64",
    "cfloat": "complex64",
    "complex128": "complex128",
    "cdouble": "complex128",
}


# torch dtypes and storages numpy cannot represent: refused with their own message.
_NO_NUMPY_DTYPES = ("float8_", "float4_", "complex32", "bits", "qint", "quint", "QInt", "QUInt")


class _Storage:
    """A storage named by the pickle; ``data`` (raw uint8 bytes) is filled in afterwards."""

    __slots__ = ("key", "dtype", "numel", "data", "root", "byte_offset")

    def __init__(self, key: str, dtype: str, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None
        self.root: _Storage | None = None  # legacy storage views (torch < 1.0)
        self.byte_offset = 0

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _TensorRef:
    """What a rebuild call in the pickle describes; turned into an array by ``_materialize``."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype", "metadata")

    def __init__(self, storage, offset, size, stride, dtype=None, metadata=None) -> None:
        if not isinstance(storage, _Storage):
            raise TypeError(f"tensor storage is a {type(storage).__name__}, not a storage")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype = dtype or storage.dtype
        self.metadata = metadata


class _Marker:
    """Stands for a torch class or dtype in the pickle (a storage type, ``torch.Tensor``...)."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, hooks, dtype, metadata=None
):
    if not isinstance(dtype, _Marker) or dtype.kind != "dtype":
        raise TypeError("_rebuild_tensor_v3 expects a torch dtype")
    return _TensorRef(storage, storage_offset, size, stride, dtype.name, metadata)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    if not isinstance(data, _TensorRef):
        raise TypeError("a parameter must wrap a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _REBUILDERS or not isinstance(new_type, _Marker):
        raise TypeError("_rebuild_from_type_v2 of something that is not a tensor")
    return func(*args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): tuple,
    ("torch", "Tensor"): _Marker("type", "Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("type", "Parameter"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of a tensor state dict; refuses the rest."""

    def __init__(self, file, path: Path, storages: dict[str, _Storage] | None) -> None:
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _Marker("storage", name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _Marker("dtype", _TORCH_DTYPES[name])
        if module in ("torch", "torch.storage") and name.startswith(_NO_NUMPY_DTYPES):
            raise WeightsError(
                f"{self._path} holds tensors of type torch.{name}, which numpy has no dtype "
                "for, so kerastl cannot read them. Convert them in PyTorch (e.g. to float32 "
                "or float16) and save the state_dict again."
            )
        # Name the Python 3 global that plain pickle would import (protocol 2 spells
        # builtins as __builtin__, subprocess as commands...).
        py3 = _compat_pickle.NAME_MAPPING.get((module, name))
        py3 = py3 or (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        refused = f"'{py3[0]}.{py3[1]}'"
        if py3 != (module, name):
            refused += f" (pickled as '{module}.{name}')"
        raise WeightsError(
            f"{self._path} holds code, not only tensors: its pickle refers to the global "
            f"{refused}, which kerastl refuses to load (it resolves only tensors, storages "
            f"and OrderedDict, and runs nothing). {_SAVE_HINT}"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None or not isinstance(pid, tuple) or len(pid) not in (5, 6):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        typename, storage_type, key, _location, numel = pid[:5]
        if isinstance(typename, bytes):
            typename = typename.decode("ascii")
        bad_type = not isinstance(storage_type, _Marker) or storage_type.kind != "storage"
        if typename != "storage" or bad_type or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        key = str(key)
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, _STORAGE_DTYPES[storage_type.name], numel)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        view_key, offset, view_numel = view  # legacy storage view: elements of the root
        storage = _Storage(str(view_key), root.dtype, int(view_numel))
        storage.root, storage.byte_offset = root, int(offset) * root.itemsize
        return storage


def _corrupt(path: Path, what: str) -> WeightsError:
    return WeightsError(
        f"{path} is truncated or corrupt: {what}. Download or save it again; accepted forms: "
        f"{_ACCEPTED}."
    )


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise WeightsError(f"Checkpoint {path} does not exist. Accepted forms: {_ACCEPTED}.")


def checkpoint_format(path: str | os.PathLike) -> str:
    """Tell which kind of checkpoint ``path`` is, from its type, suffix and first bytes.

    Args:
        path: A checkpoint file or folder.

    Returns:
        ``"folder"`` for a directory, ``"safetensors"`` for a ``.safetensors`` file, and for
        ``.pth``/``.pt``/``.bin``/``.ckpt`` files ``"torch-zip"`` (zip magic ``PK``) or
        ``"torch-legacy"`` (a pickle). A zip that turns out to be TorchScript is still
        ``"torch-zip"`` here; :func:`read_state_dict` refuses it.

    Raises:
        WeightsError: The path does not exist, has an unknown suffix, or is a torch file that
            is empty, an old tar archive, or starts with neither a zip nor a pickle header.

    Example:
        >>> import tempfile, zipfile
        >>> folder = tempfile.mkdtemp()
        >>> checkpoint_format(folder)
        'folder'
        >>> with zipfile.ZipFile(f"{folder}/weights.pt", "w") as zf:
        ...     zf.writestr("archive/data.pkl", b"")
        >>> checkpoint_format(f"{folder}/weights.pt")
        'torch-zip'
        >>> _ = open(f"{folder}/weights.h5", "wb").close()
        >>> checkpoint_format(f"{folder}/weights.h5")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        kerastl.errors.WeightsError: Unknown checkpoint extension '.h5' of .../weights.h5. ...
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == _SAFETENSORS_SUFFIX:
        return "safetensors"
    if suffix not in _TORCH_SUFFIXES:
        raise WeightsError(
            f"Unknown checkpoint extension {suffix or '(none)'!r} of {path}. Accepted "
            f"extensions: {', '.join((*_TORCH_SUFFIXES, _SAFETENSORS_SUFFIX))}, or a folder."
        )
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsError(
            f"{path} is a PyTorch checkpoint in the tar format of torch < 0.1.10, which kerastl "
            "does not read. Load it with an old PyTorch and save it again with torch.save."
        )
    if head[:1] == b"\x80":
        return "torch-legacy"
    if not head:
        raise _corrupt(path, "the file is empty")
    raise _corrupt(path, f"it starts with {head[:8]!r}, neither a zip archive nor a pickle")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint into an ordered ``{name: numpy array}`` dict, without torch.

    Arrays keep the stored dtype (float32, float16, float64, int64, int32, int16, int8,
    uint8, bool, complex), except bfloat16, which numpy lacks: it is widened exactly to
    float32. A top-level dict that wraps the weights under ``"state_dict"``, ``"model"`` or
    ``"model_state_dict"`` (a training checkpoint) is unwrapped, and the rest of it (optimizer
    state, epoch...) is ignored without reading its storages.

    Args:
        path: A ``.pth``/``.pt``/``.bin``/``.ckpt`` file (legacy or zip serialization), a
            ``.safetensors`` file, or a folder (see :func:`checkpoint_format`).

    Returns:
        ``{name: np.ndarray}`` in the order of the file (of the index for sharded folders).

    Raises:
        WeightsError: The path is missing or of an unknown kind; the pickle refers to any
            global other than tensors, storages and OrderedDict (the file holds code); it is a
            TorchScript archive; it is truncated or corrupt; a folder holds no weights file;
            or the checkpoint holds something other than a flat dict of tensors.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from safetensors.numpy import save_file
        >>> path = tempfile.mkdtemp() + "/tiny.safetensors"
        >>> save_file({"fc.weight": np.ones((2, 3), np.float32)}, path)
        >>> weights = read_state_dict(path)
        >>> weights["fc.weight"].shape, weights["fc.weight"].dtype
        ((2, 3), dtype('float32'))
    """
    path = Path(path)
    kind = checkpoint_format(path)
    if kind == "folder":
        return _read_folder(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    try:
        if kind == "torch-zip":
            return _read_torch_zip(path)
        return _read_torch_legacy(path)
    except WeightsError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        struct.error,
        zipfile.BadZipFile,
        OverflowError,
        RecursionError,
    ) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """The state dict in ``obj``: ``obj`` itself or its ``state_dict``/``model``/... entry."""
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict of named tensors. {_SAVE_HINT}"
        )
    tensor_types = (_TensorRef, np.ndarray)
    if not all(isinstance(v, tensor_types) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, tensor_types):
            raise WeightsError(
                f"{path} is not a flat state dict of tensors: entry {name!r} is a "
                f"{type(value).__name__}. Top-level keys unwrapped automatically: "
                f"{', '.join(_WRAPPER_KEYS)}. {_SAVE_HINT}"
            )
    return obj


def _root(storage: _Storage) -> _Storage:
    return storage.root if storage.root is not None else storage


def _as_numpy_dtype(name: str, big_endian: bool) -> np.dtype:
    dtype = np.dtype("uint16" if name == "bfloat16" else name)
    return dtype.newbyteorder(">") if big_endian else dtype


def _materialize(ref: _TensorRef, name: str, path: Path, big_endian: bool) -> np.ndarray:
    """The array a rebuilt tensor describes: a strided view of its storage's bytes."""
    storage = ref.storage
    data = _root(storage).data
    size, stride, offset = tuple(ref.size), tuple(ref.stride), ref.offset
    ints = all(isinstance(v, int) and v >= 0 for v in (*size, *stride, offset))
    if not ints or len(size) != len(stride) or data is None:
        raise _corrupt(path, f"tensor {name!r} has size {size}, stride {stride}, offset {offset}")
    dtype = _as_numpy_dtype(ref.dtype, big_endian)
    start = storage.byte_offset
    stop = start + storage.numel * _root(storage).itemsize if storage.root else len(data)
    count = (min(stop, len(data)) - start) // dtype.itemsize
    if 0 in size:
        array = np.zeros(size, dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= count:
            raise _corrupt(path, f"tensor {name!r} reaches element {last} of a storage of {count}")
        flat = data[start : start + count * dtype.itemsize].view(dtype)[offset:]
        strides = tuple(s * dtype.itemsize for s in stride)
        array = np.lib.stride_tricks.as_strided(flat, shape=size, strides=strides)
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
    if ref.dtype == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif big_endian:
        array = array.astype(dtype.newbyteorder("="))
    metadata = ref.metadata if isinstance(ref.metadata, dict) else {}
    if metadata.get("conj"):
        array = np.conj(array)
    if metadata.get("neg"):
        array = np.negative(array)
    return array


class _Assembler:
    """Turns the tensors of a state dict into arrays one storage at a time.

    Once a storage's tensors are arrays, the reader drops its own reference to the buffer:
    views keep it alive, while tensors that had to be copied (not C-contiguous, e.g.
    channels-last convolution kernels) let it go, so at most one storage is held twice.
    """

    def __init__(self, state: dict[str, _TensorRef], path: Path) -> None:
        self.state, self.path, self.big_endian = state, path, False
        self.names: dict[str, list[str]] = {}  # root storage key -> tensor names
        self.roots: dict[str, _Storage] = {}  # the storages to read
        for name, ref in state.items():
            root = _root(ref.storage)
            self.roots[root.key] = root
            self.names.setdefault(root.key, []).append(name)
        self.arrays: dict[str, np.ndarray] = {}

    def fill(self, storage: _Storage, data: np.ndarray) -> None:
        storage.data = data
        for name in self.names.pop(storage.key):
            self.arrays[name] = _materialize(self.state[name], name, self.path, self.big_endian)
        storage.data = None

    def result(self) -> dict[str, np.ndarray]:
        if self.names:
            raise _corrupt(self.path, f"storages {list(self.names)[:5]} are named but not stored")
        return {name: self.arrays[name] for name in self.state}


def _read_into(f, nbytes: int, path: Path, what: str) -> np.ndarray:
    """Read ``nbytes`` from ``f`` into one new uint8 buffer (the only copy of the storage)."""
    buffer = np.empty(nbytes, np.uint8)
    got = f.readinto(memoryview(buffer)) if nbytes else 0
    if got != nbytes:
        raise _corrupt(path, f"{what} needs {nbytes} bytes, the file has {got} left")
    return buffer


def _read_torch_legacy(path: Path) -> dict[str, np.ndarray]:
    """Read PyTorch's legacy serialization: a sequence of pickles, then the raw storages."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        if _RestrictedUnpickler(f, path, None).load() != _MAGIC_NUMBER:
            raise _corrupt(path, "the legacy PyTorch magic number is missing")
        version = _RestrictedUnpickler(f, path, None).load()
        if version != _PROTOCOL_VERSION:
            raise _corrupt(path, f"unknown legacy protocol version {version!r}")
        sys_info = _RestrictedUnpickler(f, path, None).load()
        big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
        state = _unwrap(_RestrictedUnpickler(f, path, storages).load(), path)
        keys = _RestrictedUnpickler(f, path, None).load()
        if not isinstance(keys, list):
            raise _corrupt(path, "the list of storage keys is missing")
        tensors = _Assembler(state, path)
        tensors.big_endian = big_endian
        for key in keys:
            (count,) = struct.unpack("<q", _read_into(f, 8, path, "a storage size").tobytes())
            storage = storages.get(str(key))
            if storage is None or count < 0:
                raise _corrupt(path, f"storage {key!r} is not the one the pickle names")
            nbytes = count * storage.itemsize
            if storage.key in tensors.names:
                tensors.fill(storage, _read_into(f, nbytes, path, f"storage {key!r}"))
            else:
                f.seek(nbytes, os.SEEK_CUR)
        return tensors.result()


def _zip_layout(zf: zipfile.ZipFile, path: Path) -> str:
    """The archive prefix of a torch zip checkpoint; refuse TorchScript archives."""
    names = zf.namelist()
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise _corrupt(path, f"a zip checkpoint needs one <archive>/data.pkl, found {pickles}")
    prefix = pickles[0].split("/")[0]
    if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names):
        raise WeightsError(
            f"{path} is a TorchScript archive (torch.jit.save): it holds a compiled program, "
            "not only tensors, and kerastl does not read it. Save a state_dict instead: "
            "torch.save(model.state_dict(), 'weights.pth')."
        )
    return prefix


def _read_zip_member(zf: zipfile.ZipFile, f, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One storage member's bytes in one buffer: by offset when stored, else decompressed."""
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as member:
            return _read_into(member, info.file_size, path, info.filename)
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise _corrupt(path, f"the local header of {info.filename} is missing")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > os.fstat(f.fileno()).st_size:
        raise _corrupt(path, f"{info.filename} runs past the end of the file")
    f.seek(start)
    buffer = _read_into(f, info.file_size, path, info.filename)
    if zlib.crc32(buffer) != info.CRC:
        raise _corrupt(path, f"{info.filename} fails its CRC-32 check")
    return buffer


def _read_torch_zip(path: Path) -> dict[str, np.ndarray]:
    """Read PyTorch's zip serialization without extracting anything to disk."""
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        prefix = _zip_layout(zf, path)
        pkl = zf.read(f"{prefix}/data.pkl")
        state = _unwrap(_RestrictedUnpickler(io.BytesIO(pkl), path, storages).load(), path)
        tensors = _Assembler(state, path)
        if f"{prefix}/byteorder" in zf.namelist():
            tensors.big_endian = zf.read(f"{prefix}/byteorder").strip() == b"big"
        for key, storage in list(tensors.roots.items()):
            try:
                info = zf.getinfo(f"{prefix}/data/{key}")
            except KeyError:
                raise _corrupt(path, f"storage {prefix}/data/{key} is missing") from None
            if info.file_size < storage.numel * storage.itemsize:
                raise _corrupt(path, f"storage {key} is shorter than its {storage.numel} items")
            tensors.fill(storage, _read_zip_member(zf, f, info, path))
    return tensors.result()


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file with the package's numpy API (BF16 widened to float32)."""
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - safetensors is a dependency
        raise WeightsError(f"Reading {path} needs the package 'safetensors'.") from exc
    out: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="np") as sf:
            for name in sf.keys():
                if sf.get_slice(name).get_dtype() == "BF16":
                    out[name] = _read_safetensors_bf16(path, name)
                else:
                    out[name] = sf.get_tensor(name)
    except WeightsError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    return out


def _read_safetensors_bf16(path: Path, name: str) -> np.ndarray:
    """One BF16 tensor of a safetensors file, widened to float32 (numpy has no bfloat16)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(header_len))[name]
        begin, end = entry["data_offsets"]
        f.seek(8 + header_len + begin)
        raw = _read_into(f, end - begin, path, f"tensor {name!r}")
    return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def read_folder_config(path: str | os.PathLike) -> dict:
    """Read ``config.json`` of a Hugging Face / timm checkpoint folder.

    Args:
        path: The folder (the one given to :func:`read_state_dict`).

    Returns:
        The parsed JSON object.

    Raises:
        WeightsError: The folder does not exist, has no ``config.json``, or the file is not
            a JSON object.

    Example:
        >>> import json, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with open(f"{folder}/config.json", "w") as f:
        ...     json.dump({"architecture": "resnet18", "num_classes": 10}, f)
        >>> read_folder_config(folder)["num_classes"]
        10
    """
    folder = Path(path)
    if not folder.is_dir():
        raise WeightsError(f"Checkpoint folder {folder} does not exist or is not a folder.")
    config = folder / "config.json"
    if not config.is_file():
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise WeightsError(f"{folder} has no config.json; it holds: {present}.")
    try:
        value = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(config, f"not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise _corrupt(config, f"a JSON {type(value).__name__}, not an object")
    return value


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    """Read a Hugging Face / timm folder: one weights file, else shards named by an index."""
    for name in _FOLDER_SINGLE:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    for name in _FOLDER_INDEX:
        if (folder / name).is_file():
            return _read_sharded(folder, folder / name)
    present = sorted(p.name for p in folder.iterdir())[:20]
    raise WeightsError(
        f"Checkpoint folder {folder} holds no weights file: looked for "
        f"{', '.join(_FOLDER_SINGLE + _FOLDER_INDEX)}; it holds {present}."
    )


def _read_sharded(folder: Path, index_path: Path) -> dict[str, np.ndarray]:
    """Read the shards an index json names, in the order of its ``weight_map``."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise _corrupt(index_path, f"no valid 'weight_map' ({exc})") from exc
    merged: dict[str, np.ndarray] = {}
    for shard in shards:
        shard_path = folder / str(shard)
        if shard_path.resolve().parent != folder.resolve():
            raise WeightsError(f"{index_path} names shard {shard!r} outside {folder}.")
        merged.update(read_state_dict(shard_path))
    missing = [name for name in weight_map if name not in merged]
    if missing:
        raise _corrupt(index_path, f"tensors {missing[:5]} are not in their shards")
    ordered = {name: merged.pop(name) for name in weight_map}
    ordered.update(merged)
    return ordered
