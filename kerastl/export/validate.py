"""Check an exported artifact against the Keras model, in the artifact's runtime.

Tolerances are data (:data:`TOLERANCES`), one entry per ``format/precision``.
Every artifact runs each validation input: the first ones at batch size 1, the rest at a
larger one (proving the batch axis is dynamic), as the Keras reference ran them (with
fewer than one larger batch left, that batch takes the last inputs, some of them run at
batch 1 already); the first input runs once more (determinism: augmentation or dropout
left active in the graph would show here, and in the comparison of every input); the
outputs are compared output by output with the Keras model called with ``training=False``.

``rel_err`` of an output is ``max|artifact - keras| / max(max|keras|, 1e-6)``:
the worst deviation relative to the output's scale.

The float64 referee: float32 arithmetic in a different order (fused kernels,
XNNPACK, onnxruntime) differs from TensorFlow's float32 by rounding alone, and
on an ill-conditioned network (deep, random weights, tiny inputs) that rounding
can exceed ``max_rel_err`` although neither side is wrong. When an output fails
only that bound, the same model is run in float64 (:data:`REFEREE_FACTOR`): the
artifact passes if it is within ``max_rel_err`` of the float64 result, or no
further from it than ``REFEREE_FACTOR`` x Keras' own float32 distance from it
(and Keras' distance is itself below :data:`REFEREE_MAX`). Keras' distance is the larger
of its run on the validation inputs and its runs on the same inputs moved by one float32
rounding step (:func:`rounding_noise`, counted up to ``REFEREE_MAX``): on an
ill-conditioned network one run can under-state its rounding noise several times. The report shows all these figures. A
``max_rel_err`` the caller sets explicitly is applied as given, without referee.

Quantized files (``tflite/dynamic``, ``tflite/int8``) have no elementwise bound; they
must instead (defaults in :data:`TOLERANCES`, each overridable through ``tolerances``):

- agree with the float model's top-1 on at least ``min_agreement`` (90%) of the
  validation examples (classifiers: multi-class, binary, multi-label per label);
- lose at most ``max_metric_drop`` (0.05) accuracy when labels are given (both gates
  let one example differ on a validation set too small for their share: :func:`one_example`);
- keep outputs that vary across inputs: a file whose main output spreads over less
  than ``min_spread`` (10%) of the Keras model's spread across the same inputs has
  collapsed to a constant (judged when Keras' own spread exceeds :data:`SPREAD_FLOOR`),
  whatever the head (softmax, one sigmoid, sigmoid per label, embedding, regression);
- keep a mean cosine similarity of ``min_cosine`` (0.8) with Keras' main output;
- regression outputs, and any other one-value output that is not a class score: differ
  from Keras' by at most ``max_error_ratio`` (0.5) of Keras' own variation across the
  validation inputs (root-mean-square, :func:`error_ratio`), judged when that variation
  exceeds :data:`SPREAD_FLOOR`. Cosine similarity cannot see a one-value output drift
  (it is 1 for any two positive numbers); embeddings keep the cosine and spread gates.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kerastl.errors import ConfigError


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail rule of one ``format/precision``.

    Attributes:
        max_rel_err: Largest relative error of float outputs; ``None`` = report only.
        min_agreement: Smallest top-1 agreement with Keras; ``None`` = report only.
        min_cosine: Smallest mean cosine similarity, example by example, between the
            file's main output and Keras'; ``None`` = report only. The floor that catches
            a quantized file whose outputs no longer follow the model (all zeros, a
            constant) when no agreement can be computed (embeddings, regression).
        determinism_rel_err: Largest difference between two identical calls.
        max_metric_drop: Largest accuracy loss against Keras on labelled validation data
            (classifiers); ``None`` = report only.
        min_spread: Smallest ratio of the file's spread of its main output across the
            validation inputs to Keras' spread (a constant output has 0); ``None`` = off.
        max_error_ratio: Largest root-mean-square difference between the file's main output
            and Keras', over Keras' own variation across the validation inputs
            (:func:`error_ratio`), for regression outputs and other one-value outputs that
            are not class scores, where neither top-1 agreement nor cosine similarity says
            whether the file follows the model; ``None`` = report only.
    """

    max_rel_err: float | None = 1e-4
    min_agreement: float | None = None
    min_cosine: float | None = None
    determinism_rel_err: float = 1e-6
    max_metric_drop: float | None = None
    min_spread: float | None = None
    max_error_ratio: float | None = None


_QUANTIZED = {
    "max_rel_err": None,
    "min_agreement": 0.9,
    "max_metric_drop": 0.05,
    "min_spread": 0.1,
    "min_cosine": 0.8,
    "max_error_ratio": 0.5,
}

#: Declared tolerances, ``"format/precision"`` -> rule. Quantized files are gated on top-1
#: agreement with Keras, accuracy drop (with labels), output spread and cosine similarity;
#: override any of them, e.g. ``{"tflite/int8": {"min_agreement": 0.8}}`` (``None`` = report).
TOLERANCES: dict[str, Tolerance] = {
    "saved_model/float32": Tolerance(max_rel_err=1e-4),
    "onnx/float32": Tolerance(max_rel_err=1e-4),
    "onnx/strings": Tolerance(max_rel_err=1e-4),  # <name>_strings.onnx, tokenizer in the graph
    "tflite/float32": Tolerance(max_rel_err=1e-4),
    "tflite/mediapipe": Tolerance(max_rel_err=1e-4),  # float32 file, probabilities only
    # float16 weights: an error a few times 2**-11 per layer, which reaches 1 % of the
    # largest logit of a small-logit head (a pretrained Lite0 with a 3-class head on 36
    # photos: logits 0.011, cosine 0.999996, same top-1); a broken file is far off on all
    "tflite/float16": Tolerance(
        max_rel_err=5e-2, min_cosine=0.999, min_agreement=0.9, max_metric_drop=0.05
    ),
    "tflite/dynamic": Tolerance(**_QUANTIZED),
    "tflite/int8": Tolerance(**_QUANTIZED),
}

#: Tasks whose main output holds class scores (top-1 agreement applies).
CLASSIFIERS = ("classification", "binary", "multilabel")

#: The spread gate judges a file only when Keras' own output moves by more than this
#: across the validation inputs (a near-constant model may legitimately quantize to one value).
SPREAD_FLOOR = 0.02

#: An artifact may be this many times further from the float64 result than Keras float32 is.
REFEREE_FACTOR = 2.0
#: The referee only rules while Keras float32 itself is within this of float64.
REFEREE_MAX = 1e-2

#: Second batch size used when the validation set is large enough. Any size above 1 shows
#: a dynamic batch axis and batch-independent outputs; activations grow with it
#: (ConvNeXt-B at 224 px: about 140 MB per image), and they set the export's peak memory.
LARGE_BATCH = 4
#: Samples run one by one at batch size 1.
BATCH1_SAMPLES = 4


def tolerance_for(key: str, overrides: dict[str, Any] | None = None) -> Tolerance:
    """The rule for ``"format/precision"``, with user overrides applied.

    Example:
        >>> tolerance_for("tflite/int8", {"tflite/int8": {"min_agreement": 0.9}}).min_agreement
        0.9
    """
    base = TOLERANCES[key]
    extra = (overrides or {}).get(key)
    if not extra:
        return base
    fields = set(Tolerance.__dataclass_fields__)
    bad = sorted(set(extra) - fields)
    if bad:
        raise ConfigError(f"tolerances[{key!r}]: unknown keys {bad}; valid keys: {sorted(fields)}.")
    return Tolerance(**{**asdict(base), **extra})


#: Tolerance fields that are fractions (ratios of agreement, cosine, spread) in [0, 1].
#: Bounded fields and their range (cosine similarity runs from -1 to 1); others are >= 0.
_RANGES = {"min_agreement": (0.0, 1.0), "min_spread": (0.0, 1.0), "min_cosine": (-1.0, 1.0)}


def check_overrides(overrides: dict[str, Any] | None) -> None:
    """Refuse tolerance overrides with unknown keys or values out of range, before any work.

    Each value is a number (``None``: report only, no gate): errors and ratios ``>= 0``,
    ``min_agreement`` and ``min_spread`` in ``[0, 1]``, ``min_cosine`` in ``[-1, 1]``;
    ``determinism_rel_err`` cannot be ``None``.

    Example:
        >>> check_overrides({"tflite/int8": {"min_agreement": 0.8}})
        >>> check_overrides({"tflite/int8": {"min_agreement": 1.5}})
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: tolerances['tflite/int8']['min_agreement']: expected a number in [0, 1] or None (report only), got 1.5.
    """
    from kerastl.errors import choice_error

    if overrides is None:
        return
    if not isinstance(overrides, dict):
        raise ConfigError(
            "tolerances: expected a dict {'format/precision': {field: value}}, e.g. "
            f"{{'tflite/int8': {{'min_agreement': 0.8}}}}; got {type(overrides).__name__}."
        )
    for key, fields in overrides.items():
        if key not in TOLERANCES:
            raise choice_error("tolerances", key, TOLERANCES)
        if not isinstance(fields, dict):
            raise ConfigError(
                f"tolerances[{key!r}]: expected a dict of fields, e.g. {{'max_rel_err': 1e-3}}; "
                f"got {fields!r}."
            )
        tolerance_for(key, overrides)
        for name, value in fields.items():
            _check_value(f"tolerances[{key!r}][{name!r}]", name, value)


def _check_value(where: str, name: str, value: Any) -> None:
    low, high = _RANGES.get(name, (0.0, np.inf))
    number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    ok = number and np.isfinite(value) and low <= value <= high
    if ok or (value is None and name != "determinism_rel_err"):
        return
    valid = f"a number in [{low:g}, {high:g}]" if name in _RANGES else "a finite number >= 0"
    alt = "" if name == "determinism_rel_err" else " or None (report only)"
    raise ConfigError(f"{where}: expected {valid}{alt}, got {value!r}.")


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """``max|out - ref| / max(max|ref|, 1e-6)``; ``inf`` on a shape mismatch."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        return float("inf")
    if out.size == 0:
        return 0.0
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-6))


def top1(values: np.ndarray, task: str | None) -> np.ndarray:
    """Predicted class per example (binary: threshold 0.5; multilabel: per label)."""
    values = np.asarray(values)
    if task == "binary":
        return (values[:, 0] > 0.5).astype(np.int64)
    if task == "multilabel":
        return (values > 0.5).astype(np.int64)
    return np.argmax(values, axis=-1)


def cosine(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean over examples of the cosine similarity of ``out`` and ``ref`` (flattened).

    An example where exactly one side is all zeros scores 0; both all zeros scores 1.

    Example:
        >>> round(cosine(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 1.0]])), 3)
        0.5
    """
    out = np.asarray(out, np.float64).reshape(len(out), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)[: len(out)]
    if out.shape != ref.shape:
        return 0.0
    na, nb = np.linalg.norm(out, axis=1), np.linalg.norm(ref, axis=1)
    dot = np.sum(out * ref, axis=1)
    sims = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))
    return float(np.mean(np.where((na == 0) ^ (nb == 0), 0.0, sims)))


def check_labels(pred: np.ndarray, labels: Any, task: str | None, argument: str) -> None:
    """Raise :class:`DataError` when ``labels`` cannot be scored against ``pred``.

    Example:
        >>> check_labels(np.zeros((4, 2)), np.zeros(4), "regression", "validation_data")
        Traceback (most recent call last):
        ...
        kerastl.errors.DataError: validation_data: the labels have shape (4,) but this regression model's output has shape (4, 2); give labels of shape (4, 2) (or no labels).
        >>> check_labels(np.zeros((3, 4)), np.array([0, 2, 14]), "classification", "labels")
        Traceback (most recent call last):
        ...
        kerastl.errors.DataError: labels: class ids must be in 0..3 (the model has 4 classes), got ids from 0 to 14.
    """
    from kerastl.errors import DataError

    pred, labels = np.asarray(pred), np.asarray(labels)
    if task in ("classification", "binary"):
        ok = labels.size == len(pred) or labels.shape == pred.shape
        want = f"({len(pred)},) (class ids) or {pred.shape} (one-hot)"
    elif task in ("multilabel", "regression"):
        ok = labels.size == pred.size
        want = str(pred.shape)
    else:
        return
    if not ok:
        raise DataError(
            f"{argument}: the labels have shape {labels.shape} but this {task} model's output "
            f"has shape {pred.shape}; give labels of shape {want} (or no labels)."
        )
    if task == "binary" or (task == "classification" and labels.shape != pred.shape):
        # binary labels are ids whatever their shape; multi-class of the output's shape is one-hot
        _check_class_ids(labels.reshape(-1), 2 if task == "binary" else pred.shape[-1], argument)


def _check_class_ids(ids: np.ndarray, n: int, argument: str) -> None:
    """Class-id labels must be integers in ``[0, n)``: anything else scores 0 on both sides."""
    from kerastl.errors import DataError

    whole = ids.dtype.kind in "iub" or (
        ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids))
    )
    if not whole:
        raise DataError(
            f"{argument}: class labels must be integer class ids 0..{n - 1}, got "
            f"{ids.dtype.name} values such as {ids[:3].tolist()} (map class names to ids in the "
            "order of the model's class_names)."
        )
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise DataError(
            f"{argument}: class ids must be in 0..{n - 1} (the model has {n} classes), got "
            f"ids from {int(ids.min())} to {int(ids.max())}."
        )


def _metric(pred: np.ndarray, labels: np.ndarray, task: str | None) -> tuple[str, float] | None:
    """``(name, value)`` of the task's metric on ``labels``; ``None`` when it has none.

    Multi-class labels of the output's shape are one-hot (:func:`check_labels` accepts
    them): they count as their class ids.

    Example:
        >>> pred = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> _metric(pred, np.array([[1, 0], [1, 0], [1, 0]]), "classification")
        ('accuracy', 0.6666666666666666)
    """
    labels, pred = np.asarray(labels), np.asarray(pred)
    if task == "classification" and labels.ndim > 1 and labels.shape == pred.shape:
        labels = np.argmax(labels, axis=-1)
    if task in ("classification", "binary", "multilabel"):
        classes = top1(pred, task)
        labels = labels.reshape(classes.shape) if labels.size == classes.size else labels
        if labels.shape != classes.shape:
            return None
        return "accuracy", float(np.mean(classes == labels))
    if task == "regression":
        return "mae", float(np.mean(np.abs(pred - labels.reshape(pred.shape))))
    return None


#: Relative size of the input perturbation that measures a model's rounding noise: one
#: float32 rounding step (2**-23).
ROUNDING_STEP = 2.0**-23
#: How many perturbed inputs measure it.
NOISE_DRAWS = 2


def rounding_noise(keras_float32, x, truth, names) -> dict[str, float]:
    """How far Keras float32 moves from ``truth`` when ``x`` moves by one rounding step.

    An ill-conditioned network (deep, random BatchNorm statistics) turns a one-ulp change
    of its input into an output change as large as any reordering of its float32
    arithmetic; one Keras run alone can under-state that by several times. Integer
    inputs (token ids) are not perturbed: returns an empty dict.

    Example:
        >>> f = lambda v: {"y": (np.asarray(v, np.float64) * 1e6).astype(np.float32)}
        >>> x = np.ones((2, 3), np.float32)
        >>> noise = rounding_noise(f, x, {"y": np.full((2, 3), 1e6)}, ["y"])
        >>> 0 < noise["y"] < 1e-6
        True
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        return {}
    rng = np.random.default_rng(0)
    noise: dict[str, float] = {}
    for _ in range(NOISE_DRAWS):
        step = rng.standard_normal(x.shape) * ROUNDING_STEP
        out = keras_float32((x * (1 + step)).astype(x.dtype))
        for name in names:
            if name in out and name in truth:
                noise[name] = max(noise.get(name, 0.0), rel_err(out[name], truth[name]))
    return noise


def _referee(exact, keras_float32, x, runs, reference, names, max_rel_err) -> dict:
    """Judge outputs ``names`` against the float64 result (see the module docstring)."""
    try:
        truth = exact(x)
    except Exception as exc:  # noqa: BLE001 - no float64 kernel: the float32 verdict stands
        return {n: {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:200]} for n in names}
    try:
        noise = rounding_noise(keras_float32, x, truth, names) if keras_float32 else {}
    except Exception:  # noqa: BLE001 - no noise figure: the one Keras run stands alone
        noise = {}
    verdicts = {}
    for name in names:
        if name not in truth:
            continue
        keras_err = rel_err(reference[name], truth[name])
        # Keras' float32 distance: the larger of its run and its moved runs, capped where
        # the referee stops ruling (so the noise only ever widens a sane bound).
        floor = max(keras_err, min(noise.get(name, 0.0), REFEREE_MAX))
        art_err = max(
            rel_err(out[name], truth[name][start:stop]) for start, stop, out in runs.values()
        )
        allowed = max(max_rel_err, REFEREE_FACTOR * floor)
        verdicts[name] = {
            "artifact_vs_float64": art_err,
            "keras_vs_float64": keras_err,
            "allowed": allowed,
            # Within the tolerance of the exact result is right whatever Keras' float32
            # does; otherwise the file may be as far off as Keras float32 is, if that is sane.
            "passed": bool(
                art_err <= max_rel_err or (keras_err <= REFEREE_MAX and art_err <= allowed)
            ),
        }
        if name in noise:
            verdicts[name]["keras_perturbed_vs_float64"] = noise[name]
    return verdicts


def validate(
    artifact: Any,
    reference: dict[str, np.ndarray],
    x: np.ndarray,
    key: str,
    task: str | None,
    labels: np.ndarray | None = None,
    overrides: dict[str, Any] | None = None,
    exact: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
    keras_float32: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Compare ``artifact`` with the Keras ``reference`` outputs on inputs ``x``.

    Args:
        artifact: A loaded :class:`~kerastl.export.artifact.Artifact`.
        reference: Keras outputs on ``x`` (name -> array).
        x: Raw inputs.
        key: ``"format/precision"`` naming the tolerance.
        task: The model's task (for agreement and metric).
        labels: True labels of ``x``, for the metric delta.
        overrides: User tolerance overrides.
        exact: ``x -> outputs`` of the model in float64; when given, an output that
            fails the default ``max_rel_err`` is judged by the float64 referee (module
            docstring). A ``max_rel_err`` set in ``overrides`` is applied as given.
        keras_float32: ``x -> outputs`` of the Keras model in float32; when given, the
            referee also measures the model's rounding noise (:func:`rounding_noise`).

    Returns:
        A dict: ``passed``, ``failures``, per-output ``rel_err``, ``batch_sizes``,
        ``deterministic``, ``agreement``, ``metric`` figures, ``tolerance``, and
        ``batch1_ms`` (the wall time of each batch-1 call, the first one included).
    """
    tol = tolerance_for(key, overrides)
    runs, batch1_seconds = _runs(artifact, x)
    failures: list[str] = []
    errors = _output_errors(runs, reference, failures)
    referee: dict[str, dict[str, Any]] = {}
    if tol.max_rel_err is not None:
        explicit = "max_rel_err" in ((overrides or {}).get(key) or {})
        referee = _check_rel_err(
            errors, tol, runs, reference, x, (exact, keras_float32), explicit, failures
        )
    # one batch-1 call again: dropout or augmentation left active changes any call
    again, first = artifact.run(x[:1]), runs[1][2]
    floats = [k for k in again if k in first and np.asarray(again[k]).dtype.kind == "f"]
    det = max((rel_err(again[k], first[k][:1]) for k in floats), default=0.0)
    deterministic = det <= tol.determinism_rel_err
    if not deterministic:
        failures.append(
            f"two identical calls differ (rel {det:.3g}): something random is active in the graph"
        )
    result: dict[str, Any] = {
        "key": key,
        "samples": int(len(x)),
        "batch_sizes": sorted(runs),
        "rel_err": {k: round(v, 9) for k, v in errors.items()},
        "max_rel_err": max(errors.values(), default=0.0),
        "deterministic": deterministic,
        "tolerance": asdict(tol),
        "batch1_ms": [round(t * 1000.0, 3) for t in batch1_seconds],
    }
    if referee:
        result["float64_referee"] = referee
    main, every = next(iter(reference)), _every_input(runs, len(x))
    if main in every:
        _follow_gates(every[main], reference[main], task, labels, tol, result, failures)
    result["failures"] = failures
    result["passed"] = not failures
    return result


def run_in_batches(
    call: Callable[[np.ndarray], dict[str, Any]],
    x: np.ndarray,
    batch_size: int,
    seconds: list[float] | None = None,
) -> dict[str, np.ndarray]:
    """``call`` on ``x`` in chunks of ``batch_size``, outputs as numpy, concatenated by name.

    ``seconds``, when given, receives each call's wall time (its outputs read back as
    numpy included): at batch size 1 those calls after the first double as latency runs
    (:func:`kerastl.export.formats.base.median_ms` takes them as ``done``).

    Example:
        >>> seconds = []
        >>> out = run_in_batches(lambda b: {"y": b * 2}, np.arange(3.0), 1, seconds)
        >>> out["y"].tolist(), len(seconds)
        ([0.0, 2.0, 4.0], 3)
    """
    parts: dict[str, list] = {}
    for i in range(0, len(x), batch_size):
        start = time.perf_counter()
        out = {k: np.asarray(v) for k, v in call(x[i : i + batch_size]).items()}
        if seconds is not None:
            seconds.append(time.perf_counter() - start)
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _runs(artifact: Any, x: np.ndarray) -> tuple[dict[int, tuple[int, int, dict]], list[float]]:
    """The artifact's outputs: batch size -> (first input, end of its inputs, outputs by name).

    The first :data:`BATCH1_SAMPLES` inputs go one by one (their wall times are returned:
    batch-1 latency runs), the rest at :data:`LARGE_BATCH`, as the Keras reference ran
    them; when fewer than one large batch is left, one large batch takes the last inputs,
    some of them run at batch 1 already, so that a batch above 1 is always run.

    Example:
        >>> class Double:
        ...     def run(self, b):
        ...         return {"y": b * 2}
        ...     def run_batched(self, b, size):
        ...         return run_in_batches(self.run, b, size)
        >>> runs, seconds = _runs(Double(), np.arange(8.0))
        >>> {bs: (a, b, out["y"].tolist()) for bs, (a, b, out) in runs.items()}, len(seconds)
        ({1: (0, 4, [0.0, 2.0, 4.0, 6.0]), 4: (4, 8, [8.0, 10.0, 12.0, 14.0])}, 4)
        >>> runs, _ = _runs(Double(), np.arange(6.0))  # too few left: the last 4
        >>> runs[4][:2], _every_input(runs, 6)["y"].tolist()
        ((2, 6), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    """
    n1 = min(len(x), BATCH1_SAMPLES)
    seconds: list[float] = []
    runs = {1: (0, n1, run_in_batches(artifact.run, x[:n1], 1, seconds))}
    big = min(len(x), LARGE_BATCH)
    if big > 1:
        start = n1 if len(x) - n1 >= big else len(x) - big
        runs[big] = (start, len(x), artifact.run_batched(x[start:], big))
    return runs, seconds


def _every_input(runs: dict[int, tuple[int, int, dict]], n: int) -> dict[str, np.ndarray]:
    """One output per input, in input order, from the runs that cover them (outputs with
    the wrong number of rows left out: :func:`_output_errors` fails them)."""
    every: dict[str, list] = {}
    covered = 0
    for start, stop, out in sorted(runs.values(), key=lambda r: r[0]):
        for name, value in out.items():
            every.setdefault(name, []).append(np.asarray(value)[covered - start :])
        covered = max(covered, stop)
    return {k: np.concatenate(v) for k, v in every.items() if sum(map(len, v)) == n}


def _output_errors(runs, reference, failures: list[str]) -> dict[str, float]:
    """Worst ``rel_err`` of every float output over both batch sizes; an output with
    another number of rows than the run had inputs fails, whatever its values."""
    errors: dict[str, float] = {}
    for bs, (start, stop, out) in runs.items():
        missing = sorted(set(reference) - set(out))
        if missing:
            failures.append(f"outputs {missing} missing (artifact has {sorted(out)})")
            continue
        for name, ref in reference.items():
            rows = len(np.asarray(out[name]))
            if rows != stop - start:
                failures.append(f"{name}: {rows} rows for {stop - start} inputs at batch size {bs}")
            elif ref.dtype.kind == "f":
                err = rel_err(out[name], ref[start:stop])
                errors[name] = max(errors.get(name, 0.0), err)
    return errors


def _check_rel_err(errors, tol, runs, reference, x, judges, explicit, failures) -> dict:
    """Apply ``max_rel_err`` (with the float64 referee); returns the referee's verdicts.

    ``judges`` is ``(exact, keras_float32)`` as :func:`validate` takes them.
    """
    referee: dict[str, dict[str, Any]] = {}
    over = [n for n, err in errors.items() if not err <= tol.max_rel_err]
    exact, keras_float32 = judges
    if over and exact is not None and not failures and not explicit:
        referee = _referee(exact, keras_float32, x, runs, reference, over, tol.max_rel_err)
    for name in over:
        verdict = referee.get(name)
        if verdict and verdict["passed"]:
            continue
        line = f"{name}: rel_err {errors[name]:.3g} > {tol.max_rel_err:g}"
        failures.append(line + _referee_words(verdict))
    return referee


def _referee_words(verdict: dict[str, Any] | None) -> str:
    """The referee's figures for a failure line ('' when it did not rule)."""
    if verdict and "artifact_vs_float64" in verdict:
        noise = verdict.get("keras_perturbed_vs_float64")
        moved = "" if noise is None else f", {noise:.3g} on inputs one rounding step away"
        return (
            f" (float64 referee: artifact {verdict['artifact_vs_float64']:.3g} from float64, "
            f"Keras float32 {verdict['keras_vs_float64']:.3g}{moved}; "
            f"allowed {verdict['allowed']:.3g})"
        )
    if verdict and "error" in verdict:
        return f" (the float64 referee could not run the model: {verdict['error']})"
    return ""


def spread(values: np.ndarray) -> float:
    """Largest range of any output unit across the examples (0 for a constant output).

    Example:
        >>> spread(np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]))
        0.4
    """
    v = np.asarray(values, np.float64).reshape(len(values), -1)
    if len(v) < 2 or v.size == 0:
        return 0.0
    return round(float(np.max(v.max(0) - v.min(0))), 12)


def _error_gate(out, ref, keras_spread: float, tol: Tolerance, result: dict, failures) -> None:
    ratio = error_ratio(out, ref)
    result["error_ratio"] = None if np.isnan(ratio) else ratio
    if tol.max_error_ratio is not None and keras_spread > SPREAD_FLOOR:
        if not ratio <= tol.max_error_ratio:
            failures.append(
                f"outputs drift from Keras': their RMS difference is {ratio:.3g} x Keras' own "
                f"variation across the {len(out)} validation inputs (max_error_ratio "
                f"{tol.max_error_ratio})"
            )


def error_ratio(out: np.ndarray, ref: np.ndarray) -> float:
    """RMS of ``out - ref`` over the RMS variation of ``ref`` across examples (per unit).

    0 for a file that matches Keras; 1 when its error is as large as the differences
    between the outputs of different inputs (a file that outputs Keras' mean scores 1).

    Example:
        >>> ref = np.array([[1.0], [2.0], [3.0], [4.0]])
        >>> error_ratio(ref + 0.1, ref), error_ratio(np.full((4, 1), 2.5), ref)
        (0.089443, 1.0)
    """
    out = np.asarray(out, np.float64).reshape(len(out), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)[: len(out)]
    scale = float(np.sqrt(np.mean(np.var(ref, axis=0))))
    if out.shape != ref.shape:
        return float("inf")
    if scale == 0.0:  # Keras' outputs do not vary: no scale to judge by (the gate is off)
        return float("nan")
    return round(float(np.sqrt(np.mean((out - ref) ** 2))) / scale, 6)


def one_example(fraction: float, out: Any) -> float:
    """The share of examples a gate lets differ: ``fraction``, or one example when there are
    too few for ``fraction`` to allow any (one flip in 12 is 0.083, over a 0.05 limit).

    Example:
        >>> round(one_example(0.05, np.zeros((12, 3))), 4), one_example(0.05, np.zeros((40, 3)))
        (0.0833, 0.05)
        >>> round(one_example(0.1, np.zeros((4, 5))), 4)  # 4 examples
        0.25
    """
    n = len(out)
    return max(fraction, (1.0 + 1e-9) / n) if n else fraction


def _follow_gates(out, ref, task, labels, tol: Tolerance, result: dict, failures: list) -> None:
    """Gates that say whether the file's main output still follows the model's."""
    if np.asarray(out).dtype.kind != "f":
        return
    cos = cosine(out, ref)
    result["cosine"] = round(cos, 6)
    if tol.min_cosine is not None and not cos >= tol.min_cosine:
        failures.append(
            f"mean cosine similarity with Keras {cos:.3f} < {tol.min_cosine} "
            "(the file's outputs no longer follow the model's)"
        )
    ours, keras_spread = spread(out), spread(ref)
    result["spread"] = {"artifact": ours, "keras": keras_spread}
    if (
        tol.min_spread is not None
        and keras_spread > SPREAD_FLOOR
        and not ours >= tol.min_spread * keras_spread
    ):
        failures.append(
            f"outputs collapsed: they vary by {ours:.3g} across the {len(out)} validation "
            f"inputs where Keras' vary by {keras_spread:.3g} (min_spread {tol.min_spread})"
        )
    one_unit = np.asarray(out).reshape(len(out), -1).shape[1] == 1
    if task == "regression" or (task not in CLASSIFIERS and one_unit):
        _error_gate(out, ref, keras_spread, tol, result, failures)
    if task in CLASSIFIERS:
        agree = float(np.mean(top1(out, task) == top1(ref, task)))
        result["agreement"] = agree
        if tol.min_agreement is not None and 1 - agree > one_example(1 - tol.min_agreement, out):
            failures.append(
                f"top-1 agreement with Keras {agree:.3f} < {tol.min_agreement} "
                f"(one of {len(out)} examples may differ)"
            )
    if labels is None:
        return
    mine, keras_ = _metric(out, labels, task), _metric(ref, labels, task)
    if not (mine and keras_):
        return
    result["metric"] = {
        "name": mine[0],
        "keras": keras_[1],
        "artifact": mine[1],
        "delta": mine[1] - keras_[1],
    }
    drop = keras_[1] - mine[1]
    limit = tol.max_metric_drop
    if mine[0] == "accuracy" and limit is not None and drop > one_example(limit, out):
        failures.append(
            f"accuracy {mine[1]:.3f} vs Keras {keras_[1]:.3f}: drop {drop:.3f} > "
            f"max_metric_drop {limit} (one of {len(out)} examples may differ)"
        )
