"""Where ``kerastl rank`` keeps what each candidate costs on the target runtime.

The exported file's size and its batch-1 latency depend on the architecture, the input
and the machine, not on the user's data or the weights' values, so each is measured once:
per process (``cache="memory"``), or across runs in ``~/.cache/kerastl/rank_costs.json``
(``cache="disk"``, the same switch as the feature cache). A disk entry is keyed by the
architecture, input size, runtime, sequence length, the versions of kerastl, TensorFlow
and the runtime's package, and this machine's CPU and core count, so a latency measured
elsewhere or under another converter is never reused.

When candidates are ranked side by side (:mod:`kerastl.decide._workers`), a latency timed
while another process computes would be that process's slowdown as much as the model's:
the files are then exported at once and timed one after the other once the ranking is
done (:class:`Pending`, :func:`time_pending`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The Python package whose version a runtime's latency depends on.
RUNTIME_PACKAGES = {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}


def default_path() -> Path:
    """The disk cache of costs: ``~/.cache/kerastl/rank_costs.json``.

    Example:
        >>> default_path().name
        'rank_costs.json'
    """
    return Path.home() / ".cache" / "kerastl" / "rank_costs.json"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
    """The CPU's model name (Linux) or what :mod:`platform` knows, and its logical cores."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
            )
    except OSError:
        pass
    return f"{name} x{os.cpu_count()}"


def cost_key(
    arch: str, input_size: int, runtime: str, sequence_length: int | None, params: int = 0
) -> str:
    """What a measured cost depends on, as one string. ``params``: the exported model's
    parameter count (its head follows the number of classes, a random-init text model's
    embedding its tokenizer's vocabulary).

    Example:
        >>> k = cost_key("efficientnet_lite0:None", 224, "tflite", None, 4_020_358)
        >>> k.startswith("efficientnet_lite0:None|224|tflite|None|4020358 params|kerastl ")
        True
    """
    from kerastl import _version as kv

    versions = f"kerastl {kv.__version__}|tensorflow {_version('tensorflow')}"
    runtime_pkg = RUNTIME_PACKAGES.get(runtime, runtime)
    return (
        f"{arch}|{input_size}|{runtime}|{sequence_length}|{params} params|{versions}|"
        f"{runtime_pkg} {_version(runtime_pkg)}|{_cpu()}"
    )


class CostCache:
    """Measured ``(size_mb, latency_ms)`` per :func:`cost_key`: this process, or also on disk.

    A disk file that cannot be read is reported and replaced, never trusted in part;
    writes go through a temporary file, so a killed run leaves the old file whole.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "costs.json"
        >>> CostCache("disk", path).put("k", (13.5, 1.2))
        >>> CostCache._memory.clear()  # a new process
        >>> CostCache("disk", path).get("k")
        (13.5, 1.2)
        >>> CostCache("memory", path).get("other") is None
        True
    """

    _memory: dict[str, tuple[float | None, float | None]] = {}

    def __init__(self, mode: str = "memory", path: str | os.PathLike | None = None):
        self.mode = mode
        self.path = Path(path) if path is not None else default_path()

    def get(self, key: str) -> tuple[float | None, float | None] | None:
        """The cost stored for ``key``, or ``None``; a disk hit is kept in memory too."""
        if key in self._memory:
            return self._memory[key]
        if self.mode != "disk":
            return None
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        value = (entry.get("size_mb"), entry.get("latency_ms"))
        self._memory[key] = value
        return value

    def put(self, key: str, value: tuple[float | None, float | None]) -> None:
        """Store ``value`` for ``key`` (and on disk in disk mode)."""
        self._memory[key] = value
        if self.mode != "disk":
            return
        entries = self._read()
        when = time.strftime("%Y-%m-%d")
        entries[key] = {"size_mb": value[0], "latency_ms": value[1], "measured": when}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".rank_costs.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entries, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only home: the figures stand, only unkept
            log.warning("rank: could not keep the costs in %s (%s)", self.path, exc)

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(entries, dict):
                raise ValueError(f"expected a JSON object, got {type(entries).__name__}")
        except (OSError, ValueError) as exc:
            log.warning(
                "rank: ignoring the cost cache %s (%s); it will be rewritten", self.path, exc
            )
            return {}
        return entries


@dataclass
class Pending:
    """An exported file whose batch-1 latency is timed later (:func:`time_pending`)."""

    key: str
    cache: str
    path: str
    size_mb: float


#: Files exported in this process whose latency is still to be timed, by :func:`cost_key`.
_PENDING: dict[str, Pending] = {}


def measure_cost(
    c: Any,
    model: Any,
    input_size: int,
    runtime: str,
    sample: Any,
    sequence_length: int | None = None,
    cache: str = "memory",
    later: str | os.PathLike | None = None,
) -> tuple[float | None, float | Pending | None, bool]:
    """``(size_mb, latency_ms, cached)`` of ``model`` (candidate ``c``) exported to
    ``runtime``, batch 1, its input ``sample``.

    Measured once per architecture and input (image side, text sequence length): kept
    for this process, and with ``cache="disk"`` across runs. ``cached``: the figures
    were measured earlier, not now. With ``later`` (a folder), the file is exported
    there and the latency is a :class:`Pending` for :func:`time_pending`.
    """
    if runtime == "none":
        return None, None, False
    costs = CostCache(cache)
    params = model.count_params() if model is not None else 0
    key = cost_key(c.arch_key, input_size, runtime, sequence_length, params)
    known = costs.get(key) or ((_PENDING[key].size_mb, _PENDING[key]) if key in _PENDING else None)
    if known is not None:
        return (*known, True)
    if later is not None:
        out = tempfile.mkdtemp(prefix="cost-", dir=later)
        size_mb, path = _export(model, out, runtime, sample)
        _PENDING[key] = Pending(key, cache, path, size_mb)
        return size_mb, _PENDING[key], False
    with tempfile.TemporaryDirectory(prefix="kerastl-rank-") as tmp:
        size_mb, path = _export(model, tmp, runtime, sample)
        latency = _latency(path, sample)
    costs.put(key, (size_mb, latency))
    return size_mb, latency, False


def time_pending(pending: Pending, sample: Any) -> float:
    """Time a :class:`Pending` file on ``sample`` (batch 1), keep the cost, delete the file."""
    try:
        latency = _latency(pending.path, sample)
    finally:
        shutil.rmtree(os.path.dirname(pending.path), ignore_errors=True)
        _PENDING.pop(pending.key, None)
    CostCache(pending.cache).put(pending.key, (pending.size_mb, latency))
    return latency


def forget_pending(folder: str | os.PathLike) -> None:
    """Drop the :class:`Pending` files exported under ``folder`` (it is gone)."""
    root = os.path.join(os.fspath(folder), "")
    for key in [k for k, p in _PENDING.items() if p.path.startswith(root)]:
        del _PENDING[key]


def _export(model: Any, out: str, runtime: str, sample: Any) -> tuple[float, str]:
    """``(size_mb, path)`` of ``model`` exported to ``runtime`` in folder ``out``."""
    import kerastl

    # validated on the one sample (twice: batch sizes 1 and 2), not 16 synthetic inputs:
    # the file only has to be right, its latency is timed apart
    with _warnings_only("kerastl.export"):  # the row shows the size; no export log
        report = kerastl.export(
            model, out, formats=[runtime], latency_runs=1, validation_data=sample[:1]
        )
    art = next(a for a in report["artifacts"] if a["format"] == runtime)
    return art["size_bytes"] / 1e6, os.path.join(out, art["path"])


def _latency(path: str, sample: Any) -> float:
    """Batch-1 latency (ms) of the artifact at ``path`` on the first input of ``sample``."""
    import kerastl
    from kerastl.export.modalities import get_modality

    loaded = kerastl.load_artifact(path)
    # raw input -> the runtime's input (text: token ids; tokenising is not timed)
    x, _ = get_modality(loaded.metadata).coerce(sample[:1], "inputs")
    return loaded.latency_ms(x, runs=20, warmup=3)


@contextlib.contextmanager
def _warnings_only(logger_name: str) -> Iterator[None]:
    """Only warnings and errors from ``logger_name`` (and below it) while inside."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
