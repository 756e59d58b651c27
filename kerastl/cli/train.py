"""``kerastl train``, ``kerastl evaluate`` and ``kerastl demo``.

Nothing here imports TensorFlow at module import: ``kerastl --help`` builds
these parsers, and TensorFlow loads only inside the ``run_*`` functions.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kerastl.errors import ConfigError, check_folds
from kerastl.train._config import PRECISIONS, STRATEGIES

# flag dest -> dotted config key
_TRAIN_FLAGS = {
    "backbone": "model.backbone",
    "task": "model.task",
    "weights": "model.weights",
    "input_size": "model.input_size",
    "freeze": "model.freeze",
    "data": "data.path",
    "val_data": "data.val_path",
    "val_split": "data.val_split",
    "augment": "data.augment",
    "epochs": "train.epochs",
    "finetune_epochs": "finetune.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.learning_rate",
    "strategy": "train.strategy",
    "precision": "train.precision",
    "cache_features": "train.cache_features",
    "output_dir": "output_dir",
    "name": "name",
    "seed": "seed",
    "export": "export.formats",
    "quantize": "export.quantize",
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kerastl train``."""
    p.add_argument("config", nargs="?", help="YAML run config (flags override its keys)")
    g = p.add_argument_group("common fields (override the YAML)")
    g.add_argument("--backbone", help="registry name, e.g. mobilenet_v3_small")
    g.add_argument("--task", help="classification, binary, multilabel, regression, embedding")
    g.add_argument("--weights", help="imagenet, a preset, a file, or 'none'")
    g.add_argument("--input-size", type=int, help="image side in pixels")
    g.add_argument("--freeze", help="phase-1 policy: backbone, none, last:N, up_to:GROUP")
    g.add_argument("--data", help="image folder, CSV, .npz or text CSV/JSONL")
    g.add_argument("--val-data", help="separate validation data")
    g.add_argument("--val-split", type=float, help="validation fraction (default 0.2)")
    g.add_argument(
        "--augment", help="preset none, light, standard, strong (checked with the YAML's keys)"
    )
    g.add_argument("--epochs", type=int, help="phase-1 epochs")
    g.add_argument("--finetune-epochs", type=int, help="phase-2 (fine-tune) epochs")
    g.add_argument("--batch-size", type=int, help="per-replica batch size")
    g.add_argument("--lr", type=float, help="phase-1 learning rate")
    g.add_argument("--strategy", choices=STRATEGIES, help="tf.distribute strategy")
    g.add_argument("--precision", choices=PRECISIONS, help="training precision policy")
    g.add_argument("--jit", action="store_true", help="compile with XLA (jit_compile)")
    g.add_argument(
        "--cache-features",
        choices=["auto", "memory", "disk", "off"],
        help="cache frozen-backbone features (default auto)",
    )
    g.add_argument("--output-dir", help="parent of the run folder (default runs/)")
    g.add_argument("--name", help="run name (default: the YAML's stem)")
    g.add_argument(
        "--exist-ok",
        action="store_true",
        help="replace a finished run of this name (default: keep it, write to NAME-2, ...)",
    )
    g.add_argument("--seed", type=int, help="random seed")
    g.add_argument(
        "--formats",
        "--export",
        dest="export",
        metavar="FORMATS",
        help="comma-separated formats to export, from: saved_model, tflite, onnx "
        "(--export is the old spelling)",
    )
    g.add_argument(
        "--quantize", help="comma-separated extra TFLite precisions, from: float16, dynamic, int8"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set finetune.layer_decay=0.7 (repeatable)",
    )
    p.add_argument(
        "--folds",
        type=int,
        help="k-fold cross-validation instead of one run (k >= 2, at most the number of examples)",
    )
    p.add_argument("--no-resume", action="store_true", help="start over, ignoring backups")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="validate, print the resolved config and exit (no TensorFlow)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from kerastl.train._config import parse_override

    out: dict[str, Any] = {}
    for dest, key in _TRAIN_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "weights" and str(value).lower() in ("none", "null", "random"):
            value = None
        out[key] = value
    if getattr(args, "jit", False):
        out["train.jit_compile"] = True
    if getattr(args, "exist_ok", False):
        out["exist_ok"] = True
    if getattr(args, "no_resume", False):
        out["train.resume"] = False
    for item in getattr(args, "set", []) or []:
        key, value = parse_override(item)
        out[key] = value
    return out


def run_train(args: argparse.Namespace) -> int:
    """``kerastl train``: one run, or k-fold cross-validation with ``--folds``."""
    from kerastl.train._config import check_data_paths, load_config

    if args.folds is not None:
        check_folds(args.folds, "--folds")  # before TensorFlow is imported
        _refuse_export_flags_with_folds(args)
    overrides = _overrides(args)
    written_export = None
    if args.folds is not None:  # the folds score, they never export (kfold.fold_config)
        written_export = _written_export(args.config)
        overrides.update({"export.formats": [], "export.quantize": []})
    cfg = load_config(args.config, overrides)  # validates before TensorFlow loads
    check_data_paths(cfg, args.config or "config")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    if cfg["strategy_from"] is not None:  # measures the data: TensorFlow loads here
        from kerastl.decide import resolve_strategy_from

        cfg = resolve_strategy_from(cfg)
    if args.folds is not None:
        from kerastl.train.kfold import cross_validate

        summary = cross_validate(cfg, args.folds, export=written_export)
        _print_kfold(summary)
        return 0
    from kerastl.train.run import train

    result = train(cfg)
    print(f"run folder: {result.run_dir}")
    for k, v in _headline(result.metrics).items():
        print(f"  {k}: {v:.4f}")
    return 0


def _written_export(config: str | None) -> dict | None:
    """The ``export`` section of a run YAML as written (``None``: none, or unreadable; the
    config's own loading reports a broken file)."""
    if not config:
        return None
    import yaml

    try:
        with open(config, encoding="utf-8") as f:
            section = (yaml.safe_load(f) or {}).get("export")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return section if isinstance(section, dict) else None


def _refuse_export_flags_with_folds(args: argparse.Namespace) -> None:
    """``--formats`` / ``--quantize`` (or ``--set export...``) with ``--folds`` were dropped
    without a word: the folds score the config and export none of their models.

    An ``export`` section of the YAML is not refused: the same file trains single runs.
    """
    flags = {"export": "--formats", "quantize": "--quantize"}
    given = [flag for dest, flag in flags.items() if getattr(args, dest, None) is not None]
    for item in getattr(args, "set", []) or []:
        key = item.partition("=")[0].strip()
        if key in ("export.formats", "export.quantize"):
            given.append(f"--set {key}")
    if given:
        raise ConfigError(
            f"--folds and {given[0]}: k-fold cross-validation trains {args.folds} models to "
            f"score the config and exports none of them, so {given[0]} would be ignored. Drop "
            f"{given[0]} to cross-validate, or --folds to train and export one model."
        )


def _headline(metrics: dict) -> dict[str, float]:
    from kerastl.train._metrics import scalar_metrics

    return scalar_metrics(metrics)


def _print_kfold(summary: dict) -> None:
    print(f"{summary['folds']}-fold cross-validation over {summary['num_examples']} examples")
    print(f"{'metric':24} {'mean':>8} {'std':>8}")
    for k, mean in summary["mean"].items():
        print(f"{k:24} {mean:8.4f} {summary['std'][k]:8.4f}")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kerastl evaluate``."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by kerastl train")
    p.add_argument("--data", help="evaluate on this data instead of the run's validation split")
    p.add_argument(
        "--folds",
        type=int,
        help="k-fold cross-validation of the run's config (retrains k times; k >= 2)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run_evaluate(args: argparse.Namespace) -> int:
    """``kerastl evaluate RUN_DIR``: metrics and plots again, or k-fold with ``--folds``."""
    from kerastl.train.runfolder import read_config

    if args.folds is not None:
        check_folds(args.folds, "--folds")  # before TensorFlow is imported
        if args.data:
            raise ConfigError(
                f"--folds and --data: --folds cross-validates the run's config on the run's "
                f"own data, so --data {args.data!r} would be ignored. To score the run's model "
                f"on that data drop --folds; to cross-validate on it: kerastl train "
                f"{args.run_dir}/config.yaml --data {args.data} --folds {args.folds}."
            )
    cfg = read_config(args.run_dir)
    if args.folds is not None:
        from kerastl.train._config import validate_config
        from kerastl.train.kfold import cross_validate

        summary = cross_validate(
            validate_config(cfg, where=f"{args.run_dir}/config.yaml"),
            args.folds,
            out_dir=args.run_dir,
        )
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            _print_kfold(summary)
        return 0
    from kerastl.train.evaluate import evaluate_run

    metrics = evaluate_run(args.run_dir, args.data)
    if args.json:
        print(json.dumps(metrics, indent=1))
        return 0
    print(f"{metrics['task']} on {metrics['num_examples']} examples ({args.run_dir})")
    for k, v in _headline(metrics).items():
        print(f"  {k:20} {v:.4f}")
    for p in metrics.get("plots", []):
        print(f"  plot: {p}")
    if args.data:
        print(
            f"  metrics: {metrics['metrics_path']} (data {metrics['data']}; "
            "the run's own metrics.json is unchanged)"
        )
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kerastl demo``."""
    p.add_argument("--output-dir", default="runs/demo", help="where the demo writes (runs/demo)")
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="registry backbone with pretrained weights (efficientnet_lite0)",
    )
    p.add_argument(
        "--weights", default="imagenet", help="its pretrained weights: 'imagenet' or a path"
    )
    p.add_argument(
        "--task",
        default="digits",
        choices=["digits", "faces"],
        help="target data: scikit-learn digits (10 classes) or scikit-image LFW faces (2)",
    )
    p.add_argument(
        "--shots",
        type=_positive_int("--shots"),
        default=5,
        help="labelled examples per class (>= 1; default 5)",
    )
    p.add_argument("--quick", action="store_true", help="fewer epochs, no export (a smoke test)")
    p.add_argument("--no-export", action="store_true", help="skip exporting the fine-tuned model")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _positive_int(flag: str):
    """An argparse ``type`` accepting whole numbers >= 1 (exit 2 with the value otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or str(value) != text.strip():
            raise argparse.ArgumentTypeError(f"{flag}: expected a whole number >= 1, got {text!r}.")
        return value

    return parse


def run_demo(args: argparse.Namespace) -> int:
    """``kerastl demo``: pretrained transfer vs scratch on few labels, then export."""
    from kerastl.zoo import get_spec

    get_spec(args.backbone)  # an unknown backbone fails here, not after minutes of training
    from kerastl.train.demo import run_demo as demo

    result = demo(
        output_dir=args.output_dir,
        backbone=args.backbone,
        weights=args.weights,
        task=args.task,
        shots=args.shots,
        quick=args.quick,
        export=not args.no_export,
        seed=args.seed,
    )
    return 0 if result.get("ok", True) else 1
