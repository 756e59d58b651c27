"""``python -m kerastl.cli``: the console script."""

from kerastl.cli.app import console

console()
