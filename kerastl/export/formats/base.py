"""The contract every export format implements: writing artifacts and loading them back.

:func:`kerastl.export.pipeline.export` knows no format by name: it asks each selected
:class:`Format` to check its options, plan its published paths, write its artifacts
into the staging folder, load them back and publish them. A format is one class in
one module of :mod:`kerastl.export.formats`, listed once in its ``FORMATS`` table.
:class:`Artifact` is what a format's ``load`` returns: the file in its runtime.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kerastl.export._trace import Prepared


def release_memory() -> None:
    """Free what the last export step left behind and hand it back to the OS.

    TensorFlow's graphs and converters leave reference cycles (a frozen graph holds a
    copy of every weight) and glibc keeps freed blocks in its heaps, so without this the
    process's resident memory only grows from one format to the next. Called between
    the pipeline's steps; a no-op where ``malloc_trim`` does not exist (macOS, musl).

    Example:
        >>> release_memory()
    """
    import gc

    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` from the symbols already loaded (``None`` where it is missing).

    Not through ``ctypes.util.find_library``: on Linux that runs ``ldconfig -p`` in a child
    process on every call, forked from an export holding GBs (a process-tree memory poll
    that catches the child before it execs counts the parent's pages twice: ConvNeXt-B's
    all-format export read 3.63 GB polled for a 2.55 GB peak).
    """
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:  # no dlopen(NULL) on this platform
        return None


_FROZEN = [False]


@contextlib.contextmanager
def objects_alive_now_uncollected() -> Iterator[None]:
    """Move every object alive now out of the cyclic collector's sight until the block ends.

    :func:`release_memory` between export steps then collects only what was allocated
    since: a full collection walks every TensorFlow, Keras and user object (0.2-0.4 s
    each on MobileNetV3-Small, four of them per ONNX export). Garbage already waiting is
    collected first, so it is not kept for the whole block. Inside a block already open,
    or when the caller froze objects itself (``gc.freeze()`` before forking workers),
    this is a no-op: freezing again would also hide what the export allocated so far,
    and ``gc.unfreeze()`` would undo the caller's freeze.

    Example:
        >>> with objects_alive_now_uncollected():
        ...     release_memory()
    """
    import gc

    if _FROZEN[0] or gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    _FROZEN[0] = True
    try:
        yield
    finally:
        _FROZEN[0] = False
        gc.unfreeze()


@dataclass(frozen=True)
class Options:
    """The arguments of :func:`kerastl.export` after the format list (as given)."""

    quantize: list[str] = field(default_factory=list)
    calibration_data: Any = None
    validation_data: Any = None
    name: str | None = None
    version: int | None = None
    int8_io: str = "float32"
    allow_flex: bool = False
    opset: int | None = None
    overwrite: bool = False
    tolerances: dict[str, dict[str, float]] | None = None
    max_validation_samples: int = 64
    max_calibration_samples: int = 500
    latency_runs: int = 10
    #: The raw inputs behind ``validation_data`` when a part exports a sub-model (text: the
    #: sentences whose token ids ``validation_data`` holds); set by :mod:`kerastl.export.split`.
    source_inputs: Any = None


@dataclass
class Job:
    """What a format writes from: the traced model, its data and the staging folder."""

    prepared: Prepared
    name: str
    out: Path
    staging: Path
    options: Options
    targets: dict[tuple[str, str], Path]
    x_val: np.ndarray
    y_val: np.ndarray | None
    x_cal: np.ndarray | None
    keras: Reference

    @property
    def reference(self) -> dict[str, np.ndarray]:
        """The Keras outputs artifacts are compared with (waits for a computing thread)."""
        return self.keras.outputs()


class Reference:
    """Keras' outputs on the ``rows`` validation inputs and its batch-1 latency.

    The first outputs (``head``) are computed before anything is written; the others
    (``tail``) may still be computing in a thread (a ``Future``) while the first artifact
    is written, and are joined to ``head`` the first time :meth:`outputs` is called.

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(1) as pool:
        ...     tail = pool.submit(lambda: {"y": np.ones((4, 3))})
        ...     ref = Reference({"y": np.zeros((2, 3))}, 6, 1.5, tail)
        ...     ref.shape("y"), float(ref.outputs()["y"].sum())
        ((6, 3), 12.0)
    """

    def __init__(self, head: dict[str, np.ndarray], rows: int, latency_ms: float, tail: Any = None):
        self.latency_ms, self.rows = latency_ms, rows
        self._head, self._tail = head, tail
        self._outputs: dict[str, np.ndarray] | None = None

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of output ``name`` over every input (the tail is not waited for)."""
        return (self.rows, *self._head[name].shape[1:])

    def outputs(self) -> dict[str, np.ndarray]:
        """Every output, in input order; a computing thread's error is raised here."""
        if self._outputs is None:
            tail = self._tail.result() if hasattr(self._tail, "result") else self._tail
            self._outputs = (
                self._head
                if tail is None
                else {k: np.concatenate([v, tail[k]]) for k, v in self._head.items()}
            )
        return self._outputs


class NotWritten(Exception):  # noqa: N818 - an outcome, not an error
    """Raised by an optional derived file's writer: the file is left out, with the reason.

    The rest of the export publishes; the report's record says ``not written`` and why.
    A required file never raises this: its failures are failures.
    """


@dataclass
class Staged:
    """One artifact to write into staging: ``write()`` returns the report's details.

    ``reference`` narrows the Keras outputs it is validated against (default: all);
    ``inputs`` replaces the job's validation inputs (a file on other inputs, with
    ``reference`` the Keras outputs on them); ``load`` replaces the format's ``load(path)``
    for validation (a large float16 TFLite file, :mod:`.tflite_upcast`).
    """

    precision: str
    path: Path
    write: Callable[[], dict[str, Any]]
    reference: dict[str, Any] | None = None
    inputs: Any = None
    load: Callable[[], Artifact] | None = None


class Format:
    """An export format: the protocol :mod:`kerastl.export.pipeline` runs over.

    Attributes:
        name: The format's name in ``formats=`` and in the report.
        versioned: Published into a new numbered folder that is never overwritten
            (TF Serving); otherwise a file replaced only with ``overwrite=True``.
        reads_saved_model: Writes or converts from a SavedModel under ``out_dir``, which
            TensorFlow reads through a glob pattern (so ``[`` ``]`` in the path break it).
        overlaps_reference: Written first, its write may run while another thread
            computes the Keras reference: the write is mostly Python (the CPU the model's
            kernels leave free) and holds little memory beyond the model.
    """

    name: str = "base"
    #: File suffix of the artifacts (``None``: a folder).
    suffix: str | None = None
    versioned: bool = False
    reads_saved_model: bool = False
    overlaps_reference: bool = False

    def check_options(self, options: Options, formats: list[str]) -> None:
        """Refuse this format's options that are bad or given without the format."""

    def require(self) -> None:
        """Raise :class:`MissingDependencyError` when the format's packages are missing."""

    def targets(self, out: Path, name: str, options: Options, meta: dict) -> dict[str, Path]:
        """Precision -> published path of every artifact this format writes."""
        raise NotImplementedError

    def optional_files(self, out: Path, name: str) -> list[Path]:
        """Derived files this format writes for some models only (MediaPipe, strings).

        One left from an earlier export that this export does not write is stale: it
        counts as a clash without ``overwrite=True`` and is removed after a publish.
        """
        return []

    def notes(self, name: str, options: Options, meta: dict) -> list[str]:
        """Report notes on artifacts this format does not write for this model, and why."""
        return []

    def artifacts(self, job: Job) -> Iterator[Staged]:
        """The artifacts to write, in order (code between items runs outside their checks)."""
        raise NotImplementedError

    def load(self, path: Path, num_threads: int | None = None) -> Artifact:
        """The artifact at ``path`` loaded in its runtime (validation, ``load_artifact``).

        ``num_threads`` (``None``: every core) is taken by the formats in
        :data:`kerastl.export.artifact.THREADED_FORMATS`; the others are never given one.
        """
        raise NotImplementedError

    def publish(self, source: Path, target: Path) -> None:
        """Move a validated artifact from staging to ``target`` (its folder exists)."""
        os.replace(source, target)


class Artifact:
    """An exported model loaded in its runtime.

    Attributes:
        path: File or folder loaded.
        format: One of :data:`ARTIFACT_FORMATS`.
        metadata: kerastl's metadata (labels, task, input spec...).
        runtime: Which runtime executes it.
        non_builtin_ops: Ops outside the runtime's builtin set, read from the file when
            it was loaded (TFLite custom ops, ONNX ops outside the standard domains).

    Example:
        >>> art = kerastl.load_artifact("out/model.tflite")  # doctest: +SKIP
        >>> art.predict(["cat.jpg"])["labels"]  # doctest: +SKIP
        ['cat']
    """

    format = "base"
    runtime = "?"

    def __init__(self, path: Path, metadata: dict[str, Any], non_builtin_ops: Sequence[str] = ()):
        self.path = path
        self.metadata = metadata
        self.non_builtin_ops = list(non_builtin_ops)

    @property
    def input_name(self) -> str:
        return (self.metadata.get("input") or {}).get("name", "image")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw runtime call on a batch of raw inputs; returns numpy outputs by name."""
        raise NotImplementedError

    def run_batched(self, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        """:meth:`run` over ``x`` in chunks of ``batch_size``, outputs concatenated."""
        from kerastl.export.validate import run_in_batches

        return run_in_batches(self.run, x, batch_size)

    def predict(self, inputs: Any, batch_size: int = 32) -> dict[str, Any]:
        """Outputs for raw inputs or input files, with class labels when known.

        Args:
            inputs: An array of raw inputs, or a list of file paths.
            batch_size: Inputs per runtime call.

        Returns:
            Output name -> array, plus ``"labels"`` (list of names) for classifiers.
        """
        from kerastl.export.modalities import get_modality

        spec = self.metadata.get("input") or {}
        is_files = isinstance(inputs, (list, tuple)) and all(
            isinstance(p, (str, os.PathLike)) for p in inputs
        )
        if is_files and len(inputs) > 1 and spec.get("name") == "image":
            if None in list(spec.get("shape") or [])[:2]:  # any size: files one by one
                return _merge([self.predict([p], batch_size) for p in inputs])
        modality = get_modality(self.metadata)
        x, _ = modality.coerce(inputs, "inputs")
        out = self.run_batched(x, batch_size)
        names = self.metadata.get("class_names")
        if names and "class_id" in out:
            out["labels"] = [names[int(i)] for i in out["class_id"]]
        elif names and "probabilities" in out:  # e.g. the MediaPipe file: scores only
            out["labels"] = [names[int(i)] for i in np.argmax(out["probabilities"], axis=-1)]
        return out

    def latency_ms(
        self,
        x: np.ndarray,
        runs: int = 10,
        warmup: int = 1,
        done: Sequence[float] = (),
        budget_s: float | None = None,
    ) -> float:
        """Median wall time of one call on ``x`` (use a batch of one), in milliseconds.

        See :func:`median_ms` (at most ``runs`` timed calls; ``done``: seconds of calls
        already made at the same batch size, e.g. by validation, counted as timed runs).
        """
        return median_ms(lambda: self.run(x), runs, warmup, done, budget_s)


#: Timed calls stop once they took this long (after :data:`MIN_LATENCY_RUNS`).
LATENCY_BUDGET_S = 2.0
MIN_LATENCY_RUNS = 3


def median_ms(
    call: Callable[[], Any],
    runs: int = 10,
    warmup: int = 1,
    done: Sequence[float] = (),
    budget_s: float | None = None,
) -> float:
    """Median wall time of ``call()`` in ms: ``warmup`` untimed calls, then up to ``runs``.

    The timed calls stop after ``budget_s`` seconds (default :data:`LATENCY_BUDGET_S`)
    once :data:`MIN_LATENCY_RUNS` were made, so a large model's latency figure does not
    cost more than its conversion (ConvNeXt-B at 224 px: 11 calls of 1.7 s each before).
    ``done`` are the seconds of equivalent calls made already after a warm-up (the
    batch-1 calls of validation): they count as the first timed runs and towards the
    budget, so they are not made again. The ``warmup`` calls precede any further runs:
    pass 0 only when the last call was made at the same batch size (a runtime resized
    since runs its first call slower).

    Example:
        >>> median_ms(lambda: sum(range(1000)), runs=5) < 100
        True
        >>> median_ms(lambda: 1 / 0, runs=3, done=[0.002, 0.001, 0.003])  # nothing called
        2.0
    """
    budget = LATENCY_BUDGET_S if budget_s is None else budget_s
    times = [float(t) for t in done][: max(runs, 1)]
    start = time.perf_counter() - sum(times)

    def finished() -> bool:
        over = time.perf_counter() - start > budget
        return len(times) >= max(runs, 1) or (over and len(times) >= min(MIN_LATENCY_RUNS, runs))

    if not finished():
        for _ in range(warmup):
            call()
        start = time.perf_counter() - sum(times)
    while not finished():
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0)


def _merge(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in outputs[0].items():
        parts = [o[key] for o in outputs]
        merged[key] = sum(parts, []) if isinstance(value, list) else np.concatenate(parts)
    return merged


def stale_files(out: Path, name: str, formats: Iterable[Format], written: set[Path]) -> list[Path]:
    """Optional derived files (:meth:`Format.optional_files`) an earlier export left in ``out``.

    Those this export does not write (``written``) that the report in ``out`` says the
    last export of the same ``name`` published: a clash without ``overwrite=True``,
    removed by :func:`remove_stale` once the new files are published. A file no such
    report lists is someone else's: ``m_int8.tflite`` may be the float32 file of a model
    named ``m_int8``, which an export of ``m`` must leave alone.
    """
    ours = published_by(out, name)
    return [
        p
        for fmt in formats
        for p in fmt.optional_files(out, name)
        if p not in written and p.exists() and p.name in ours
    ]


def published_by(out: Path, name: str) -> set[str]:
    """Paths (relative to ``out``) the passed report in ``out`` lists, if it is of ``name``.

    Example:
        >>> import json, tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> report = {"model": {"name": "m"}, "artifacts": [{"path": "m_int8.tflite"}]}
        >>> _ = (out / "export_report.json").write_text(json.dumps(report))
        >>> published_by(out, "m"), published_by(out, "m_int8")
        ({'m_int8.tflite'}, set())
    """
    import json

    from kerastl.export.report import JSON_NAME

    try:
        report = json.loads((out / JSON_NAME).read_text())
        if report["model"]["name"] != name:
            return set()
        return {str(a["path"]) for a in report["artifacts"]}
    except (OSError, ValueError, KeyError, TypeError):  # none, unreadable, or not kerastl's
        return set()


def remove_stale(paths: list[Path]) -> list[str]:
    """Delete the :func:`stale_files` ``paths``; the report notes saying so."""
    for path in paths:
        path.unlink()
    return [f"removed {p.name}: left by an earlier export, not written by this one" for p in paths]
