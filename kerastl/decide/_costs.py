"""Where ``kerastl rank`` keeps what each candidate costs on the target runtime.

The exported file's size and its batch-1 latency depend on the architecture, the input
and the machine, not on the user's data or the weights' values, so each is measured once:
per process (``cache="memory"``), or across runs in ``~/.cache/kerastl/rank_costs.json``
(``cache="disk"``, the same switch as the feature cache). A disk entry is keyed by the
architecture, input size, runtime, sequence length, the versions of kerastl, TensorFlow
and the runtime's package, and this machine's CPU and core count, so a latency measured
elsewhere or under another converter is never reused.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import tempfile
import time
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
