"""Few-shot and zero-shot classification with class prototypes.

A prototype classifier needs no gradient training: each class is the mean of
its support examples' L2-normalised embeddings, and an input's logits are its
cosine similarity to each prototype divided by a temperature. A class can be
added from a few examples (:func:`add_class`) without changing the logits of the
other classes. For sentence-embedding text backbones (MiniLM and the other
sentence-transformer entries) prototypes can also come from class names or short
descriptions (zero-shot), and later examples move them (:func:`add_examples`).

The head is :class:`PrototypeHead`, a serialisable Keras layer named ``logits``.
Its only weight used at inference is ``logits/prototypes`` (see
:data:`PROTOTYPE_WEIGHT`): a ``(num_classes, dim)`` float32 matrix whose rows
are the unit prototypes multiplied by ``1 / temperature``. The model computes
``logits = unit(embedding) @ prototypes.T`` and ``probabilities =
softmax(logits)``, so an on-device user can replace that one tensor (rows from
:func:`prototype_rows`) to change or re-order classes.

Example:
    >>> import numpy as np
    >>> rows = prototype_rows(np.array([[3.0, 4.0], [0.0, 2.0]]), np.array([1, 1]), 0.1)
    >>> np.round(rows, 3).tolist()
    [[6.0, 8.0], [0.0, 10.0]]
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kerastl.core.heads import PrototypeHead, check_temperature
from kerastl.core.meta import ModelMeta
from kerastl.errors import ConfigError, DataError, check_positive_int, choice_error

#: Path of the prototype tensor in the Keras model (``layer/weight``).
PROTOTYPE_WEIGHT = "logits/prototypes"
#: ``task=`` spellings that :func:`kerastl.build` sends here.
PROTOTYPE_TASKS = ("prototypes", "prototype", "few_shot", "fewshot", "zero_shot")


def prototype_rows(sums: np.ndarray, counts: np.ndarray, temperature: float) -> np.ndarray:
    """The ``prototypes`` tensor from per-class sums of unit embeddings.

    Rows of classes with no support (count 0) stay zero (logit 0 for every input).

    Example:
        >>> prototype_rows(np.array([[0.0, 2.0]]), np.array([2]), 0.5).tolist()
        [[0.0, 2.0]]
    """
    sums = np.asarray(sums, dtype="float64")
    norms = np.linalg.norm(sums, axis=-1, keepdims=True)
    unit = np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0)
    unit[np.asarray(counts) <= 0] = 0.0
    return (unit / float(temperature)).astype("float32")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise each row (zero rows stay zero).

    Example:
        >>> unit_rows(np.array([[3.0, 4.0]])).tolist()
        [[0.6, 0.8]]
    """
    x = np.asarray(x, dtype="float64")
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def head_of(model: keras.Model) -> PrototypeHead:
    """The :class:`PrototypeHead` of ``model``, else a :class:`ConfigError`."""
    try:
        head = model.get_layer("logits")
    except ValueError:
        head = None
    if not isinstance(head, PrototypeHead):
        raise ConfigError(
            "model: expected a prototype model (built with task='prototypes'), whose layer "
            f"'logits' is a PrototypeHead; got {type(head).__name__ if head else 'no such layer'}."
        )
    return head


def embedder(model: keras.Model) -> keras.Model:
    """The sub-model from ``model``'s raw input to the embedding its head compares."""
    from kerastl.core.model import KerastlModel

    head = model.get_layer("logits")
    return KerastlModel(model.inputs, head.input, name=f"{model.name}_embedder")


def features(model: keras.Model, x: Any, batch_size: int = 32, argument: str = "x") -> np.ndarray:
    """Raw pooled features of inputs ``x`` (images 0-255 or strings), before centring.

    ``argument`` is the caller's name for ``x``, named by the error for bad inputs.
    """
    from kerastl.core.model import _strings_as_objects

    x = _strings_as_objects(x)
    check_support(model, x, argument)
    return np.asarray(embedder(model).predict(x, batch_size=batch_size, verbose=0), "float64")


def check_support(model: keras.Model, x: Any, argument: str = "x") -> None:
    """Refuse examples that are none or whose shape or kind does not fit ``model``'s input.

    Images must be ``(N, *input shape)`` numbers, text a 1-D batch of strings; the
    error names ``argument`` (the caller's name for ``x``: ``support``, ``examples``,
    ``x``), the shape received and the shape expected.

    Example:
        >>> check_support(model, np.zeros((4, 64, 64)), "support")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        kerastl.errors.DataError: support: expected examples of shape (N, 64, 64, 3) ...
    """
    if len(x) == 0:
        raise DataError(f"{argument}: got no examples to embed.")
    arr = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=object if _texts(x) else None)
    want = tuple(model.input_shape[1:])
    strings = arr.dtype.kind in "US" or (arr.dtype.kind == "O" and _texts(arr.ravel()[:1]))
    text = ModelMeta.of(model).modality == "text"
    fits = len(arr.shape) == len(want) + 1 and all(
        w is None or w == g for w, g in zip(want, arr.shape[1:])
    )
    if fits and strings == text:
        return
    expected = "(N,) strings" if text else f"(N, {', '.join(map(str, want))}) numbers"
    got = f"{'strings' if strings else arr.dtype} of shape {arr.shape}"
    hint = ""
    if not text and len(want) == 3 and want[-1] == 3 and tuple(arr.shape[1:]) == want[:2]:
        hint = " For grey images repeat them to RGB: np.repeat(x[..., None], 3, axis=-1)."
    raise DataError(
        f"{argument}: expected examples of shape {expected} (this model's input "
        f"{ModelMeta.of(model).input.get('name', 'input')!r}), got {got}.{hint}"
    )


def _texts(x: Any) -> bool:
    return len(x) > 0 and all(isinstance(v, str) for v in list(x)[:8])


def embed(model: keras.Model, x: Any, batch_size: int = 32, argument: str = "x") -> np.ndarray:
    """What the head compares: ``unit(features - center)`` of raw inputs ``x``, float64.

    With a whitening head, ``unit((unit(features - center) - shift) @ whitening)``.
    ``argument`` is the caller's name for ``x``, named by the error for bad inputs.

    Example:
        >>> e = embed(model, images)  # doctest: +SKIP
    """
    return transformed(head_of(model), features(model, x, batch_size, argument))


def transformed(head: PrototypeHead, raw: np.ndarray) -> np.ndarray:
    """The head's transform of raw features, in float64 (what its prototypes average)."""
    e = unit_rows(np.asarray(raw, "float64") - np.asarray(head.center, "float64"))
    if head.whiten:
        shift = np.asarray(head.shift, "float64")
        e = unit_rows((e - shift) @ np.asarray(head.whitening, "float64"))
    return e


#: Shrinkages ``shrinkage="auto"`` chooses from (None: Ledoit-Wolf's estimate).
SHRINKAGE_GRID = (None, 0.5, 0.8, 1.0)


def whitening(
    e: np.ndarray, ids: np.ndarray, shrinkage: float | str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, matrix)`` that centre and whiten unit embeddings ``e`` of classes ``ids``.

    ``shift`` is the mean embedding; ``matrix`` is ``C^(-1/2)`` of the pooled
    within-class covariance ``C`` of ``e``, shrunk towards a multiple of the
    identity by Ledoit-Wolf's estimate (``shrinkage=None``), by ``shrinkage``
    in [0, 1] (1: centring only), or by the value of :data:`SHRINKAGE_GRID`
    that classifies ``e`` best when each example is left out in turn
    (``"auto"``, :func:`choose_shrinkage`). With one example per class there is
    no within-class spread and the matrix is the identity.

    Example:
        >>> e = unit_rows(np.array([[1.0, 0.1], [1.0, 0.3], [0.1, 1.0], [0.3, 1.0]]))
        >>> shift, m = whitening(e, np.array([0, 0, 1, 1]), shrinkage=1.0)
        >>> np.round(shift, 3).tolist(), np.allclose(m, np.eye(2) * m[0, 0])
        ([0.585, 0.585], True)
    """
    e, ids = np.asarray(e, "float64"), np.asarray(ids)
    if isinstance(shrinkage, str) and shrinkage == "auto":
        shrinkage = choose_shrinkage(e, ids)
    elif shrinkage is not None and (
        isinstance(shrinkage, str) or not 0.0 <= float(shrinkage) <= 1.0
    ):
        raise ConfigError(
            f"shrinkage: expected None, 'auto' or a number in [0, 1], got {shrinkage!r}."
        )
    shift, low_rank = _whitener(e, ids, shrinkage)
    if low_rank is None:
        return shift, np.eye(e.shape[1])
    scale, vt, coef = low_rank
    return shift, scale * np.eye(e.shape[1]) + (vt.T * coef) @ vt


def _whitener(e: np.ndarray, ids: np.ndarray, shrinkage: float | None) -> tuple[Any, Any]:
    """``shift`` and ``(scale, vt, coef)``: the matrix is ``scale * I + vt.T @ diag(coef) @ vt``.

    The pooled residuals ``r`` (n x d, n << d) span at most n directions, so the
    shrunk covariance ``(1 - a) r'r / n + a mu I`` is diagonalised by the SVD of
    ``r``; ``None`` instead of the triple: the identity (no within-class spread).
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    classes = np.unique(ids)
    r = np.concatenate([e[ids == c] - e[ids == c].mean(0) for c in classes])
    if len(r) <= len(classes) or not np.any(r):
        return e.mean(0), None
    n, d = r.shape
    a = ledoit_wolf_shrinkage(r, assume_centered=True) if shrinkage is None else shrinkage
    _, sv, vt = np.linalg.svd(r, full_matrices=False)
    mu = float((sv**2).sum()) / (n * d)
    floor = 1e-12 * mu
    scale = max(a * mu, floor) ** -0.5
    coef = np.maximum((1.0 - a) * sv**2 / n + a * mu, floor) ** -0.5 - scale
    root = np.sqrt(mu)  # scale free (the head renormalises); ~unit size
    return e.mean(0), (scale * root, vt, coef * root)


def choose_shrinkage(e: np.ndarray, ids: np.ndarray) -> float | None:
    """The :data:`SHRINKAGE_GRID` value whose whitened prototypes classify ``e`` best.

    Each example is left out in turn (over :data:`LEAVE_ONE_OUT_MAX` examples: each
    of :data:`FOLDS` folds, example ``i`` in fold ``i % FOLDS``), the transform and
    prototypes are fitted on the rest, and the left-out examples are classified;
    ties go to the stronger shrinkage (the simpler transform). One example per class
    leaves nothing to compare: 1.0.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> e = unit_rows(rng.normal(size=(12, 5)) + np.repeat(np.eye(5)[:3] * 3, 4, 0))
        >>> choose_shrinkage(e, np.repeat([0, 1, 2], 4)) in SHRINKAGE_GRID
        True
    """
    e, ids = np.asarray(e, "float64"), np.asarray(ids)
    folds = np.arange(len(e)) % (FOLDS if len(e) > LEAVE_ONE_OUT_MAX else max(len(e), 1))
    scores = [
        (_held_out_correct(e, ids, a, folds), a if a is not None else -1.0, a)
        for a in SHRINKAGE_GRID
    ]
    return max(scores, key=lambda t: t[:2])[2]


#: Supports up to this size are scored leaving one example out at a time.
LEAVE_ONE_OUT_MAX = 200
#: Folds of a larger support.
FOLDS = 5


def _held_out_correct(
    e: np.ndarray, ids: np.ndarray, shrinkage: float | None, folds: np.ndarray
) -> int:
    """How many examples the prototypes fitted on the other folds classify right."""
    correct = 0
    for fold in np.unique(folds):
        rest, out = folds != fold, folds == fold
        shift, low_rank = _whitener(e[rest], ids[rest], shrinkage)
        x = e - shift
        if low_rank is not None:
            scale, vt, coef = low_rank
            x = scale * x + ((x @ vt.T) * coef) @ vt
        x = unit_rows(x)
        classes = np.unique(ids[rest])
        protos = unit_rows(np.stack([x[rest][ids[rest] == c].sum(0) for c in classes]))
        correct += int(np.sum(classes[np.argmax(x[out] @ protos.T, axis=1)] == ids[out]))
    return correct


def _class_ids(y: Any, class_names: list[str]) -> np.ndarray:
    """Integer ids of labels given as ids or names."""
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        bad = sorted({int(v) for v in y if not 0 <= int(v) < len(class_names)})
        if bad:
            raise DataError(
                f"support: label ids {bad} are outside 0..{len(class_names) - 1} "
                f"for classes {class_names!r}."
            )
        return y.astype("int64")
    index = {n: i for i, n in enumerate(class_names)}
    ids = []
    for v in y.tolist():
        if str(v) not in index:
            raise choice_error("support labels", v, class_names, cls=DataError)
        ids.append(index[str(v)])
    return np.asarray(ids, dtype="int64")


def _write(head: PrototypeHead, sums: np.ndarray, counts: np.ndarray, touched: Any = None) -> None:
    """Store sums and counts; recompute the prototype rows of ``touched`` classes only.

    Other rows are kept bit for bit, so their logits cannot change.
    """
    rows, _, _, *rest = head.get_weights()
    rows = np.array(rows, dtype="float32")
    if rows.shape != np.shape(sums):
        rows = np.zeros(np.shape(sums), "float32")
    touched = np.arange(len(counts)) if touched is None else np.unique(touched)
    rows[touched] = prototype_rows(
        np.asarray(sums)[touched], np.asarray(counts)[touched], head.temperature
    )
    head.set_weights(
        [
            rows,
            np.asarray(sums, "float32"),
            np.asarray(counts, "float32"),
            *rest,
        ]
    )


def add_examples(
    model: keras.Model, x: Any, y: Any, batch_size: int = 32, weight: float = 1.0
) -> keras.Model:
    """Move the prototypes of existing classes with labelled examples, in place.

    Each prototype is the mean of all unit embeddings given to its class so far
    (a class description counts as ``description_weight`` examples).

    Args:
        model: A prototype model.
        x: Raw inputs (images or strings).
        y: Their labels, as class ids or class names.
        batch_size: Inference batch.
        weight: How many examples each of these counts as.

    Returns:
        ``model`` (updated in place).

    Example:
        >>> add_examples(model, ["a new sentence"], ["sport"])  # doctest: +SKIP
    """
    return _add_examples(model, x, y, batch_size, weight, "x")


def _add_examples(
    model: keras.Model, x: Any, y: Any, batch_size: int, weight: float, argument: str
) -> keras.Model:
    """:func:`add_examples`; errors name ``argument``, the caller's name for ``x``."""
    head = head_of(model)
    names = list(ModelMeta.of(model).class_names or [])
    ids = _class_ids(y, names)
    if len(ids) != len(x):
        raise DataError(f"{argument}: {len(x)} examples but {len(ids)} labels.")
    e = embed(model, x, batch_size, argument)
    _, sums, counts = (np.asarray(w, "float64") for w in head.get_weights()[:3])
    np.add.at(sums, ids, e * weight)
    np.add.at(counts, ids, weight)
    _write(head, sums, counts, ids)
    return model


def _new_head_model(model: keras.Model, num_classes: int, class_names: list[str]) -> keras.Model:
    from kerastl.core.model import KerastlModel

    old = head_of(model)
    head = PrototypeHead(num_classes, old.temperature, whiten=old.whiten, name="logits")
    logits = head(old.input)
    out = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    config = dict(model.kerastl_config, class_names=class_names, num_outputs=num_classes)
    new = KerastlModel(model.inputs, out, name=model.name, kerastl_config=config)
    _compile(new)
    return new


def add_class(
    model: keras.Model,
    name: str,
    examples: Any = None,
    description: str | None = None,
    batch_size: int = 32,
) -> keras.Model:
    """A model with one more class, from a few examples and/or a text description.

    The other classes' prototype rows are copied unchanged, so their logits on
    any input are exactly what they were. The returned model shares the backbone
    with ``model`` (no copy of the weights); ``model`` itself is left as it was.

    Args:
        model: A prototype model.
        name: The new class's name (must be new).
        examples: Raw inputs of the new class (k >= 1), or None.
        description: For text backbones, a class description (zero-shot), or None.
        batch_size: Inference batch.

    Returns:
        A new prototype model with ``num_classes + 1`` outputs; the new class is last.

    Example:
        >>> bigger = add_class(model, "hail", examples=["hail hit the car"])  # doctest: +SKIP
    """
    head = head_of(model)
    names = list(ModelMeta.of(model).class_names or [])
    _check_new_name(name, names)
    if examples is None and description is None:
        raise ConfigError("examples: add_class needs examples=, description= or both; got neither.")
    rows, sums, counts, *rest = head.get_weights()  # rest: centre (and whitening), kept
    new = _new_head_model(model, len(names) + 1, names + [name])
    zero = np.zeros((1, rows.shape[1]), "float32")
    head_of(new).set_weights(
        [np.vstack([rows, zero]), np.vstack([sums, zero]), np.append(counts, 0.0), *rest]
    )
    weight = float((ModelMeta.of(model).prototypes or {}).get("description_weight", 1.0))
    if description is not None:
        text = _check_text(new, description)
        _add_examples(new, [text], [name], batch_size, weight, "description")
    if examples is not None:
        _add_examples(new, examples, [name] * len(examples), batch_size, 1.0, "examples")
    return new


def _check_new_name(name: Any, names: list[str]) -> None:
    """Refuse a class name that is not a string, is empty or is taken."""
    if not isinstance(name, str):
        hint = ""
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            hint = f" (integer labels are named 'class_<id>': name='class_{int(name)}'?)"
        raise ConfigError(
            f"name: class names must be strings, got {type(name).__name__} {name!r}{hint}. "
            f"The model's classes: {names!r}."
        )
    if not name or name in names:
        raise ConfigError(f"name: expected a new class name (not one of {names!r}), got {name!r}.")


def _check_text(model: keras.Model, text: Any) -> str:
    if ModelMeta.of(model).modality != "text":
        raise ConfigError(
            "class_descriptions: descriptions are embedded by the model itself, so they need a "
            f"text backbone; this model's modality is {ModelMeta.of(model).modality!r}. "
            "For ImageNet backbones see kerastl.build(..., pretrained_head=True)."
        )
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"class_descriptions: expected a non-empty string, got {text!r}.")
    return text


def _compile(model: keras.Model) -> None:
    from kerastl.core.heads import compile_for_task

    compile_for_task(model)


def _resolve_classes(
    support: Any,
    class_names: Sequence[str] | None,
    class_descriptions: Any,
    num_classes: int | None = None,
) -> list[str]:
    """The class names of a new prototype model, checked against ``num_classes``."""
    if num_classes is not None:
        check_positive_int("num_classes", num_classes)
    names = _class_list(support, class_names, class_descriptions, num_classes)
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"class_names: expected unique names, got {names!r}.")
    if num_classes is not None and num_classes != len(names):
        given = "class_descriptions" if class_descriptions is not None else "class_names"
        given = (
            given if class_names is not None or class_descriptions is not None else "support labels"
        )
        raise ConfigError(
            f"num_classes: got num_classes={num_classes}, but {given} give {len(names)} "
            f"classes {names!r}; they must agree (or leave num_classes unset)."
        )
    return names


def _class_list(
    support: Any, class_names: Any, class_descriptions: Any, num_classes: int | None
) -> list[str]:
    if class_descriptions is not None and len(class_descriptions) == 0:
        raise ConfigError(
            f"class_descriptions: got an empty {type(class_descriptions).__name__}; give one "
            "description per class ({name: description}, or a list with class_names=)."
        )
    if isinstance(class_descriptions, dict):
        names = [str(k) for k in class_descriptions]
        if class_names is not None and list(map(str, class_names)) != names:
            raise ConfigError(
                f"class_names: {list(class_names)!r} disagree with the keys of "
                f"class_descriptions {names!r}; give one of them."
            )
        return names
    if class_names is not None:
        return [str(c) for c in class_names]
    if support is not None and np.asarray(support[1]).dtype.kind not in "iu":
        return sorted({str(v) for v in np.asarray(support[1]).tolist()})
    if support is not None:
        return _id_names(support[1], num_classes)
    if class_descriptions is not None:
        raise ConfigError("class_names: a list of class_descriptions needs class_names.")
    raise ConfigError(
        "support: a prototype model needs support=(x, y), class_descriptions=, or "
        "class_names (empty prototypes to fill with add_examples); got none of them."
    )


def _id_names(y: Any, num_classes: int | None) -> list[str]:
    """``class_0 ... class_{n-1}`` for integer labels; refuses ids that would be empty classes."""
    ids = sorted({int(v) for v in np.asarray(y).ravel().tolist()})
    if not ids:
        raise DataError("support: got no labels.")
    if ids[0] < 0:
        raise DataError(f"support: label ids must be >= 0, got {ids[0]} (labels {ids}).")
    n = ids[-1] + 1 if num_classes is None else num_classes
    if ids[-1] >= n:
        raise ConfigError(
            f"num_classes: got num_classes={n}, but the support labels include ids "
            f"{[i for i in ids if i >= n]} (ids run 0..{n - 1})."
        )
    missing = sorted(set(range(n)) - set(ids))
    if missing and num_classes is None:
        raise DataError(
            f"support: the label ids are {ids}, so the model would have {n} classes "
            f"(ids 0..{n - 1}) and ids {missing} would have no examples (empty prototypes). "
            f"Relabel them 0..{len(ids) - 1}, give labels as names, or pass num_classes={n} "
            f"or class_names (one per id 0..{n - 1}) to keep the empty classes."
        )
    return [f"class_{i}" for i in range(n)]


def build_prototypes(
    name: str,
    support: tuple[Any, Any] | None = None,
    class_names: Sequence[str] | None = None,
    class_descriptions: Sequence[str] | dict[str, str] | None = None,
    weights: Any = None,
    input_shape: Any = None,
    temperature: float = 0.1,
    pooling: str = "avg",
    description_weight: float = 1.0,
    batch_size: int = 32,
    center: bool = False,
    whiten: bool = False,
    shrinkage: float | str | None = None,
    num_classes: int | None = None,
    **adapter_kwargs: Any,
) -> keras.Model:
    """A prototype classifier on a registry backbone, built from data without training.

    Also reached as ``kerastl.build(name, task="prototypes", ...)``.

    Args:
        name: Registry backbone (``"efficientnet_lite0"``, ``"all_minilm_l6_v2_en"``).
        support: ``(x, y)``: raw examples and their labels (ids or names), or None.
        class_names: Class names (order of the outputs).
        class_descriptions: Text backbones: one description per class (a list in the
            order of ``class_names``, or a ``{name: description}`` dict). Each becomes
            the class's starting prototype (zero-shot).
        weights: Pretrained weights of the backbone (``"imagenet"``, a preset folder).
        input_shape: Image size or the text options' defaults.
        temperature: Softmax temperature of the cosine similarities.
        pooling: How the backbone output is pooled into one embedding.
        description_weight: How many examples one description counts as.
        batch_size: Inference batch used to embed the support set.
        center: Centre embeddings on the mean support feature before normalising (SimpleShot;
            only when built from ``support`` without descriptions; the centre then stays
            fixed, so :func:`add_class` cannot change other classes' logits). Off by default:
            on the digits benchmark it helped at 1 shot and hurt at 5 and 10 (bench/RESULTS.md).
        whiten: Centre the unit embeddings on the support's mean and whiten them
            with the support's pooled within-class covariance (see
            :func:`whitening`), estimated once here and then fixed (so
            :func:`add_class` cannot change other classes' logits). Only when built
            from ``support`` without descriptions; otherwise the transform stays the
            identity. Off by default; with ``shrinkage="auto"`` it is the setting
            that matched or beat a trained linear head on bench/fewshot.py's image
            and text tasks (bench/RESULTS.md).
        shrinkage: Covariance shrinkage for ``whiten``: None (Ledoit-Wolf's
            estimate), a number in [0, 1] (1: centring only, no whitening), or
            ``"auto"``: the value of :data:`SHRINKAGE_GRID` that classifies the
            support best with each example left out (:func:`choose_shrinkage`),
            chosen again whenever the transform is re-estimated.
        num_classes: Must agree with the names; keeps label ids without examples (empty).
        **adapter_kwargs: Source options (``sequence_length`` for text).

    Returns:
        A compiled :class:`kerastl.KerastlModel` with a frozen backbone, outputs
        ``probabilities`` (softmax over ``logits``, the :class:`PrototypeHead`).

    Example:
        >>> import numpy as np, kerastl
        >>> x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
        >>> m = kerastl.build("mobilenet_v3_small", task="prototypes", input_shape=(64, 64, 3),
        ...                   support=(x, ["a", "a", "b", "b"]))
        >>> m.kerastl_config["class_names"], m.output_shape
        (['a', 'b'], (None, 2))
    """
    from kerastl.zoo import get_adapter, get_spec

    spec, adapter = get_spec(name), get_adapter(name)
    adapter.check_options(adapter_kwargs, PROTOTYPE_ARGUMENTS, "build_prototypes()")
    check_temperature(temperature)
    names = _resolve_classes(support, class_names, class_descriptions, num_classes)
    shape = adapter.resolve_input_shape(input_shape, **adapter_kwargs)
    config = _config(spec, adapter, shape, names, weights, pooling, temperature, description_weight)
    if whiten and shrinkage is not None:
        whitening(np.eye(2), np.arange(2), shrinkage)  # checks the value before any work
    config["prototypes"]["whiten"] = {"on": bool(whiten), "shrinkage": shrinkage}
    model = _prototype_model(adapter, shape, weights, pooling, config, whiten)
    _fill(model, names, support, class_descriptions, description_weight, batch_size, center)
    return model


def _prototype_model(
    adapter: Any, shape: tuple, weights: Any, pooling: str, config: dict, whiten: bool
) -> keras.Model:
    """The compiled prototype model (frozen backbone, empty prototypes)."""
    from kerastl.core.model import KerastlModel
    from kerastl.freeze import apply_policy

    inputs = adapter.make_inputs(shape)
    x = adapter.preprocess(inputs, shape)  # before the backbone, which attaches the tokenizer
    features = adapter.backbone(shape, weights)(x)
    pooled = adapter.pooled(features, pooling)
    temperature = config["prototypes"]["temperature"]
    logits = PrototypeHead(len(config["class_names"]), temperature, whiten=whiten, name="logits")(
        pooled
    )
    out = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    name = f"{adapter.spec.name}_prototypes"
    model = KerastlModel(inputs, out, name=name, kerastl_config=config)
    apply_policy(model, "backbone")
    _compile(model)
    return model


#: The keyword arguments of :func:`build_prototypes` itself (the rest go to the adapter).
PROTOTYPE_ARGUMENTS = tuple(inspect.signature(build_prototypes).parameters)[1:-1]


def _config(
    spec: Any,
    adapter: Any,
    shape: tuple,
    names: list[str],
    weights: Any,
    pooling: str,
    temperature: float,
    description_weight: float,
) -> dict[str, Any]:
    """The ``kerastl_config`` of a prototype model (a classifier with a prototype head)."""
    from kerastl import __version__

    return {
        "kerastl_version": __version__,
        "backbone": spec.name,
        "source": spec.source,
        "modality": spec.modality,
        "task": "classification",
        "head": "prototypes",
        "num_outputs": len(names),
        "class_names": names,
        "input": adapter.input_spec(shape),
        "output": "probabilities",
        "preprocessing": spec.preprocessing,
        "weights": weights if weights is None or isinstance(weights, str) else str(weights),
        "pooling": pooling,
        "dropout": 0.0,
        "prototypes": {
            "weight": PROTOTYPE_WEIGHT,
            "temperature": float(temperature),
            "description_weight": float(description_weight),
            "logits": "cosine(unit(embedding), prototype) / temperature",
        },
    }


def _fill(
    model: keras.Model,
    names: list[str],
    support: Any,
    class_descriptions: Any,
    description_weight: float,
    batch_size: int,
    center: bool,
) -> None:
    from kerastl.core.model import _strings_as_objects

    if class_descriptions is not None:
        texts = (
            [class_descriptions[n] for n in names]
            if isinstance(class_descriptions, dict)
            else list(class_descriptions)
        )
        if len(texts) != len(names):
            raise ConfigError(
                f"class_descriptions: {len(texts)} descriptions for {len(names)} classes "
                f"{names!r}; give one per class."
            )
        texts = [_check_text(model, t) for t in texts]
        ids = np.arange(len(names))
        _add_examples(model, texts, ids, batch_size, description_weight, "class_descriptions")
    if support is not None:
        if not isinstance(support, (tuple, list)) or len(support) != 2:
            raise ConfigError(f"support: expected (x, y), got {type(support).__name__}.")
        check_support(model, _strings_as_objects(support[0]), "support")  # before set_center
        if center and class_descriptions is None:
            set_center(model, support[0], batch_size)
        if head_of(model).whiten and class_descriptions is None:
            set_whitening(model, support[0], support[1], batch_size)
        _add_examples(model, support[0], support[1], batch_size, 1.0, "support")


def set_center(model: keras.Model, x: Any = None, batch_size: int = 32) -> np.ndarray:
    """Set the head's centre to the mean feature of inputs ``x`` (None: no centring).

    Changes every logit: call it before adding prototypes (:func:`refit` does).
    """
    head = head_of(model)
    weights = head.get_weights()
    dim = weights[3].shape[0]
    center = np.zeros(dim) if x is None else features(model, x, batch_size).mean(0)
    weights[3] = np.asarray(center, "float32")
    head.set_weights(weights)
    return center


def set_whitening(
    model: keras.Model, x: Any = None, y: Any = None, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Set a whitening head's ``shift`` and ``whitening`` from labelled inputs (None: identity).

    Uses the model's ``shrinkage`` (kerastl_config). Changes every logit: call it
    before adding prototypes (:func:`refit` does).

    Example:
        >>> shift, matrix = set_whitening(model, images, labels)  # doctest: +SKIP
    """
    head = head_of(model)
    if not head.whiten:
        raise ConfigError("model: its prototype head was built without whiten=True.")
    weights = head.get_weights()
    dim = weights[3].shape[0]
    shift, matrix = np.zeros(dim), np.eye(dim)
    if x is not None:
        names = list(ModelMeta.of(model).class_names or [])
        ids = _class_ids(y, names)
        options = (ModelMeta.of(model).prototypes or {}).get("whiten") or {}
        e = unit_rows(features(model, x, batch_size) - weights[3].astype("float64"))
        shift, matrix = whitening(e, ids, options.get("shrinkage"))
    head.set_weights([*weights[:4], np.asarray(shift, "float32"), np.asarray(matrix, "float32")])
    return shift, matrix


def refit(
    model: keras.Model, x: Any, y: Any, batch_size: int = 32, center: bool = False
) -> keras.Model:
    """Recompute every prototype (and the centre if ``center``) from ``(x, y)``, in place.

    A whitening head (``whiten=True``) also re-estimates its transform from ``(x, y)``.

    Class descriptions given before are dropped.

    Example:
        >>> refit(model, images, labels)  # doctest: +SKIP
    """
    head = head_of(model)
    set_center(model, x if center else None, batch_size)
    if head.whiten:
        set_whitening(model, x, y, batch_size)
    _write(head, np.zeros(head.prototypes.shape), np.zeros(head.num_classes))
    return add_examples(model, x, y, batch_size)


def finetune(
    model: keras.Model,
    x: Any,
    y: Any,
    epochs: int = 3,
    learning_rate: float = 1e-4,
    freeze: Any = "none",
    batch_size: int = 32,
    temperature: float = 0.1,
) -> dict[str, list[float]]:
    """Fine-tune the backbone with a supervised contrastive loss, then refit the prototypes.

    For users with more labelled data: same-class embeddings are pulled together
    (the loss of the ``embedding`` task), then each prototype is recomputed from
    ``(x, y)``. Batches should hold several examples per class.

    Returns:
        The Keras training history (``loss`` per epoch).

    Example:
        >>> finetune(model, images, labels, epochs=2)  # doctest: +SKIP
    """
    from kerastl.core.losses import SupervisedContrastiveLoss
    from kerastl.core.model import KerastlModel
    from kerastl.freeze import apply_policy

    names = list(ModelMeta.of(model).class_names or [])
    ids = _class_ids(y, names)
    head = head_of(model)
    z = keras.layers.UnitNormalization(dtype="float32")(head.input)
    trainer = KerastlModel(model.inputs, z, kerastl_config=dict(model.kerastl_config))
    apply_policy(trainer, freeze)
    trainer.compile(keras.optimizers.Adam(learning_rate), SupervisedContrastiveLoss(temperature))
    hist = trainer.fit(x, ids, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    apply_policy(model, "backbone")
    refit(model, x, ids, batch_size, center=bool(np.any(np.asarray(head.center))))
    return hist.history


def _artifact_kind(path: Any) -> str:
    from pathlib import Path

    suffix = Path(path).suffix
    if suffix not in (".tflite", ".onnx"):
        raise choice_error("path", str(path), [".tflite", ".onnx"], what="file type")
    return suffix[1:]


def read_prototypes(path: Any) -> tuple[str, np.ndarray]:
    """``(tensor name, rows)`` of the prototype tensor in an exported float32 file.

    In TFLite it is the ``(num_classes, dim)`` constant of the ``logits`` layer's
    ``MatMul``; in ONNX the ``(dim, num_classes)`` initializer ``.../logits/transpose:0``
    (tf2onnx stores it transposed; the rows returned here are un-transposed). The
    ``(dim, dim)`` matrix of a whitening head (``whiten=True``) is skipped.

    Example:
        >>> name, rows = read_prototypes("out/model.onnx")  # doctest: +SKIP
    """
    found = _prototype_candidates(path)
    # a whitening head (whiten=True) adds a square (dim, dim) matrix to the same layer
    found = [f for f in found if f[1].shape[0] != f[1].shape[1]] or found
    if found:
        return found[0]
    raise ConfigError(
        f"path: no float32 prototype tensor in {str(path)!r}; expected a float32 export of a "
        "prototype model (quantized files store it in another type)."
    )


def _prototype_candidates(path: Any) -> list[tuple[str, np.ndarray]]:
    """``(name, rows)`` of the float32 2-D constants of the ``logits`` layer's matmuls."""
    found = []
    if _artifact_kind(path) == "onnx":
        import onnx
        from onnx import numpy_helper

        for init in onnx.load(str(path)).graph.initializer:
            if "logits" in init.name and "transpose" in init.name and len(init.dims) == 2:
                found.append((init.name, numpy_helper.to_array(init).T))
        return found
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    for d in interp.get_tensor_details():
        if "logits" in d["name"] and "MatMul" in d["name"] and len(d["shape"]) == 2:
            try:
                value = interp.get_tensor(d["index"])
            except ValueError:
                continue
            if value.dtype == np.float32:
                found.append((d["name"], value))
    return found


def replace_prototypes(path: Any, rows: np.ndarray, out_path: Any) -> str:
    """Write a copy of an exported prototype model with new prototype rows.

    ``rows`` has the tensor's shape ``(num_classes, dim)`` (same class count: the
    output width is fixed in the file) and should come from :func:`prototype_rows`
    over new support embeddings (``embed`` with the Keras model, or the same
    backbone's embeddings on device).

    Returns:
        The tensor name that was replaced.

    Example:
        >>> replace_prototypes("out/model.tflite", rows, "new.tflite")  # doctest: +SKIP
    """
    name, old = read_prototypes(path)
    rows = np.asarray(rows, dtype="float32")
    if rows.shape != old.shape:
        raise ConfigError(f"rows: expected shape {old.shape} (the file's), got {rows.shape}.")
    if _artifact_kind(path) == "onnx":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path))
        for init in graph.graph.initializer:
            if init.name == name:
                init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(rows.T), name))
        onnx.save(graph, str(out_path))
        return name
    data = open(path, "rb").read()
    needle = np.ascontiguousarray(old, "<f4").tobytes()
    if data.count(needle) != 1:
        raise ConfigError(f"path: the prototype buffer of {str(path)!r} is not unique.")
    with open(out_path, "wb") as f:
        f.write(data.replace(needle, np.ascontiguousarray(rows, "<f4").tobytes()))
    return name
