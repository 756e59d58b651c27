"""Rewrite the model table of README.md from the registry (tests/test_docs.py checks it)."""

import contextlib
import io
import re
from pathlib import Path

from kerastl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def model_table() -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["models", "--markdown"])
    return buf.getvalue().strip()


if __name__ == "__main__":
    text = README.read_text()
    new = re.sub(
        r"(<!-- models:start -->\n).*?(<!-- models:end -->)",
        lambda m: m.group(1) + model_table() + "\n" + m.group(2),
        text,
        flags=re.S,
    )
    README.write_text(new)
