"""The ``kerastl`` command line: one module per group of subcommands.

``main`` builds the parser (:mod:`kerastl.cli.app`); ``models`` and ``info``
(:mod:`kerastl.cli.models`) import no TensorFlow. Nothing in kerastl imports
this package: it sits on top of every other layer.
"""

from kerastl.cli.app import EXAMPLES, SUBCOMMANDS, build_parser, main

__all__ = ["EXAMPLES", "SUBCOMMANDS", "build_parser", "main"]
