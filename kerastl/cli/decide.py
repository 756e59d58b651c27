"""``kerastl rank`` and ``kerastl advise``: arguments checked before TensorFlow is imported."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from kerastl.decide._candidates import (
    RUNTIMES,
    check_runtime,
    parse_backbone,
    parse_candidates,
)
from kerastl.decide._scores import ESTIMATORS
from kerastl.errors import ConfigError, choice_error, flag_for

CACHES = ("memory", "disk")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="labelled data: image folder, CSV, .npz or text CSV/JSONL")
    p.add_argument("--input-size", type=int, default=224, help="image side (default 224)")
    p.add_argument("--sequence-length", type=int, default=None, help="text models: tokens")
    p.add_argument(
        "--cache", default="memory", help="feature (and rank cost) cache: memory or disk"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def add_rank_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kerastl rank``."""
    _common(p)
    p.add_argument(
        "--candidates",
        required=True,
        help="comma-separated NAME[@WEIGHTS][:tapK], wildcards allowed, "
        "e.g. 'efficientnet_lite*,efficientnet_lite0@random'",
    )
    p.add_argument("--runtime", default="tflite", help=f"cost runtime: {', '.join(RUNTIMES)}")
    p.add_argument("--score", default="logme", help=f"sort by: {', '.join(ESTIMATORS)}")
    p.add_argument("--plot", default=None, help="write score vs latency to this .png")
    p.add_argument(
        "--tokenizer", default=None, help="text: preset folder for random-init candidates' vocab"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes ranking candidates side by side (default: one per CPU core, at most 4)",
    )


def add_advise_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kerastl advise``."""
    _common(p)
    p.add_argument(
        "--backbone",
        required=True,
        help="registry name, optionally NAME@WEIGHTS as in rank, e.g. efficientnet_lite0@random",
    )
    p.add_argument("--weights", default=None, help="imagenet (default), random or a path")


def check_common(args: argparse.Namespace) -> None:
    """Validate what both commands share (no TensorFlow).

    Example:
        >>> ns = argparse.Namespace(data=".", input_size=0, cache="memory", sequence_length=None)
        >>> check_common(ns)
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: --input-size: expected an integer >= 32, got 0.
    """
    if not os.path.exists(args.data):
        raise ConfigError(f"DATA: nothing at {args.data!r} (an image folder, CSV, .npz, JSONL).")
    if args.input_size < 32:
        raise ConfigError(f"--input-size: expected an integer >= 32, got {args.input_size}.")
    if args.cache not in CACHES:
        raise choice_error("--cache", args.cache, CACHES)
    if args.sequence_length is not None and args.sequence_length < 4:
        raise ConfigError(f"--sequence-length: expected >= 4, got {args.sequence_length}.")


def check_rank(args: argparse.Namespace) -> list:
    """Validate ``kerastl rank``'s arguments; return the parsed candidates (no TensorFlow)."""
    check_common(args)
    check_runtime(args.runtime)
    if args.score not in ESTIMATORS:
        raise choice_error("--score", args.score, ESTIMATORS)
    if args.plot is not None:
        parent = os.path.dirname(os.path.abspath(args.plot))
        if not args.plot.lower().endswith((".png", ".svg", ".pdf")):
            raise ConfigError(f"--plot: expected a .png, .svg or .pdf path, got {args.plot!r}.")
        if not os.path.isdir(parent):
            raise ConfigError(f"--plot: the folder {parent!r} does not exist.")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: expected a positive integer, got {args.workers}.")
    if args.tokenizer is not None and not os.path.isdir(args.tokenizer):
        raise ConfigError(f"--tokenizer: expected a preset folder, got {args.tokenizer!r}.")
    return parse_candidates(args.candidates)


def _build_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.sequence_length is not None:
        kw["sequence_length"] = args.sequence_length
    if getattr(args, "tokenizer", None):
        kw["tokenizer"] = args.tokenizer
    return kw


def run_rank(args: argparse.Namespace) -> int:
    """``kerastl rank DATA --candidates ...``: print the table (text or JSON).

    Exit status 1 when no candidate could be scored (each failed row says why).
    """
    cands = check_rank(args)
    from kerastl.decide._rank import rank

    with flag_for("candidates", "--candidates"):
        table = rank(
            args.data,
            cands,
            input_size=args.input_size,
            runtime=args.runtime,
            by=args.score,
            cache=args.cache,
            progress=True,
            workers=args.workers,
            **_build_kwargs(args),
        )
    print(table.json() if args.json else table.text())
    if args.plot:
        table.plot(args.plot)
    if all(r["failed"] for r in table.rows):
        print("kerastl rank: no candidate could be scored (see 'failed' above).", file=sys.stderr)
        return 1
    return 0


def run_advise(args: argparse.Namespace) -> int:
    """``kerastl advise DATA --backbone NAME[@WEIGHTS]``: print the advice and its reasons."""
    check_common(args)
    given = args.weights is not None
    weights = args.weights if given else "imagenet"
    cand = parse_backbone(args.backbone, weights, "--backbone", "--weights", explicit=given)
    from kerastl.decide._advise import advise
    from kerastl.decide._candidates import check_modality
    from kerastl.decide._rank import as_examples

    examples = as_examples(args.data, "DATA")
    check_modality([cand], examples.modality, "--backbone")
    a = advise(examples, cand, input_size=args.input_size, cache=args.cache, **_build_kwargs(args))
    print(json.dumps(a.to_dict(), indent=1) if args.json else a.text())
    return 0
