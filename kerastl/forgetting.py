"""How much fine-tuning changed what the backbone knew: the forgetting report.

The source task is the classifier that came with the pretrained weights (for
instance ImageNet's 1000 classes, kept with ``pretrained_head=True``). The
report runs that classifier on the pretrained backbone and on the fine-tuned
backbone over the same inputs, and compares the predictions (top-1 agreement,
top-5 overlap, mean KL divergence), then measures each layer group's relative
weight drift ``||w_after - w_before|| / ||w_before||`` (learned weights;
BatchNorm moving statistics left out).

Example:
    >>> relative_drift([np.ones(4)], [np.ones(4) * 1.5])
    0.5
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kerastl.core.meta import ModelMeta
from kerastl.errors import ConfigError, KerastlError


def relative_drift(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    """``sqrt(sum ||a - b||^2) / sqrt(sum ||b||^2)`` over paired arrays (0 if all zero)."""
    num = sum(float(np.sum((np.asarray(a, "float64") - b) ** 2)) for b, a in zip(before, after))
    den = sum(float(np.sum(np.asarray(b, "float64") ** 2)) for b in before)
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def agreement(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, top-5 overlap and mean KL(before || after) of two probability sets.

    Example:
        >>> p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
        >>> agreement(p, p[:, ::-1])["top1_agreement"]
        0.0
    """
    before = np.asarray(before, "float64")
    after = np.asarray(after, "float64")
    k = min(5, before.shape[1])
    top_b = np.argsort(-before, axis=1)[:, :k]
    top_a = np.argsort(-after, axis=1)[:, :k]
    overlap = np.mean([len(set(b) & set(a)) / k for b, a in zip(top_b, top_a)])
    eps = 1e-12
    kl = np.sum(before * (np.log(before + eps) - np.log(after + eps)), axis=1)
    return {
        "top1_agreement": float(np.mean(top_b[:, 0] == top_a[:, 0])),
        "top5_overlap": float(overlap),
        "mean_kl": float(np.mean(kl)),
    }


def _groups(model: keras.Model) -> dict[str, list]:
    from kerastl.freeze import _backbone_and_groups

    _, _, groups = _backbone_and_groups(model)
    return groups


def weight_drift(model: keras.Model, reference: keras.Model) -> dict[str, float]:
    """Relative drift of each backbone layer group of ``model`` from ``reference``.

    Both models must have the same backbone architecture (layer ``backbone``).
    BatchNorm moving statistics are left out: their variances are large numbers
    that would swamp the norm, and kerastl keeps them frozen by default.
    """
    ref_backbone = reference.get_layer("backbone")
    backbone = model.get_layer("backbone")
    mine, theirs = backbone.weights, ref_backbone.weights
    shapes = [tuple(v.shape) for v in mine] == [tuple(v.shape) for v in theirs]
    if len(mine) != len(theirs) or not shapes:
        raise ConfigError(
            "reference: its backbone does not have the model's architecture "
            f"({len(theirs)} vs {len(mine)} weight tensors); give the pretrained model of the "
            "same backbone."
        )
    paired = {id(m): t for m, t in zip(mine, theirs) if not _is_statistic(m)}
    drift = {}
    for group, layers in _groups(model).items():
        vs = [v for layer in layers for v in layer.weights if id(v) in paired]
        if vs:
            drift[group] = relative_drift(
                [np.asarray(paired[id(v)]) for v in vs], [np.asarray(v) for v in vs]
            )
    kept = [(t, m) for m, t in zip(mine, theirs) if id(m) in paired]
    drift["all"] = relative_drift(
        [np.asarray(t) for t, _ in kept], [np.asarray(m) for _, m in kept]
    )
    return drift


def _is_statistic(variable: Any) -> bool:
    """BatchNorm moving mean / variance (state, not learned weights)."""
    return str(getattr(variable, "name", "")).startswith("moving_")


def _source_predictions(reference: keras.Model, backbone_weights: list, x: Any, batch: int):
    backbone = reference.get_layer("backbone")
    saved = backbone.get_weights()
    try:
        backbone.set_weights(backbone_weights)
        return np.asarray(reference.predict(x, batch_size=batch, verbose=0))
    finally:
        backbone.set_weights(saved)


def forgetting_report(
    model: keras.Model, reference: keras.Model, x: Any, batch_size: int = 32
) -> dict[str, Any]:
    """Measure how fine-tuning ``model`` changed its backbone's source task.

    Args:
        model: The fine-tuned kerastl model (any head).
        reference: The pretrained model with its source classifier, e.g.
            ``kerastl.build(name, weights="imagenet", pretrained_head=True,
            input_shape=model.input_shape[1:])``. It is not modified.
        x: A sample of raw inputs (images 0-255 or strings).
        batch_size: Inference batch.

    Returns:
        ``{"num_examples", "top1_agreement", "top5_overlap", "mean_kl",
        "weight_drift": {group: relative drift, ..., "all": ...}}``.

    Example:
        >>> ref = kerastl.build("efficientnet_lite0", weights="imagenet",
        ...                     pretrained_head=True)  # doctest: +SKIP
        >>> forgetting_report(tuned, ref, images)["top1_agreement"]  # doctest: +SKIP
    """
    from kerastl.core.model import _strings_as_objects

    x = _strings_as_objects(x)
    drift = weight_drift(model, reference)
    before = np.asarray(reference.predict(x, batch_size=batch_size, verbose=0))
    after = _source_predictions(reference, model.get_layer("backbone").get_weights(), x, batch_size)
    return {"num_examples": int(len(before)), **agreement(before, after), "weight_drift": drift}


def source_reference(model: keras.Model, weights: Any) -> keras.Model:
    """The pretrained model of ``model``'s backbone with its source classifier.

    Raises:
        KerastlError: the backbone's weights keep no classifier kerastl can attach.
    """
    from kerastl.builder import build

    meta = ModelMeta.of(model)
    if not meta.backbone or weights is None:
        raise ConfigError("weights: the forgetting report needs pretrained weights; got None.")
    shape = tuple(model.input_shape[1:]) if meta.modality == "image" else None
    return build(
        meta.backbone, weights=weights, pretrained_head=True, input_shape=shape, compile=False
    )


def run_forgetting(model: keras.Model, x: Any, weights: Any, max_examples: int = 256) -> dict:
    """The report for a run's model, or ``{"skipped": reason}`` when it cannot be measured.

    Example:
        >>> run_forgetting(model, val_images, "imagenet")["top1_agreement"]  # doctest: +SKIP
    """
    try:
        reference = source_reference(model, weights)
    except KerastlError as exc:
        return {"skipped": str(exc)}
    return forgetting_report(model, reference, x[:max_examples])
