"""Write the small checkpoint fixtures of tests/test_checkpoint.py with real PyTorch.

This script needs ``torch`` (and ``safetensors``), which kerastl itself never imports: run it
from a separate environment, e.g.::

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch numpy safetensors
    /tmp/torchvenv/bin/python tools/make_checkpoint_fixtures.py tests/data/checkpoints

It writes, each a few KB:

* ``state_zip.pt``: ``torch.save`` default (zip) of a state dict with float32, float16,
  int64, bfloat16, bool and uint16 tensors, a transposed (non-contiguous) tensor saved as-is,
  a view with a storage offset, two tensors sharing one storage, a scalar, an empty tensor and
  an ``nn.Parameter``;
* ``state_legacy.pt``: the same (less uint16, which torch cannot load back from this
  format) with ``_use_new_zipfile_serialization=False``;
* ``state_zip.bin``: the same in zip format under a ``.bin`` name;
* ``training.pth``: ``{"epoch", "state_dict", "optimizer"}`` as a training loop saves it;
* ``state.safetensors``: the contiguous tensors, via ``safetensors.torch.save_file``;
* ``hf_folder/``: ``config.json`` + ``model.safetensors``;
* ``sharded_folder/``: two ``.bin`` shards + ``pytorch_model.bin.index.json`` + ``config.json``;
* ``torchscript.pt``: a scripted ``nn.Linear(2, 1)`` (``torch.jit.save``), to be refused;
* ``expected.npz`` / ``training_expected.npz``: the arrays as torch itself reads them
  (``tensor.numpy()``; bfloat16 as float32), the oracle the tests compare with.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import safetensors.torch
import torch


def make_state() -> OrderedDict:
    """A state dict exercising every layout the reader must rebuild."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    shared = torch.arange(12, dtype=torch.float32)
    state = OrderedDict()
    state["conv.weight"] = torch.randn(4, 3, 2, 2, generator=g)
    state["half"] = torch.randn(3, 4, generator=g).half()
    state["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    state["int64"] = torch.arange(7, dtype=torch.int64) * 1000003
    state["int32"] = torch.tensor([-5, 0, 7], dtype=torch.int32)
    state["mask"] = torch.tensor([True, False, True])
    state["uint16"] = torch.tensor([1, 65535, 300], dtype=torch.uint16)
    state["double"] = torch.randn(2, 2, generator=g, dtype=torch.float64)
    state["transposed"] = base.t()  # non-contiguous, shares base's storage
    state["offset_view"] = base[2:4, 1:]  # storage offset 11, strides (5, 1), non-contiguous
    state["shared_a"] = shared[:6].view(2, 3)
    state["shared_b"] = shared[6:].view(3, 2)  # storage offset 6, same storage as shared_a
    state["bn.num_batches_tracked"] = torch.tensor(17)
    state["empty"] = torch.zeros(0, 3)
    state["param"] = torch.nn.Parameter(torch.randn(3, generator=g))
    return state


def expected_arrays(state: dict) -> dict[str, np.ndarray]:
    """What torch reads back, as numpy (bfloat16 widened to float32 as kerastl does)."""
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[name] = tensor.numpy()
    return out


def write_torch_files(folder: Path, state: OrderedDict) -> None:
    torch.save(state, folder / "state_zip.pt")
    # torch 2.13 cannot load back a legacy file holding a uint16 tensor (an untyped storage
    # there), so the legacy file has every tensor but that one.
    legacy = OrderedDict((k, v) for k, v in state.items() if k != "uint16")
    torch.save(legacy, folder / "state_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(state, folder / "state_zip.bin")
    for name in ("state_zip.pt", "state_legacy.pt", "state_zip.bin"):
        loaded = torch.load(folder / name, weights_only=True)
        for key, value in expected_arrays(loaded).items():
            np.testing.assert_array_equal(value, expected_arrays(state)[key])
    training = {
        "epoch": 3,
        "state_dict": OrderedDict(w=torch.ones(2, 2), b=torch.tensor([0.5, -0.5])),
        "optimizer": {"state": {0: {"exp_avg": torch.full((2, 2), 9.0)}}, "lr": 0.1},
    }
    torch.save(training, folder / "training.pth")
    np.savez(folder / "training_expected.npz", **expected_arrays(training["state_dict"]))


def write_safetensors(folder: Path, state: OrderedDict) -> dict[str, torch.Tensor]:
    flat = {k: v.detach().contiguous().clone() for k, v in state.items() if k != "uint16"}
    safetensors.torch.save_file(flat, folder / "state.safetensors")
    hf = folder / "hf_folder"
    hf.mkdir(exist_ok=True)
    safetensors.torch.save_file(flat, hf / "model.safetensors")
    (hf / "config.json").write_text(json.dumps({"architecture": "tiny", "num_classes": 3}))
    return flat


def write_sharded(folder: Path, state: OrderedDict) -> None:
    sharded = folder / "sharded_folder"
    sharded.mkdir(exist_ok=True)
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[:7]}
    shards["pytorch_model-00002-of-00002.bin"] = names[7:]
    weight_map = {}
    for shard, keys in shards.items():
        torch.save(OrderedDict((k, state[k]) for k in keys), sharded / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    ordered = {k: weight_map[k] for k in names}
    index = {"metadata": {"total_size": 0}, "weight_map": ordered}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=1))
    (sharded / "config.json").write_text(json.dumps({"architecture": "tiny"}))


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state = make_state()
    write_torch_files(folder, state)
    write_safetensors(folder, state)
    write_sharded(folder, state)
    np.savez(folder / "expected.npz", **expected_arrays(state))
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), folder / "torchscript.pt")
    print(f"wrote fixtures with torch {torch.__version__} to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/checkpoints")
