"""The model card of a run folder: its README.md, with Hugging Face front matter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _is_image(data_report: dict) -> bool:
    return data_report.get("modality", "image") == "image"


def _model_lines(config: dict, data_report: dict, exports: Any, metrics: dict) -> list[str]:
    """The card's title, what the folder holds and the model section."""
    from kerastl import __version__

    m = config["model"]
    keep = (config.get("train") or {}).get("keep", "best")
    if keep == "last":
        kept = "the last epoch"
    elif not data_report.get("num_val"):  # the best epoch by the training metric
        monitor = (config.get("train") or {}).get("monitor", "val_loss").replace("val_", "")
        kept = f"the epoch of the best training {monitor}: no validation data"
    else:
        kept = "best checkpoint"
    # metrics.json and plots/ are written from the validation data: none, no files
    measured = ", `metrics.json`" if metrics else ""
    return [
        f"# {config['name']}: {m['backbone']} ({m['task']})",
        "",
        f"Trained with kerastl {__version__}. Files in this folder: `model.keras` ({kept}), "
        f"`config.yaml` (resolved config){measured}, `logs/` (CSV and TensorBoard)"
        + (", `plots/`" if metrics else "")
        + (", `export/`" if exports else "")
        + ".",
        "",
        "## Model",
        "",
        f"- backbone: `{m['backbone']}`, weights: `{m['weights']}`",
        f"- input: {data_report.get('input_shape')} raw 0-255 RGB "
        "(preprocessing is inside the model)"
        if _is_image(data_report)
        else "- input: raw strings (tokenization is inside the model)",
        f"- task: `{m['task']}`, classes: {data_report.get('class_names')}",
        f"- head dropout {m['dropout']}, pooling `{m['pooling']}`",
    ]


def _data_lines(config: dict, data_report: dict) -> list[str]:
    return [
        "",
        "## Data",
        "",
        f"- source: {data_report.get('source')}",
        f"- training examples: {data_report.get('num_train')}, validation: "
        f"{data_report.get('num_val')}",
        f"- per class (training): {data_report.get('train_class_counts')}",
        f"- skipped examples (unreadable files, empty texts or labels): "
        f"{len(data_report.get('skipped', []))}"
        + (" (listed in data_report.json)" if data_report.get("skipped") else ""),
        f"- augmentation: `{config['data']['augment']}`",
    ]


def _training_lines(config: dict, timings: dict) -> list[str]:
    m, t, f = config["model"], config["train"], config["finetune"]
    lines = [
        "",
        "## Training",
        "",
        f"- phase 1: {t['epochs']} epoch(s), freeze `{m['freeze']}`, {t['optimizer']} at "
        f"lr {t['learning_rate']} ({t['schedule']}, warmup {t['warmup_epochs']})",
    ]
    if f["epochs"]:
        lines.append(
            f"- phase 2 (fine-tune): {f['epochs']} epoch(s), freeze `{f['freeze']}`, lr "
            + (
                f"{f['learning_rate']}"
                if f["learning_rate"] is not None
                else f"{t['learning_rate'] / 10:g} (phase 1's / 10)"
            )
            + (f", gradual unfreezing every {f['gradual_every']}" if f["gradual_every"] else "")
            + (f", layer decay {f['layer_decay']}" if f["layer_decay"] else "")
        )
    return lines + [
        f"- batch size {t['batch_size']} per replica x {timings.get('replicas', 1)} replica(s), "
        f"strategy `{timings.get('strategy')}`, precision `{timings.get('precision')}`",
        f"- cached backbone features: {timings.get('feature_cache', 'no')}",
        f"- wall time: {timings.get('total_seconds', 0):.1f} s",
    ]


def _metrics_lines(metrics: dict) -> list[str]:
    """The validation metrics table, per-class rows (up to 30 classes) and forgetting."""
    from kerastl.train._metrics import scalar_metrics

    if not metrics:
        return ["", "## Validation metrics", "", "None: the run had no validation data."]
    lines = ["", "## Validation metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in scalar_metrics(metrics).items()]
    if "per_class" in metrics and len(metrics["per_class"]) <= 30:
        first = next(iter(metrics["per_class"].values()))
        cols = [c for c in ("precision", "recall", "f1", "auc", "support") if c in first]
        lines += ["", "| class | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for c, row in metrics["per_class"].items():
            lines.append(f"| {c} | " + " | ".join(_fmt(row[k]) for k in cols) + " |")
    return lines + _forgetting_lines(metrics.get("forgetting"))


def _forgetting_lines(report: dict | None) -> list[str]:
    """The model card's section on how much the source task changed."""
    if not report:
        return []
    if "skipped" in report:
        return ["", "## Forgetting (source task)", "", f"Not measured: {report['skipped']}"]
    lines = [
        "",
        "## Forgetting (source task)",
        "",
        f"The pretrained classifier run on the pretrained vs the fine-tuned backbone, over "
        f"{report['num_examples']} validation inputs: top-1 agreement "
        f"{report['top1_agreement']:.4f}, top-5 overlap {report['top5_overlap']:.4f}, mean KL "
        f"{report['mean_kl']:.4f}.",
        "",
        "| layer group | relative weight drift |",
        "|---|---|",
    ]
    lines += [f"| {g} | {v:.5f} |" for g, v in report["weight_drift"].items()]
    return lines


def _how_to_load_lines(data_report: dict, run_dir: str | os.PathLike) -> list[str]:
    return [
        "",
        "## How to load",
        "",
        "```python",
        "import kerastl",
        f'model = kerastl.load_model("{Path(run_dir) / "model.keras"}")',
        "probabilities = model.predict(images)  # float32 0-255 RGB, NHWC"
        if _is_image(data_report)
        else "scores = model.predict(texts)  # raw strings",
        "```",
        "",
        "```",
        f"kerastl evaluate {run_dir}",
        f"kerastl export {Path(run_dir) / 'model.keras'} --formats saved_model,tflite,onnx",
        "```",
    ]


def model_card(
    config: dict,
    metrics: dict,
    data_report: dict,
    timings: dict,
    exports: Any = None,
    run_dir: str | os.PathLike = ".",
) -> str:
    """The README.md of a run: backbone, data, training, metrics, how to load."""
    lines = [
        *_model_lines(config, data_report, exports, metrics),
        *_data_lines(config, data_report),
        *_training_lines(config, timings),
        *_metrics_lines(metrics),
        *_how_to_load_lines(data_report, run_dir),
    ]
    if exports:
        lines += ["", "## Exports", "", *_exports_table(exports)]
    body = "\n".join(lines) + "\n"
    return card_front_matter(config, metrics, data_report) + body


def _exports_table(exports: Any) -> list[str]:
    """The exported files as a Markdown table (a failure as one line)."""
    if not isinstance(exports, dict) or "artifacts" not in exports:
        return [f"- {k}: {v}" for k, v in exports.items()] if isinstance(exports, dict) else []
    validation = exports.get("validation") or {}
    rows = []
    if validation.get("source"):
        rows += [f"Validated on {validation.get('samples')} {validation['source']}.", ""]
    rows += ["| file | status | size (bytes) |", "|---|---|---|"]
    for a in exports["artifacts"]:
        status = "passed" if a.get("passed") else "FAILED"
        rows.append(f"| `{a.get('path')}` | {status} | {a.get('size_bytes', '-')} |")
    return rows


def card_front_matter(config: dict, metrics: dict, data_report: dict) -> str:
    """Hugging Face model-card YAML front matter (``huggingface_hub.ModelCardData``).

    ``base_model``, ``datasets``, ``metrics`` and ``model-index`` eval results, so the
    run folder can be pushed to the Hub as is (``huggingface_hub.ModelCard.load``).

    Example:
        >>> cfg = {"name": "run", "model": {"backbone": "resnet50", "task": "classification",
        ...        "weights": "imagenet"}, "data": {"path": "data/flowers"}}
        >>> text = card_front_matter(cfg, {"accuracy": 0.9}, {"modality": "image"})
        >>> text.splitlines()[0], "base_model: resnet50" in text, "value: 0.9" in text
        ('---', True, True)
    """
    from huggingface_hub import EvalResult, ModelCardData

    from kerastl.train._metrics import scalar_metrics

    m = config["model"]
    path = str((config.get("data") or {}).get("path") or "")
    dataset = Path(path).name if path else str(data_report.get("source") or "custom")
    pipeline = {
        ("image", "classification"): "image-classification",
        ("image", "binary"): "image-classification",
        ("image", "multilabel"): "image-classification",
        ("text", "classification"): "text-classification",
        ("text", "binary"): "text-classification",
        ("audio", "classification"): "audio-classification",
    }.get((data_report.get("modality", "image"), m["task"]))
    values = scalar_metrics(metrics)
    results = [
        EvalResult(
            task_type=pipeline or m["task"],
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split="validation",
            metric_type=k,
            metric_value=round(v, 6),
        )
        for k, v in values.items()
    ]
    data = ModelCardData(
        model_name=config.get("name"),
        library_name="keras",
        tags=["kerastl", m["task"], str(m["backbone"])],
        base_model=str(m["backbone"]),
        datasets=[dataset],
        metrics=sorted(values),
        pipeline_tag=pipeline,
        eval_results=results or None,
    )
    return "---\n" + data.to_yaml() + "\n---\n\n"
