"""``python -m kerastl``: the console script."""

from kerastl.cli.app import console

console()
