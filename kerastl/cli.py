"""The ``kerastl`` command line.

``kerastl --help``, ``kerastl models`` and ``kerastl info`` never import
TensorFlow. Other subcommands live in their own modules, each exposing
``add_arguments(parser)`` and ``run(args) -> int``; those modules import
TensorFlow only inside ``run``.

Exit codes: 0 success, 1 failure, 2 usage error (bad argument, config or
input), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

# subcommand -> (module, help). The module provides add_arguments() and run().
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "models": ("kerastl.cli", "list registry models (wildcards, filters)"),
    "info": ("kerastl.cli", "describe one model: input, preprocessing, groups, taps"),
    "train": ("kerastl.train._cli", "train from a YAML run config"),
    "evaluate": ("kerastl.train._cli", "evaluate a run folder (metrics, plots, k-fold)"),
    "demo": ("kerastl.train._cli", "the main job: transfer learning vs scratch, then export"),
    "export": ("kerastl.export._cli", "export a .keras model to SavedModel/TFLite/ONNX"),
    "predict": ("kerastl.export._cli", "run an exported artifact or .keras model on inputs"),
}


def _models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'resnet*'")
    p.add_argument("--modality", choices=["image", "text", "audio"])
    p.add_argument("--source", choices=["keras.applications", "keras_hub"])
    p.add_argument(
        "--pretrained", action="store_true", help="only models with downloadable weights"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def run_models(args: argparse.Namespace) -> int:
    from kerastl.zoo import get_spec, list_models

    names = list_models(
        args.pattern,
        modality=args.modality,
        source=args.source,
        pretrained=True if args.pretrained else None,
    )
    specs = [get_spec(n) for n in names]
    if args.json:
        print(json.dumps([s.to_dict() for s in specs], indent=1))
        return 0
    if not specs:
        print(f"No model matches {args.pattern!r}.", file=sys.stderr)
        return 1
    rows = [("name", "modality", "source", "input", "min", "features", "params", "top1", "prep")]
    for s in specs:
        rows.append(
            (
                s.name,
                s.modality,
                s.source,
                str(s.input_size),
                str(s.min_input_size),
                str(s.feature_dim),
                _fmt_params(s.params),
                f"{s.top1:.1f}" if s.top1 else "-",
                s.preprocessing,
            )
        )
    if args.markdown:
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "---|" * len(rows[0]))
        for r in rows[1:]:
            print("| " + " | ".join(r) + " |")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\n{len(specs)} model(s)")
    return 0


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registry name or alias, e.g. resnet50")
    p.add_argument("--json", action="store_true", help="print JSON")


def run_info(args: argparse.Namespace) -> int:
    from kerastl.zoo import get_spec

    spec = get_spec(args.name)
    d = spec.to_dict()
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    for key in (
        "name",
        "family",
        "source",
        "modality",
        "constructor",
        "aliases",
        "input_size",
        "min_input_size",
        "preprocessing",
        "feature_dim",
        "params",
        "top1",
        "license",
        "pretrained",
    ):
        print(f"{key:15} {d[key]}")
    print("groups          " + ", ".join(g for g, _ in spec.groups))
    print(
        "taps            "
        + ", ".join(f"{t.layer} ({t.channels}ch, /{t.stride})" for t in spec.taps)
    )
    for k, v in spec.extra.items():
        print(f"{k:15} {v}")
    return 0


_LOCAL = {"models": (_models_arguments, run_models), "info": (_info_arguments, run_info)}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (imports no TensorFlow).

    Args:
        only: Import the arguments of this subcommand only; the others get
            their one-line help. ``kerastl models`` then imports nothing heavy
            (not even NumPy). ``None`` builds every subcommand.
    """
    from kerastl import __version__

    parser = argparse.ArgumentParser(
        prog="kerastl",
        description="Transfer learning with TensorFlow/Keras: pick a backbone, train, export.",
    )
    parser.add_argument("--version", action="version", version=f"kerastl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name in _LOCAL:
            _LOCAL[name][0](p)
            p.set_defaults(_run=_LOCAL[name][1])
            continue
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("kerastl"):
                p.set_defaults(_run=_unavailable(name))
                continue
            raise
        getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(_run=getattr(mod, f"run_{name}"))
    return parser


def _unavailable(name: str):
    def run(args: Any) -> int:
        print(f"kerastl {name}: not available in this build.", file=sys.stderr)
        return 1

    return run


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kerastl`` console script."""
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(only=command if command in SUBCOMMANDS else "")
    args = parser.parse_args(words)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from kerastl import _interrupt
    from kerastl._errors import ConfigError, DataError, KerastlError

    _interrupt.install()
    try:
        code = int(args._run(args) or 0)
        _interrupt.check()  # a Ctrl-C that a library swallowed still ends with 130
        return code
    except BrokenPipeError:  # `kerastl models | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("\nkerastl: interrupted; nothing half-written was published.", file=sys.stderr)
        return 130
    except (ConfigError, DataError) as exc:
        if args.debug:
            raise
        print(f"kerastl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KerastlError as exc:
        if args.debug:
            raise
        print(f"kerastl {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a folder that vanished: one line, exit 1
        if args.debug:
            raise
        reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
        where = f": {exc.filename}" if exc.filename else ""
        print(f"kerastl {args.command}: failed: {reason}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
