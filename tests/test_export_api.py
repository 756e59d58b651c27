"""``kerastl.export`` is both the package and the public function: every spelling runs the
same pipeline function, whether or not the package was imported before the attribute was
first read (then Python binds ``kerastl.export`` to the package, which is callable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_CHECK = """
from kerastl.export import export
from kerastl.export.pipeline import export as canonical

assert export is canonical
for call in (kerastl.export, export):
    try:
        call("model.keras", "out", formats=["nope"])
    except kerastl.ConfigError as exc:
        print(type(kerastl.export).__name__, type(exc).__name__, str(exc).splitlines()[0])
"""

_FIRST = {
    "function": "import kerastl\nassert kerastl.export.__module__ == 'kerastl.export.pipeline'\n",
    "package": "import kerastl.export.formats\nimport kerastl\n"
    "assert kerastl.export is sys.modules['kerastl.export']\n",
}


@pytest.mark.parametrize("first", sorted(_FIRST))
def test_both_spellings_of_export_call_the_pipeline(tmp_path, first):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-c", "import sys\n" + _FIRST[first] + _CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and len(set(lines)) == 1, lines
    assert "UnknownNameError" in lines[0] and "'nope'" in lines[0] and "saved_model" in lines[0]
