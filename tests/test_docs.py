"""Docs that a test keeps true: the README's model table and its two set-up commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_model_table_matches_registry():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from update_readme import model_table
    finally:
        sys.path.pop(0)
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"<!-- models:start -->\n(.*?)\n<!-- models:end -->", readme, re.S)
    assert section, "README lost its model table markers"
    assert section.group(1).strip() == model_table(), "run: python tools/update_readme.py"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert len(blocks) == 2, "README gives exactly two set-up commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci
    install = blocks[0].split("&& .venv/bin/kerastl demo")[0].strip()
    ci_lines = {line.strip() for line in ci.splitlines()}
    for step in install.split(" && "):  # CI runs them one per line, so set -e stops on each
        assert step.strip() in ci_lines, step


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'kerastl = "kerastl.cli.app:console"' in text
    res = subprocess.run(
        [sys.executable, "-m", "kerastl.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout.startswith("kerastl ")


def test_readme_test_command_runs_the_docstring_examples():
    """``python -m pytest`` (no path) collects kerastl/ with --doctest-modules from pyproject."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'testpaths = \[[^\]]*"kerastl"', pyproject), "kerastl/ is not collected"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + ["kerastl/export/formats/saved_model.py", "kerastl/zoo/_registry.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "saved_model.py::kerastl.export.formats.saved_model.prediction_log" in res.stdout
    assert "_registry.py::kerastl.zoo._registry.list_models" in res.stdout
