"""The ``kerastl`` command line.

``kerastl --help``, ``kerastl models`` and ``kerastl info`` never import
TensorFlow. Other subcommands live in their own modules, each exposing
``add_<command>_arguments(parser)`` and ``run_<command>(args) -> int``; those modules import
TensorFlow only inside ``run``.

Exit codes: 0 success, 1 failure, 2 usage error (bad argument, config or
input), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from typing import Any

# subcommand -> (module, help). The module provides add_<command>_arguments() and run_<command>().
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "models": ("kerastl.cli.models", "list registry models (wildcards, filters)"),
    "info": ("kerastl.cli.models", "describe one model: input, preprocessing, groups, taps"),
    "train": ("kerastl.cli.train", "train from a YAML run config"),
    "evaluate": ("kerastl.cli.train", "evaluate a run folder (metrics, plots, k-fold)"),
    "demo": ("kerastl.cli.train", "the main job: transfer learning vs scratch, then export"),
    "export": ("kerastl.cli.export", "export a .keras model to SavedModel/TFLite/ONNX"),
    "predict": ("kerastl.cli.export", "run an exported artifact or .keras model on inputs"),
    "rank": ("kerastl.cli.decide", "rank candidate backbones on your data: score, size, latency"),
    "advise": ("kerastl.cli.decide", "advise feature extraction / partial / full fine-tuning"),
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
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and TensorFlow's C++/absl logs",
    )
    common.add_argument(
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors"
    )
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
        if only is not None and name != only and module != "kerastl.cli.models":
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

        def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
            with contextlib.suppress(ValueError, OSError):  # closed or broken stdout
                sys.stdout.flush()  # what was printed before this line shows before it
            super().emit(record)

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


#: Commands with a ``--weights`` option: the API's ``weights=X`` is ``--weights X`` there.
_WEIGHTS_FLAG = {"train": "--weights", "demo": "--weights", "advise": "--weights"}
#: not --weights= itself, nor a config key (model.weights='x')
_API_WEIGHTS = re.compile(r"(?<![\w.-])weights=(?:'([^']*)'|None)")
#: What the commands without ``--weights`` take instead of weights the API would load.
_NO_WEIGHTS_FLAG = {
    "predict": "kerastl predict takes a .keras model or an exported artifact (SavedModel "
    "folder, .tflite, .onnx), or the name of a model whose pretrained weights are on this "
    "machine (`kerastl models --pretrained` lists them).",
}


def cli_wording(command: str, error: BaseException | str) -> str:
    """An error message in the words of the command the user ran.

    The library's messages name its Python arguments (``pass weights='/path/to/file'``).
    A command with ``--weights`` gets the flag instead; one without has the advice it
    cannot follow removed and gets what it does take.

    Example:
        >>> cli_wording("train", "Offline, pass weights='/path/to/weights.h5'.")
        'Offline, pass --weights /path/to/weights.h5.'
        >>> cli_wording("advise", "Unknown --weights='imagenet2'. Did you mean 'imagenet'?")
        "Unknown --weights='imagenet2'. Did you mean 'imagenet'?"
        >>> cli_wording("predict", "Offline, place it in ~/.keras, or pass weights='x.h5'.")[:64]
        'Offline, place it in ~/.keras. At the command line: kerastl pred'
    """
    text = str(error)
    if "weights=" not in text:
        return text
    flag = _WEIGHTS_FLAG.get(command)
    if flag is not None:
        return _API_WEIGHTS.sub(lambda m: f"{flag} {m.group(1) or 'none'}", text)
    text = re.sub(r",? (?:or|and) pass weights='[^']*'", "", text)
    text = re.sub(r" ?weights=None builds the architecture with random weights\.", "", text)
    advice = _NO_WEIGHTS_FLAG.get(
        command,
        "`kerastl models --pretrained` lists the models whose pretrained weights are on this "
        "machine.",
    )
    return f"{text} At the command line: {advice}"


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
    restore_warnings = _setup_warnings(args)
    try:
        return _dispatch(args)
    finally:
        restore_warnings()
        restore()


#: The kerastl package folder: a warning raised from a file under it is kerastl's own.
_KERASTL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _warning_origin(filename: str) -> str:
    """The package a warning comes from: ``kerastl``, else the top-level package of
    ``filename`` under site-packages (``keras``), else the file's name.

    Example:
        >>> _warning_origin("/venv/lib/python3.11/site-packages/keras/src/ops/nn.py")
        'keras'
    """
    if not filename:
        return "python"
    path = os.path.abspath(filename)
    if path.startswith(_KERASTL_DIR + os.sep):
        return "kerastl"
    parts = path.split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return os.path.basename(filename) or "python"


def _setup_warnings(args: argparse.Namespace) -> Any:
    """Python warnings as one line each on stderr (not with ``--debug``).

    kerastl's own: ``warning: <message>``; another package's: ``warning (keras):
    <message>`` (``warning (keras, DeprecationWarning): ...`` for categories other than
    UserWarning), without the file, line number and source line Python prints. Only the
    CLI does this: library use keeps Python's format. Returns a function that puts
    ``warnings.showwarning`` back (for in-process callers such as tests).
    """
    import warnings

    saved = warnings.showwarning
    if args.debug:
        return lambda: None

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        stream = file if file is not None else sys.stderr
        if stream is None:
            return
        origin = _warning_origin(filename)
        tags = [] if origin == "kerastl" else [origin]
        if category is not UserWarning:
            tags.append(category.__name__)
        label = f"warning ({', '.join(tags)}): " if tags else "warning: "
        text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
        with contextlib.suppress(ValueError, OSError):  # a closed or broken stream
            sys.stdout.flush()  # what was printed before the warning shows before it
            stream.write(label + text + "\n")

    warnings.showwarning = show

    def restore() -> None:
        if warnings.showwarning is show:
            warnings.showwarning = saved

    return restore


def _dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand; errors become one line and an exit code."""
    from kerastl.cli import quiet as _quiet
    from kerastl.core import interrupt as _interrupt
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
        print(f"kerastl {args.command}: error: {cli_wording(args.command, exc)}", file=sys.stderr)
        return 2
    except KerastlError as exc:
        if args.debug:
            raise
        print(f"kerastl {args.command}: failed: {cli_wording(args.command, exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a folder that vanished: one line, exit 1
        if args.debug:
            raise
        reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
        where = f": {exc.filename}" if exc.filename else ""
        print(f"kerastl {args.command}: failed: {reason}{where}", file=sys.stderr)
        global _FAILED_WRITE
        _FAILED_WRITE = True
        return 1


#: Set when a command failed on an OSError (a full disk): see :func:`console`.
_FAILED_WRITE = False


def console() -> None:
    """The ``kerastl`` console script: :func:`main`, then exit with its code.

    After a write failed on a full disk, HDF5 (h5py) can crash the interpreter's
    shutdown with SIGSEGV while it closes the file it could not write, so the
    process would end with -11 instead of 1. The message is already printed and
    every file kerastl publishes is written to a temporary name first, so in that
    case the process exits at once with the code.
    """
    code = main()
    if _FAILED_WRITE:
        with contextlib.suppress(OSError, ValueError):  # a closed pipe cannot be flushed
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
