"""Files saved by kerastl 0.1.0 before the package was restructured still load.

tests/data/legacy was written once by ``tools/make_legacy_models.py`` on the code
before issue 15 moved the modules: the configs name module paths that no longer
exist (``kerastl._model``, ``kerastl.zoo._keras_hub_adapter``, ...). Loading runs in a
fresh interpreter, so no layer is registered by an earlier test's imports: only
what ``kerastl.load_model`` itself resolves counts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

LEGACY = Path(__file__).parent / "data" / "legacy"
FILES = ["image_classifier", "text_classifier", "prototypes"]

LOAD = r"""
import json, sys
import numpy as np
import kerastl

folder, name = sys.argv[1], sys.argv[2]
ref = np.load(f"{folder}/outputs.npz")
model = kerastl.load_model(f"{folder}/{name}.keras")
x = ref["sentences"].astype(object) if name.startswith("text") else ref["images"]
out = model.predict(x, verbose=0)
print(json.dumps({
    "max_abs_diff": float(np.max(np.abs(out - ref[name]))),
    "spread": float(np.ptp(ref[name])),
    "kerastl_config": model.kerastl_config,
}))
"""


def _modules(name: str) -> set[str]:
    with zipfile.ZipFile(LEGACY / f"{name}.keras") as z:
        config = z.read("config.json").decode()
    return set(re.findall(r'"module": "(kerastl[^"]*)"', config))


@pytest.mark.parametrize("name", FILES)
def test_a_file_saved_before_the_restructure_loads_with_the_same_outputs(name):
    # The file really names the old module paths (otherwise this proves nothing).
    assert "kerastl._model" in _modules(name)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(LEGACY), name],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The reference outputs vary across the inputs, so a model that loaded with
    # fresh weights or a constant output would not match.
    assert result["spread"] > 1e-3
    assert result["max_abs_diff"] < 1e-4, result
    assert result["kerastl_config"]["task"] in ("classification", "prototypes")


def test_the_hub_files_name_the_old_adapter_module():
    assert "kerastl.zoo._keras_hub_adapter" in _modules("text_classifier")
    assert "kerastl.zoo._keras_hub_adapter" in _modules("prototypes")
