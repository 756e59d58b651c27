"""``kerastl.rank``: score candidate backbones on the user's data and measure their cost.

One feature pass per candidate (through kerastl's training feature cache, so a
repeated rank or a later ``kerastl train`` with ``cache_features`` reuses it),
then the transferability scores of :mod:`kerastl.decide._scores`, then the cost
on the target runtime: the exported file's size and its batch-1 latency,
measured once per architecture (weights do not change either).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kerastl.core.features import collapsed, feature_rms
from kerastl.core.progress import progress_bar
from kerastl.core.tf_log import quiet_retracing
from kerastl.decide._candidates import (
    Candidate,
    check_modality,
    check_runtime,
    own_weights,
    parse_candidates,
)
from kerastl.decide._costs import (
    CostCache,
    Pending,
    default_path,
    forget_pending,
    measure_cost,
    time_pending,
)
from kerastl.decide._scores import (
    ESTIMATORS,
    lead_sureness,
    one_blas_thread,
    pareto_flags,
    score,
    subset_scores,
    subsets,
)
from kerastl.decide._workers import jobs_of, run_jobs, worker_count
from kerastl.errors import ConfigError, choice_error, one_line

log = logging.getLogger(__name__)

#: Random subsets of the examples (80 % of each class, at most 300 examples) each candidate
#: is scored on again.
SUBSETS = 20
#: A failed row's reason is cut to this many characters.
REASON_CHARS = 300
#: Below this sureness (:func:`mark_sure`), a candidate's lead over the next row is a near tie.
FIRM = 0.8


#: Build options only text models take.
_TEXT_OPTIONS = ("sequence_length", "tokenizer")


def candidate_options(c: Candidate, modality: str, kw: dict[str, Any]) -> dict[str, Any]:
    """The build options of a run that candidate ``c`` takes on data of ``modality``.

    Text options of a mixed run do not reach image models; only a random-init text
    model takes the tokenizer (a pretrained one brings its own).

    Example:
        >>> kw = {"sequence_length": 8, "tokenizer": "dir"}
        >>> candidate_options(Candidate("bert_tiny_en_uncased", None), "text", kw)
        {'sequence_length': 8, 'tokenizer': 'dir'}
        >>> candidate_options(Candidate("bert_tiny_en_uncased", "dir"), "text", kw)
        {'sequence_length': 8}
        >>> candidate_options(Candidate("efficientnet_lite0"), "image", kw)
        {}
    """
    if modality != "text":
        return {k: v for k, v in kw.items() if k not in _TEXT_OPTIONS}
    return {k: v for k, v in kw.items() if k != "tokenizer" or c.weights is None}


def candidate_model(c: Candidate, num_classes: int, input_size: int, **kw: Any):
    """``(full_model, feature_model)``: a kerastl classifier and its pooled-feature part."""
    import keras

    import kerastl
    from kerastl.core.model import KerastlModel
    from kerastl.train._cache import split_model

    spec = kerastl.get_spec(c.name)
    shape = (input_size, input_size, 3) if spec.modality == "image" else None
    weights = own_weights(c)  # a KerasHub entry's 'imagenet' is its own preset
    if c.tap is None:
        model = kerastl.build(
            c.name, num_classes=num_classes, weights=weights, input_shape=shape, **kw
        )
        return model, split_model(model)[0]
    fm = kerastl.build(
        c.name, weights=weights, input_shape=shape, features_only=True, out_indices=[c.tap], **kw
    )
    out = fm.outputs[0] if isinstance(fm.outputs, list) else fm.outputs
    # a feature map pools here; a text encoder's tap comes pooled (masked mean)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(out) if len(out.shape) == 4 else out
    feature_model = keras.Model(fm.inputs, pooled, name=f"{c.name}_tap{c.tap}")
    probs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(pooled)
    # the tap's input spec and modality go with it: export reads them (text: raw strings)
    meta = {k: v for k, v in fm.kerastl_config.items() if k != "feature_info"}
    meta.update(task="classification", num_outputs=num_classes, output="probabilities")
    clf = KerastlModel(fm.inputs, probs, name=feature_model.name + "_clf", kerastl_config=meta)
    return clf, feature_model


def features_of(
    c: Candidate,
    examples: Any,
    input_size: int,
    cache: str = "memory",
    seed: int = 0,
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(features, labels, full_model)`` of ``examples`` under candidate ``c`` (cached).

    ``seed`` fixes random-init weights, so a rerun (or a later fine-tune) sees the same.
    """
    import keras

    from kerastl import data as kdata
    from kerastl.core.convs import grouped_convs_as_depthwise
    from kerastl.train._cache import FeatureCache, feature_batch_size

    check_modality([replace(c, pattern=None)], examples.modality, "candidate")
    keras.utils.set_random_seed(seed)
    text = examples.modality == "text"
    kw = candidate_options(c, examples.modality, kw)
    model, feature_model = candidate_model(c, len(examples.class_names), input_size, **kw)
    size = None if text else (input_size, input_size)
    bs = feature_batch_size(size, 16)
    ds = kdata.make_dataset(examples, image_size=None if text else input_size, batch_size=bs)
    with grouped_convs_as_depthwise():  # ConvNeXt candidates: no XLA grouped convs
        x, y = FeatureCache(cache).get(
            model, feature_model, examples.fingerprint(), ds, verbose=0, label=c.label
        )
    return x.reshape(len(x), -1), y, model


@dataclass
class RankTable:
    """Rows sorted by the chosen score, best first; ``.text()``, ``.json()``, ``.plot()``.

    A candidate that could not be scored (weights not on this machine, ...) is a row
    whose ``failed`` is the one-line reason; it comes last.
    """

    rows: list[dict[str, Any]]
    by: str
    runtime: str
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    workers: int = 1  # processes that ranked the candidates side by side

    def text(self) -> str:
        """A plain-text table (the candidate column as wide as the longest name)."""
        names = [e for e in ESTIMATORS if any(e in r for r in self.rows)]
        width = {e: max(7, len(e)) for e in names}
        lw = max([len("candidate"), *(len(r["candidate"]) for r in self.rows)])
        head = f"{'candidate':{lw}} " + " ".join(f"{e:>{width[e]}}" for e in names)
        head += f" {'sure':>5} {'MB':>6} {'ms':>7}  pareto"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r.get("failed"):
                lines.append(f"{r['candidate']:{lw}} failed: {r['failed']}")
                continue
            mb = "-" if r["size_mb"] is None else f"{r['size_mb']:.1f}"
            ms = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
            cells = " ".join(_cell(r.get(e), width[e]) for e in names)
            sure = "-" if r.get("sure") is None else f"{r['sure']:.0%}"
            lines.append(
                f"{r['candidate']:{lw}} {cells} {sure:>5} {mb:>6} {ms:>7}  "
                + ("*" if r["pareto"] else "")
                + (" collapsed" if r.get("collapsed") else "")
            )
        lines.append(
            f"(sorted by {self.by}, collapsed features and failed candidates last; sure = how "
            f"sure the row's lead over the next is, from {SUBSETS} random subsets of the data; "
            f"cost: {self.runtime}, batch 1; * = Pareto)"
        )
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def json(self) -> str:
        """The table as JSON."""
        out = {"by": self.by, "runtime": self.runtime, "rows": self.rows}
        out |= {"seconds": self.seconds, "workers": self.workers, "notes": self.notes}
        return json.dumps(out, indent=1)

    def plot(self, path: str) -> str:
        """Score against latency (or rank position without a runtime), saved to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for i, r in enumerate(self.rows):
            if r.get(self.by) is None:  # failed, or collapsed and the score could not rate it
                continue
            xv = r["latency_ms"] if r["latency_ms"] is not None else i
            ax.scatter(xv, r[self.by], c="C1" if r["pareto"] else "C0")
            ax.annotate(r["candidate"], (xv, r[self.by]), fontsize=7)
        ax.set_xlabel(f"{self.runtime} latency (ms)" if self.runtime != "none" else "rank")
        ax.set_ylabel(self.by)
        fig.tight_layout()
        fig.savefig(path, dpi=120, bbox_inches="tight")  # labels past the axes stay whole
        plt.close(fig)
        return path


def as_examples(examples: Any, arg: str = "examples") -> Any:
    """Labelled :class:`kerastl.data.Examples` from what rank and advise accept.

    ``Examples``; a data path, read as ``kerastl train`` reads it (image folder, CSV,
    ``.npz``, text CSV/JSONL), whose skipped unreadable files are logged (how many, and
    the first names); or ``(x, y)`` as a tuple or list of two arrays.

    Raises:
        ConfigError: anything else, or a path with nothing at it.

    Example:
        >>> len(as_examples((np.zeros((2, 8, 8, 3), "uint8"), [0, 1])))
        2
    """
    from kerastl import data as kdata

    if isinstance(examples, (str, os.PathLike)):
        if not os.path.exists(examples):
            raise ConfigError(
                f"{arg}: nothing at {os.fspath(examples)!r} (an image folder, CSV, .npz, JSONL)."
            )
        examples = kdata.load(path=examples)
        report_skipped(examples)
    elif isinstance(examples, (tuple, list)) and len(examples) == 2:
        examples = kdata.from_numpy(np.asarray(examples[0]), np.asarray(examples[1]))
    elif not isinstance(examples, kdata.Examples):
        raise ConfigError(
            f"{arg}: expected kerastl.data.Examples, a data path (image folder, CSV, .npz, "
            f"text CSV/JSONL) or (x, y) arrays; got {type(examples).__name__}."
        )
    return examples


def report_skipped(examples: Any, show: int = 5) -> None:
    """Log how many unreadable files the data skipped, and the first ``show`` of them."""
    if examples.skipped:
        first = ", ".join(os.path.basename(p) for p, _ in examples.skipped[:show])
        more = ", ..." if len(examples.skipped) > show else ""
        log.warning(f"skipped {len(examples.skipped)} unreadable file(s): {first}{more}")
        for p, why in examples.skipped[:show]:
            log.info(f"  {p}: {why}")


def _data_notes(examples: Any) -> list[str]:
    notes = []
    if examples.skipped:
        notes.append(f"skipped {len(examples.skipped)} unreadable file(s) of the data")
    counts = [n for n in examples.class_counts().values() if n > 0]
    if counts and min(counts) < 2:
        notes.append(
            "a class has 1 example: knn and probe hold it out with no other example of its "
            "class to learn from, so their scores are rough"
        )
    return notes


def rank(
    examples: Any,
    candidates: Any,
    input_size: int = 64,
    runtime: str = "tflite",
    by: str = "logme",
    estimators: tuple[str, ...] = ESTIMATORS,
    cache: str = "memory",
    progress: bool = True,
    workers: int | None = None,
    **build_kwargs: Any,
) -> RankTable:
    """Score each candidate backbone on ``examples`` and measure its cost; best first.

    A candidate that fails (weights that cannot be loaded offline, ...) is a row with
    its reason; the others are still ranked. A wildcard keeps the models of the data's
    modality (said in the table's notes); a named model of another modality is an error.

    Args:
        examples: Labelled :class:`kerastl.data.Examples`, a data path, or ``(x, y)``.
        candidates: ``"efficientnet_lite*,efficientnet_lite0@random"`` or a list
            (see :mod:`kerastl.decide._candidates`).
        input_size: Side images are resized to.
        runtime: ``"tflite"``, ``"onnx"`` or ``"none"`` (no cost measured).
        by: The estimator that sorts the table.
        estimators: Estimators computed (``by`` is always among them).
        cache: ``"memory"`` (this process) or ``"disk"`` (across runs): the feature cache,
            and the cost cache of :mod:`kerastl.decide._costs`.
        progress: Show a progress bar across candidates (on a terminal only).
        workers: Processes ranking candidates side by side, this one included (``None``:
            one per CPU core, at most 4; never more than :func:`rank_jobs` makes). Each
            worker gets its own copy of ``examples`` (the paths of a folder, or the arrays).
        **build_kwargs: Passed to :func:`kerastl.build` (e.g. ``sequence_length``;
            ``tokenizer``: a preset folder whose vocabulary random-init text candidates use).

    Raises:
        ConfigError: bad arguments, or a named candidate of another modality than the data.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> d = load_digits()
        >>> x = (d.images[:60] * 16).astype("uint8")
        >>> t = kerastl.rank((x, d.target[:60]), "efficientnet_lite0,efficientnet_lite0@random",
        ...                  input_size=32, runtime="none", progress=False)  # doctest: +SKIP
        >>> t.rows[0]["candidate"]  # doctest: +SKIP
        'efficientnet_lite0'
    """
    runtime = check_runtime(runtime)
    if by not in ESTIMATORS:
        raise choice_error("by", by, ESTIMATORS)
    estimators = tuple(dict.fromkeys((by, *estimators)))
    examples = as_examples(examples)
    parsed = _is_parsed(candidates)
    cands = list(candidates) if parsed else parse_candidates(candidates, argument="candidates")
    cands, notes = check_modality(cands, examples.modality, "candidates")
    run = _Run(examples, input_size, runtime, estimators, by, cache, build_kwargs)
    jobs = rank_jobs(cands)
    n_workers = worker_count(workers, len(jobs), gpu=_gpu_visible())
    t0 = time.perf_counter()
    with _exports_timed_after(run, n_workers):
        rows = _rank_all(cands, jobs, run, n_workers, progress)
    run.seconds["wall"] = time.perf_counter() - t0
    mark_pareto(rows, by)
    rows.sort(key=lambda r: (bool(r["failed"]), r["collapsed"], -_value(r[by])))
    n = 0 if run.labels is None else len(run.labels)
    notes += mark_sure(rows, by, run.on_subsets, n, len(run.parts[0]))
    notes += [f"{r['candidate']}: {r['cost_failed']}" for r in rows if r.get("cost_failed")]
    notes += _cost_notes(rows, cache)
    notes = notes + _data_notes(examples)
    return RankTable(rows, by, runtime, run.seconds, notes, workers=run.processes)


def _rank_all(
    cands: list[Candidate], jobs: list[list[int]], run: _Run, n_workers: int, progress: bool
) -> list[dict[str, Any]]:
    """The rows of ``cands`` (in the given order: equal scores keep it), ranked by up to
    ``n_workers`` processes (``run.processes``: how many took part); a progress bar
    across candidates."""
    done: dict[int, dict[str, Any]] = {}
    with progress_bar(total=len(cands), show=progress, desc="kerastl rank", unit="model") as bar:
        run.processes = run_jobs(
            jobs,
            local=lambda job: rank_job(job, cands, run, on_row=bar.update),
            remote=_remote_job,
            done=lambda job, result: done.update(run.merge(result, bar)),
            workers=n_workers,
            initializer=_init_worker,
            initargs=(_worker_start(cands, run) if n_workers > 1 else b"",),
        )
    rows = [done[i] for i in range(len(cands))]
    if run.later is not None:
        _time_latencies(rows, run)
    return rows


@contextlib.contextmanager
def _exports_timed_after(run: _Run, n_workers: int) -> Iterator[None]:
    """With workers, ``run.later``: the folder where costs are exported to be timed after
    the ranking (:class:`kerastl.decide._costs.Pending`); deleted, whatever happens."""
    if n_workers < 2 or run.runtime == "none":
        yield
        return
    run.later = tempfile.mkdtemp(prefix="kerastl-rank-")
    try:
        yield
    finally:
        shutil.rmtree(run.later, ignore_errors=True)
        forget_pending(run.later)
        run.later = None


def _time_latencies(rows: list[dict[str, Any]], run: _Run) -> None:
    """Time each file the ranking left :class:`Pending`, one after the other (nothing
    else runs now), and put its latency in every row that shares it."""
    t0 = time.perf_counter()
    sample = _sample(run.examples, run.input_size)
    timed: dict[str, float | Exception] = {}
    for row in rows:
        pending = row["latency_ms"]
        if not isinstance(pending, Pending):
            continue
        if pending.key not in timed:
            try:
                timed[pending.key] = time_pending(pending, sample)
            except Exception as exc:  # noqa: BLE001 - the scores stand; the cost is unknown
                timed[pending.key] = exc
                log.debug(f"{row['candidate']}: timing failed", exc_info=True)
        got = timed[pending.key]
        if isinstance(got, Exception):
            row.update(size_mb=None, latency_ms=None)
            row["cost_failed"] = f"cost on {run.runtime} failed: {one_line(got, REASON_CHARS)}"
        else:
            row["latency_ms"] = got
    run.seconds["cost"] += time.perf_counter() - t0


def rank_jobs(cands: list[Candidate]) -> list[list[int]]:
    """Indices of ``cands`` grouped into the jobs one process ranks: a model's taps, and
    every candidate of one architecture (one export measures its cost), go together; in a
    job, each model's taps come right after it (:func:`model_order`).

    Example:
        >>> rank_jobs(parse_candidates(
        ...     "efficientnet_lite1,efficientnet_lite0,efficientnet_lite0@random,efficientnet_lite0:tap2"))
        [[1, 3, 2], [0]]
    """
    position = {i: k for k, i in enumerate(model_order(cands))}
    jobs = jobs_of([((c.name, c.weights), c.arch_key) for c in cands])
    return [sorted(job, key=position.__getitem__) for job in jobs]


def rank_job(
    job: list[int], cands: list[Candidate], run: _Run, on_row: Any = None
) -> dict[str, Any]:
    """Rank the candidates ``job`` indexes, in this process; what :meth:`_Run.merge` takes.

    ``on_row`` is called after each candidate (the progress bar). Besides the rows, the
    result carries the features and costs this job added to the process's caches, so the
    process that merges it keeps them too (a later ``kerastl.train`` reuses the features).
    """
    from kerastl.builder import shared_backbones
    from kerastl.train._cache import FeatureCache

    mine = replace(run, seconds=dict.fromkeys(run.seconds, 0.0), labels=None, on_subsets={})
    features, costs = set(FeatureCache._memory), set(CostCache._memory)
    rows = {}
    with quiet_retracing(), shared_backbones():
        for i in job:
            rows[i] = _rank_one(cands[i], mine)
            if on_row is not None:
                on_row(1)
    return {
        "rows": rows,
        "seconds": mine.seconds,
        "labels": mine.labels,
        "on_subsets": mine.on_subsets,
        "features": {k: v for k, v in FeatureCache._memory.items() if k not in features},
        "costs": {k: v for k, v in CostCache._memory.items() if k not in costs},
    }


#: What a worker process keeps from :func:`_init_worker`: the candidates and the run.
_WORKER: dict[str, Any] = {}
#: This process's cached features go to the workers up to this size (a repeated rank
#: reuses them there too); beyond it, a worker computes its own.
SHARED_FEATURES_BYTES = 256 * 2**20


def _worker_start(cands: list[Candidate], run: _Run) -> bytes:
    """What each worker starts from, pickled once now (this process goes on changing
    ``run``): the candidates, the run, kerastl's logging, the Keras dtype policy, and this
    process's cached features and costs."""
    import pickle

    import keras

    from kerastl.train._cache import FeatureCache

    logger = logging.getLogger("kerastl")
    features = dict(FeatureCache._memory)
    size = sum(x.nbytes + y.nbytes for x, y in features.values())
    return pickle.dumps({
        "cands": cands, "run": run, "level": logger.getEffectiveLevel(),
        "handler": bool(logger.handlers), "policy": keras.config.dtype_policy().name,
        "features": features if size <= SHARED_FEATURES_BYTES else {},
        "costs": dict(CostCache._memory),
    })  # fmt: skip


def _init_worker(start: bytes) -> None:
    """A worker process's start (:func:`_worker_start`). Ctrl-C is this process's to
    handle: it stops the workers."""
    import pickle
    import signal
    import sys

    import keras

    from kerastl.train._cache import FeatureCache

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    state = pickle.loads(start)
    logger = logging.getLogger("kerastl")
    logger.setLevel(state["level"])
    if state["handler"]:  # the CLI's: one plain line per message on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    keras.config.set_dtype_policy(state["policy"])
    FeatureCache._memory.update(state["features"])
    CostCache._memory.update(state["costs"])
    _WORKER.update(cands=state["cands"], run=state["run"])


def _remote_job(job: list[int]) -> dict[str, Any]:
    """:func:`rank_job` in a worker process; the features it sends back are not kept
    here too (this process's memory stays that of one model)."""
    from kerastl.train._cache import FeatureCache

    result = rank_job(job, _WORKER["cands"], _WORKER["run"])
    for key in result["features"]:
        FeatureCache._memory.pop(key, None)
    return {**result, "remote": True}


def _gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (one process ranks then: see :func:`worker_count`)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def model_order(cands: list[Candidate]) -> list[int]:
    """Indices of ``cands`` with each one right after the first of the same model and
    weights (taps included), the given order otherwise.

    Example:
        >>> model_order(parse_candidates("efficientnet_lite0,efficientnet_lite1,efficientnet_lite0:tap2"))
        [0, 2, 1]
    """
    first: dict[tuple, int] = {}
    group = [first.setdefault((c.name, c.weights), i) for i, c in enumerate(cands)]
    return sorted(range(len(cands)), key=lambda i: (group[i], i))


@dataclass
class _Run:
    """What the candidates of one ranking share: its arguments, timers and subsets."""

    examples: Any
    input_size: int
    runtime: str
    estimators: tuple[str, ...]
    by: str
    cache: str
    kw: dict[str, Any]
    seconds: dict[str, float] = field(
        default_factory=lambda: {"features_and_scores": 0.0, "cost": 0.0}
    )
    labels: np.ndarray | None = None  # in the order features come (the same for each)
    parts: list[np.ndarray] = field(default_factory=lambda: [np.arange(0)])
    on_subsets: dict[str, np.ndarray] = field(default_factory=dict)  # candidate -> scores
    later: str | None = None  # with workers: where costs are exported, to be timed after
    processes: int = 1  # how many processes ranked (this one and the workers that helped)

    def merge(self, result: dict[str, Any], bar: Any = None) -> dict[int, dict[str, Any]]:
        """Take in a job's result (:func:`rank_job`): its timers, its scores on the
        subsets (paired when its examples came in the same order), the features and
        costs it measured; returns its rows."""
        from kerastl.train._cache import FeatureCache

        for k, v in result["seconds"].items():
            self.seconds[k] += v
        if result["labels"] is not None and self._paired(result["labels"]):
            self.on_subsets.update(result["on_subsets"])
        FeatureCache._memory.update(result["features"])
        CostCache._memory.update(result["costs"])
        if bar is not None and result.get("remote"):
            bar.update(len(result["rows"]))
        return result["rows"]

    def score_subsets(self, label: str, x: np.ndarray, y: np.ndarray) -> None:
        """``by`` of candidate ``label`` on each of the run's :data:`SUBSETS` subsets."""
        if self._paired(y):
            self.on_subsets[label] = subset_scores(x, y, self.parts, self.by)

    def _paired(self, y: np.ndarray) -> bool:
        """Whether examples labelled ``y`` come in the run's order (the same examples in
        the same order: scores on subsets pair up); the first labels seen fix it."""
        if self.labels is None:
            self.labels, self.parts = y, subsets(y, SUBSETS)
        return np.array_equal(y, self.labels)


def _rank_one(c: Candidate, run: _Run) -> dict[str, Any]:
    """One row: features, scores and cost of ``c``; what fails is the row's ``failed`` reason."""
    row: dict[str, Any] = {"candidate": c.label, "dim": None, "feature_rms": None}
    row.update({"collapsed": False, "failed": None, **dict.fromkeys(run.estimators)})
    row.update(size_mb=None, latency_ms=None, cost_failed=None, cost_cached=False)
    examples, kw = run.examples, run.kw
    t0 = time.perf_counter()
    try:
        x, y, model = features_of(c, examples, run.input_size, run.cache, **kw)
        rms = feature_rms(x)
        row.update(dim=int(x.shape[1]), feature_rms=rms, collapsed=collapsed(x, rms))
        with one_blas_thread():
            row.update({e: _score(x, y, e, row["collapsed"]) for e in run.estimators})
            if not row["collapsed"]:
                run.score_subsets(c.label, x, y)
    except Exception as exc:  # noqa: BLE001 - one candidate must not stop the ranking
        row["failed"] = one_line(exc, REASON_CHARS)
        log.debug(f"{c.label} failed", exc_info=True)
        return row
    finally:
        run.seconds["features_and_scores"] += time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        sample = _sample(examples, run.input_size)
        seq = kw.get("sequence_length") if examples.modality == "text" else None
        cost = measure_cost(
            c, model, run.input_size, run.runtime, sample, seq, run.cache, run.later
        )
        row["size_mb"], row["latency_ms"], row["cost_cached"] = cost
    except Exception as exc:  # noqa: BLE001 - the scores stand and rank; the cost is unknown
        row["cost_failed"] = f"cost on {run.runtime} failed: {one_line(exc, REASON_CHARS)}"
        log.debug(f"{c.label}: cost failed", exc_info=True)
    run.seconds["cost"] += time.perf_counter() - t1
    return row


def mark_sure(
    rows: list[dict[str, Any]], by: str, on_subsets: dict[str, np.ndarray], n: int, m: int
) -> list[str]:
    """Set each row's ``sure`` (rows sorted best first): how sure its lead in ``by`` over the
    next scored row is (:func:`lead_sureness`, from both rows' scores on the same random
    subsets of ``m`` of the ``n`` examples); ``None`` for the last one, failed and collapsed
    rows. Returns a note naming the near ties (``sure`` below :data:`FIRM`).

    Example:
        >>> rows = [{"candidate": c, "failed": None, "collapsed": False, "s": v}
        ...         for c, v in [("a", 3.0), ("b", 2.0), ("c", 1.9)]]
        >>> on = {"a": np.array([3.1, 3, 2.9, 3, 3]), "b": np.array([2.0, 2.1, 2, 1.9, 2]),
        ...       "c": np.array([1.5, 2.2, 2.1, 1.7, 1.9])}
        >>> mark_sure(rows, "s", on, n=50, m=40)
        ['near ties (sure < 80% by s; the order could change with other labelled examples): b ~ c']
        >>> [None if r["sure"] is None else round(r["sure"], 2) for r in rows]
        [1.0, 0.58, None]
    """
    scored = [r for r in rows if not (r["failed"] or r["collapsed"]) and r[by] is not None]
    for r in rows:
        r["sure"] = None
    for a, b in zip(scored, scored[1:]):
        pair = on_subsets.get(a["candidate"]), on_subsets.get(b["candidate"])
        if pair[0] is not None and pair[1] is not None:
            a["sure"] = lead_sureness(a[by] - b[by], *pair, n=n, m=m)
    ties = [
        f"{a['candidate']} ~ {b['candidate']}"
        for a, b in zip(scored, scored[1:])
        if a["sure"] is not None and a["sure"] < FIRM
    ]
    if not ties:
        return []
    return [
        f"near ties (sure < {FIRM:.0%} by {by}; the order could change with other labelled "
        "examples): " + ", ".join(ties)
    ]


def _cost_notes(rows: list[dict[str, Any]], cache: str) -> list[str]:
    """Where the disk cache keeps costs, and how many rows took theirs from earlier runs."""
    if cache != "disk":
        return []
    reused = sum(bool(r.get("cost_cached")) for r in rows)
    return [
        f"cost cache {default_path()}: {reused} of {len(rows)} candidates' costs were "
        "measured earlier on this machine (delete the file to measure them again)"
    ]


def mark_pareto(rows: list[dict[str, Any]], by: str) -> None:
    """Set each row's ``pareto``: among the candidates not collapsed, none beats it on both.

    A collapsed or failed candidate, or one whose cost could not be measured, is never on
    the front and never pushes another one off it (random init shares its architecture's
    latency and may score high on noise).

    Example:
        >>> rows = [{"s": 0.2, "latency_ms": 5.0, "collapsed": False},
        ...         {"s": 0.9, "latency_ms": 5.0, "collapsed": True}]
        >>> mark_pareto(rows, "s"); [r["pareto"] for r in rows]
        [True, False]
    """
    alive = [r for r in rows if not (r["collapsed"] or r.get("failed") or r.get("cost_failed"))]
    flags = pareto_flags([_value(r[by]) for r in alive], [r["latency_ms"] for r in alive])
    for r in rows:
        r["pareto"] = False
    for r, f in zip(alive, flags):
        r["pareto"] = f


def _score(x: np.ndarray, y: np.ndarray, estimator: str, collapsed: bool) -> float | None:
    """:func:`score`; ``None`` for a collapsed candidate whose features it cannot score.

    (Centred LogME refuses features that are the same for every example.)
    """
    from kerastl.errors import DataError

    try:
        return score(x, y, estimator)
    except DataError as exc:
        if not collapsed or not str(exc).startswith("features:"):  # e.g. labels: one class
            raise
        return None


def _value(s: float | None) -> float:
    return float("-inf") if s is None else s


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.3f}"


def _is_parsed(candidates: Any) -> bool:
    return isinstance(candidates, (list, tuple)) and all(
        isinstance(c, Candidate) for c in candidates
    )


def _sample(examples: Any, input_size: int) -> Any:
    """One raw input of ``examples`` as a batch of one (what the latency is measured on)."""
    if examples.modality == "text":
        return np.asarray([str(examples.x[0])])
    from kerastl import data as kdata

    x, _ = next(iter(kdata.make_dataset(examples.subset([0]), image_size=input_size)))
    return np.asarray(x, dtype=np.float32)
