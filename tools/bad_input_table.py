"""Regenerate docs/bad_input.md by running the bad-input cases of tests/test_bad_input.py."""

import contextlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_bad_input as t  # noqa: E402

from kerastl.cli import main  # noqa: E402

rows = []
for case, argv, code, _ in t.CLI_CASES:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = t._folder(tmp / "data")
        (tmp / "keep").mkdir()
        (tmp / "keep" / "model.keras").write_bytes(b"precious")
        args = [str(a) for a in argv(tmp, data)]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                got = main(args)
            except SystemExit as exc:
                got = exc.code
        msg = err.getvalue().strip().splitlines()[-1].replace(d, "…").replace("|", "\\|")
        shown = " ".join(a.replace(d, "…") for a in args)
        rows.append(f"| `{case}` | `kerastl {shown}` | {got} | {msg} |")

doc = ROOT / "docs" / "bad_input.md"
head = doc.read_text().split("<!-- cli:start -->")[0]
tail = doc.read_text().split("<!-- cli:end -->")[1]
doc.write_text(
    head + "<!-- cli:start -->\n| case | command | exit | what it printed |\n|---|---|---|---|\n"
    + "\n".join(rows) + "\n<!-- cli:end -->" + tail
)
