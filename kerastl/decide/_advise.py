"""``kerastl.advise``: feature extraction, partial or full fine-tuning, from measurements.

Two measurements on the user's labelled data, one feature pass each:

* the label budget: labels in the smallest class;
* domain similarity, read from the backbone's own layers: LogME of every
  multi-scale tap and of the final features, and a cross-validated linear
  probe of the final features. When the final features score best, what the
  backbone learnt at the top transfers (a near domain); when an earlier tap
  scores higher, the layers above it are specific to the source data (a far
  domain). How well the frozen final features already separate the classes (the
  probe) is what decides how much to retrain.

The decision (:func:`decide`) is pure and documented by its reasons. Rules 3, as
revised from ``bench/rank.py`` (four tasks x sixteen draws, EfficientNet-Lite0, 10-40
labels per class): fewer than 5 labels per class, feature extraction; frozen final
features that do not yet separate the classes (chance-corrected probe below
:data:`SEPARABLE`), the top half of the groups, near domain or far; features that
already separate them, every group at the lowest rate with BatchNorm frozen. The tap
reading (near or far) is reported as a reason: on those draws it did not change which
strategy was best once the probe was known. Rules 2 sent every far domain to full
fine-tuning: on the 13 draws it had not been revised on, 2.3 points below the top half on
the task where the far reading and unseparated features met (digits 5-9). The first
rules (retrain only the groups above the best tap; feature extraction for separable
features) were 3.2 and 2.3 points below full fine-tuning on the two tasks where they
applied (bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kerastl.core.sampling import spread
from kerastl.decide._scores import linear_probe_accuracy, logme, one_blas_thread

#: Smallest class size below which no backbone weight is trained.
MIN_SHOTS_TO_TUNE = 5
#: Chance-corrected probe accuracy from which frozen features are "already separable".
SEPARABLE = 0.85
#: Version of the rules below (1: the first rules; 2 and 3: revised on bench/rank.py's draws).
RULES = 3


@dataclass
class Advice:
    """A strategy with its learning rates and one reason per line."""

    strategy: str  # "feature_extraction" | "partial_finetune" | "full_finetune"
    groups: int  # backbone groups to fine-tune (0 = frozen)
    head_learning_rate: float
    finetune_learning_rate: float | None
    freeze: str  # the kerastl freeze policy of the fine-tuning phase
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    train_batchnorm: bool = False  # BatchNorm statistics move while fine-tuning

    def text(self) -> str:
        """The advice as lines of text."""
        lr = (
            ""
            if self.finetune_learning_rate is None
            else f", fine-tune lr {self.finetune_learning_rate:g}"
        )
        bn = ", BatchNorm trains" if self.train_batchnorm else ""
        lines = [
            f"advice: {self.strategy} (freeze {self.freeze}; head lr "
            f"{self.head_learning_rate:g}{lr}{bn})"
        ]
        return "\n".join(lines + [f"  - {r}" for r in self.reasons])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def decide(
    shots: int,
    n_classes: int,
    probe: float,
    tap_logme: list[float],
    final_logme: float,
    n_groups: int,
    feature_rms: float | None = None,
    tap_ids: list[int] | None = None,
) -> Advice:
    """The strategy from the measurements (no TensorFlow).

    Args:
        shots: Labels in the smallest class.
        n_classes: Classes.
        probe: Linear-probe CV accuracy of the frozen final features.
        tap_logme: LogME of each earlier tap, shallow to deep (may be empty).
        final_logme: LogME of the final features.
        n_groups: Layer groups of the backbone.
        feature_rms: Set when the frozen features are collapsed
            (:func:`kerastl.core.features.collapsed`): their RMS. Then the scores measure
            nothing, and the advice says so.

    Example:
        >>> decide(3, 10, 0.5, [0.1], 0.2, 5).strategy
        'feature_extraction'
        >>> decide(20, 10, 0.6, [-0.1, 0.1], 0.2, 5).groups  # not separable: top half
        2
        >>> decide(20, 10, 0.6, [-0.1, 0.4, 0.1], 0.2, 5).groups  # far, not separable: the same
        2
        >>> decide(20, 10, 0.95, [-0.1, 0.4, 0.1], 0.2, 5).strategy  # separable: every group
        'full_finetune'
        >>> decide(20, 10, 1.0, [], 0.2, 5, feature_rms=1e-12).train_batchnorm  # collapsed
        True
    """
    chance = 1.0 / n_classes
    sep = (probe - chance) / (1 - chance)
    why = [f"{shots} {'label' if shots == 1 else 'labels'} in the smallest class of {n_classes}"]
    if feature_rms is not None:
        return _collapsed_advice(why, feature_rms, n_groups, sep)
    why.append(f"frozen final features: linear probe {probe:.2f} (chance {chance:.2f})")
    best = int(np.argmax([*tap_logme, final_logme]))
    near = best == len(tap_logme)
    if tap_logme:
        tap = best if tap_ids is None or near else tap_ids[best]
        why.append(
            "final features score best (LogME): the top layers transfer, a near domain"
            if near
            else f"tap {tap} scores above the final features (LogME {tap_logme[best]:.3f} > "
            f"{final_logme:.3f}): the layers above it are specific to the source data"
        )
    if shots < MIN_SHOTS_TO_TUNE:
        why.append(f"fewer than {MIN_SHOTS_TO_TUNE} labels per class: fine-tuning would overfit")
        return _advice(0, n_groups, why, sep, best)
    if sep < SEPARABLE:
        groups = max(1, n_groups // 2)
        why.append(
            f"frozen features do not yet separate the classes ({_below(sep, SEPARABLE)} < {SEPARABLE}): "
            "the top half of the groups must change, at a rate that moves them"
        )
        return _advice(groups, n_groups, why, sep, best)
    why.append(
        f"frozen features already separate the classes ({sep:.3g} >= {SEPARABLE}): the head "
        "starts right, every layer adapts at a low rate"
    )
    return _advice(n_groups, n_groups, why, sep, best)


def _below(value: float, bar: float) -> str:
    """``value`` written with the digits that show it below ``bar`` (0.849 < 0.85, where
    two digits wrote "0.85 < 0.85").

    Example:
        >>> _below(0.8493, 0.85), _below(0.61, 0.85), _below(0.84999, 0.85)
        ('0.849', '0.61', '0.84999')
    """
    for digits in range(2, 8):
        text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
        if float(text) < bar:
            return text
    return repr(value)


def _collapsed_advice(why: list[str], rms: float, n_groups: int, sep: float) -> Advice:
    """Collapsed frozen features: no score of them means anything; train every layer."""
    why.append(
        f"frozen features are collapsed (RMS {rms:.1e}; `kerastl rank` flags them too): "
        "e.g. random init with BatchNorm frozen at its initial statistics. A head on frozen "
        "features cannot learn from them, and the probe and LogME say nothing"
    )
    why.append(
        "train every layer with BatchNorm in training mode (model.train_batchnorm) at a "
        "from-scratch rate, 1e-3; or better, start from pretrained weights (@imagenet or a "
        "checkpoint) and run `kerastl advise` again"
    )
    meas = {"separability": sep, "best_layer": None, "collapsed": True, "feature_rms": rms}
    return Advice("full_finetune", n_groups, 1e-2, 1e-3, "none", why, meas, train_batchnorm=True)


def _advice(groups: int, n_groups: int, why: list[str], sep: float, best: int) -> Advice:
    meas = {"separability": sep, "best_layer": best}
    if groups == 0:
        return Advice("feature_extraction", 0, 1e-2, None, "backbone", why, meas)
    if groups >= n_groups:
        why.append("all layers move: the lowest rate, 1e-4")
        return Advice("full_finetune", n_groups, 1e-2, 1e-4, "none", why, meas)
    lr = 3e-4 if groups <= 2 else 1e-4
    why.append(f"{groups} of {n_groups} groups move: fine-tune rate {lr:g} after the head")
    return Advice("partial_finetune", groups, 1e-2, lr, f"last:{groups}", why, meas)


#: Most taps advise reads (one model build and feature pass each): a 24-layer text
#: encoder has 23 taps below its final features; 5 evenly spaced ones tell near from far.
MAX_TAPS = 5


def read_taps(n_taps: int, last: int | None, most: int = MAX_TAPS) -> list[int]:
    """The taps advise measures: all but ``last`` (the final features), at most ``most``.

    Example:
        >>> read_taps(5, 4), read_taps(6, 5), read_taps(24, 23)
        ([0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 6, 11, 16, 22])
    """
    ids = [k for k in range(n_taps) if k != last]
    if len(ids) <= most:
        return ids
    return [ids[i] for i in spread(len(ids), most)]


def _measure(
    c: Any, spec: Any, examples: Any, input_size: int, cache: str, build_kwargs: dict
) -> tuple:
    """``(labels, feature RMS, collapsed, final LogME, probe, tap LogMEs, tap ids)`` of
    candidate ``c`` (registry entry ``spec``): its final features, then its taps (one
    backbone build for all)."""
    from kerastl.builder import shared_backbones
    from kerastl.core.features import collapsed, feature_rms
    from kerastl.decide._candidates import Candidate
    from kerastl.decide._rank import features_of

    with shared_backbones():
        x, y, _ = features_of(c, examples, input_size, cache, **build_kwargs)
        rms = feature_rms(x)
        is_collapsed = collapsed(x, rms)
        with one_blas_thread():
            final, probe = logme(x, y), linear_probe_accuracy(x, y)
        last = len(spec.taps) - 1 if spec.taps and spec.taps[-1].channels == x.shape[1] else None
        ids = [] if is_collapsed else read_taps(len(spec.taps), last)  # collapsed: none to read
        taps = []
        for k in ids:
            xk, _, _ = features_of(
                Candidate(c.name, c.weights, k), examples, input_size, cache, **build_kwargs
            )
            with one_blas_thread():
                taps.append(logme(xk, y))
    return y, rms, is_collapsed, final, probe, taps, ids


def advise(
    examples: Any,
    backbone: Any,
    weights: str | None = "imagenet",
    input_size: int = 64,
    cache: str = "memory",
    **build_kwargs: Any,
) -> Advice:
    """Measure the data against ``backbone`` and advise a fine-tuning strategy.

    Args:
        examples: Labelled :class:`kerastl.data.Examples`, a data path, or ``(x, y)``.
        backbone: Registry name, optionally with ``@WEIGHTS`` as in ``kerastl rank``
            (``"efficientnet_lite0@random"``); no ``:tapK``: every tap is measured.
        weights: Its weights: ``"imagenet"``, ``"random"`` / ``None`` (random init) or a
            path, as the CLI's ``--weights`` (tags in any case).
        input_size: Side images are resized to.
        cache: ``"memory"`` or ``"disk"`` feature cache.
        **build_kwargs: Passed to :func:`kerastl.build`.

    Raises:
        ConfigError: an unknown backbone or weights, a ``:tapK``, or a backbone of another
            modality than the data.

    Example:
        >>> a = kerastl.advise((x, y), "efficientnet_lite0", input_size=64)  # doctest: +SKIP
        >>> print(a.text())  # doctest: +SKIP
    """
    from kerastl.decide._candidates import Candidate, check_modality, parse_backbone
    from kerastl.decide._rank import as_examples
    from kerastl.zoo import get_spec

    c = backbone if isinstance(backbone, Candidate) else parse_backbone(backbone, weights)
    examples = as_examples(examples)
    check_modality([c], examples.modality, "backbone")
    spec = get_spec(c.name)
    y, rms, is_collapsed, final, probe, taps, ids = _measure(
        c, spec, examples, input_size, cache, build_kwargs
    )
    shots = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    n_groups = len(spec.groups) or 1
    a = decide(
        shots, len(np.unique(y)), probe, taps, final, n_groups, rms if is_collapsed else None, ids
    )
    if shots < 2:
        a.reasons.insert(
            1,
            "a class has 1 label: the probe's cross-validation holds it out with no other "
            "example of its class, so the probe is rough",
        )
    if examples.skipped:
        a.reasons.append(f"skipped {len(examples.skipped)} unreadable file(s) of the data")
    meas = {"backbone": c.label, "shots": shots, "probe": probe, "final_logme": final}
    a.measurements.update(
        {**meas, "tap_logme": taps, "tap_ids": ids, "groups": n_groups, "feature_rms": rms}
    )
    return a


def config_overrides(a: Advice, finetune_epochs: int = 10) -> dict[str, dict[str, Any]]:
    """The run-config sections (``kerastl train``) that carry out advice ``a``.

    Example:
        >>> a = decide(20, 10, 0.5, [0.0, 0.1], 0.5, 5)
        >>> config_overrides(a)["finetune"]
        {'epochs': 10, 'freeze': 'last:2', 'learning_rate': 0.0003}
        >>> config_overrides(decide(3, 10, 0.5, [], 0.5, 5))["finetune"]
        {'epochs': 0}
        >>> config_overrides(decide(20, 10, 1.0, [], 0.2, 5, feature_rms=1e-12))["model"]
        {'freeze': 'none', 'train_batchnorm': True}
    """
    if a.measurements.get("collapsed"):  # no head on frozen features: every layer from the start
        return {
            "model": {"freeze": "none", "train_batchnorm": True},
            "train": {"learning_rate": a.finetune_learning_rate or 1e-3},
            "finetune": {"epochs": 0},
        }
    out: dict[str, dict[str, Any]] = {
        "model": {"freeze": "backbone"},
        "train": {"learning_rate": a.head_learning_rate},
    }
    if a.train_batchnorm:
        out["model"]["train_batchnorm"] = True
    if a.groups == 0:
        out["finetune"] = {"epochs": 0}
    else:
        out["finetune"] = {
            "epochs": finetune_epochs,
            "freeze": a.freeze,
            "learning_rate": a.finetune_learning_rate,
        }
    return out


def resolve_strategy_from(cfg: dict[str, Any]) -> dict[str, Any]:
    """A run config with ``strategy_from: advise`` turned into the advised keys.

    The advice is measured on the config's training data; ``finetune.epochs``
    keeps the user's value when it is set above 0. A config without the key is
    returned unchanged (a copy).

    Example:
        >>> resolve_strategy_from({"model": {"backbone": "resnet50"}})
        {'model': {'backbone': 'resnet50'}}
    """
    import copy

    cfg = copy.deepcopy(cfg)
    how = cfg.pop("strategy_from", None)
    if how is None:
        return cfg
    if how != "advise":
        from kerastl.errors import choice_error

        raise choice_error("strategy_from", how, ["advise"])
    from kerastl.train import validate_config
    from kerastl.train.context import load_examples
    from kerastl.zoo import get_spec

    v = validate_config(copy.deepcopy(cfg))
    train_ex, _ = load_examples(v)
    m = v["model"]
    size = m["input_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    a = advise(train_ex, m["backbone"], m["weights"], size or get_spec(m["backbone"]).input_size)
    epochs = (cfg.get("finetune") or {}).get("epochs") or 10
    for section, values in config_overrides(a, epochs).items():
        cfg.setdefault(section, {}).update(values)
    print(a.text())
    return cfg
