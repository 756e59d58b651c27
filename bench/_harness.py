"""Measurement helpers shared by every benchmark section.

The rules every section follows:

* both sides of a comparison run in the same process (or the same invocation),
  one after the other, in alternating order (A B, B A, A B ...) for several
  repetitions, after at least one untimed warm-up each;
* figures are medians; ratios are ratios of medians;
* the 1-minute load average is recorded next to every figure, because this
  machine is shared and a figure taken at load 8 on 2 cores is not one taken at
  load 1.

A section is a function ``run(quick: bool) -> Section``; :class:`Section`
holds tables, bar checks and notes, and serialises to JSON for the report.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load1() -> float:
    """The 1-minute load average (``os.getloadavg()[0]``)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux
        return float("nan")


@dataclass
class Samples:
    """Repeated measurements of one side: values (seconds unless said) and load averages."""

    name: str
    values: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values)) if self.values else float("nan")

    @property
    def spread(self) -> float:
        """Relative half-range of the middle values ((q3 - q1) / 2 / median)."""
        if len(self.values) < 4:
            return float("nan")
        q = statistics.quantiles(self.values, n=4)
        return float((q[2] - q[0]) / 2 / self.median) if self.median else float("nan")

    @property
    def load(self) -> float:
        return round(float(statistics.mean(self.loads)), 2) if self.loads else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median": self.median,
            "n": len(self.values),
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "load": self.load,
            "values": [round(v, 6) for v in self.values],
        }


def alternate(
    sides: dict[str, Callable[[], float | None]],
    reps: int,
    warmup: int = 1,
) -> dict[str, Samples]:
    """Run each side ``reps`` times, alternating the order every round.

    Each callable either returns the figure it measured itself (seconds, or any
    number), a list of figures (pooled: e.g. every step of a round), or ``None``,
    in which case its wall time is the figure. Rounds go
    ``A B``, ``B A``, ``A B``... so slow drifts in machine load hit both sides
    alike. ``warmup`` untimed calls per side come first (tracing, caches).

    Example:
        >>> s = alternate({"a": lambda: None, "b": lambda: 1.0}, reps=3, warmup=0)
        >>> s["b"].values
        [1.0, 1.0, 1.0]
    """
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    out = {n: Samples(n) for n in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            before = load1()
            t0 = time.perf_counter()
            value = sides[n]()
            elapsed = time.perf_counter() - t0
            load = round((before + load1()) / 2, 2)
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                out[n].values.append(float(elapsed if v is None else v))
                out[n].loads.append(load)
    return out


_T0 = time.perf_counter()


def log(message: str) -> None:
    """Progress line on stderr with the elapsed time and load (children's stderr is shown on
    failure)."""
    print(
        f"[bench {time.perf_counter() - _T0:7.1f}s load {load1():.1f}] {message}",
        file=sys.stderr,
        flush=True,
    )


def ratio(a: float, b: float) -> float:
    """``a / b`` (``nan`` when ``b`` is 0 or missing)."""
    try:
        return float(a) / float(b) if b else float("nan")
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class Bar:
    """One bar of the issue: what is required, what was measured, met or not, and why."""

    item: str
    bar: str
    value: str
    met: bool | None
    note: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


@dataclass
class Section:
    """The result of one benchmark section (serialised into results.json)."""

    key: str
    title: str
    status: str = "ok"  # ok | pending | error
    reason: str = ""
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, columns: list[str]) -> Table:
        t = Table(title, columns)
        self.tables.append(t)
        return t

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Section:
        d = dict(d)
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        d["bars"] = [Bar(**b) for b in d.get("bars", [])]
        return cls(**d)


def fmt(value: Any, digits: int = 3) -> str:
    """Compact number formatting for tables."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def peak_rss_mb_self() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(
    code_args: list[str],
    timeout: float,
    max_rss_gb: float | None = None,
    env: dict[str, str] | None = None,
    poll: float = 0.5,
    min_available_gb: float = 1.0,
) -> dict[str, Any]:
    """Run ``python <code_args>`` and measure its wall time and peak resident memory.

    Peak memory is polled with psutil (whole process tree) and, as a check, read
    from ``getrusage(RUSAGE_CHILDREN)`` when the child ends. A child that passes
    ``max_rss_gb`` or ``timeout`` is killed and reported as such, and so is a child
    running while the machine's available memory falls below ``min_available_gb``
    (this machine is shared: better to lose a benchmark than to let the kernel's OOM
    killer pick another job).

    Returns:
        ``{"returncode", "seconds", "peak_rss_mb", "killed", "stdout", "stderr"}``.
    """
    import psutil

    full_env = dict(os.environ)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if env:
        full_env.update(env)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *code_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=str(ROOT),
        text=True,
    )
    peak = 0.0
    killed = None
    ps = psutil.Process(proc.pid)
    import threading

    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def drain(stream, key):
        for line in stream:
            chunks[key].append(line)

    threads = [
        threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
        threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True),
    ]
    for t in threads:
        t.start()
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss
            for c in ps.children(recursive=True):
                try:
                    rss += c.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss / 1e6)
        except psutil.Error:
            pass
        avail = psutil.virtual_memory().available / 1e9
        if max_rss_gb is not None and peak > max_rss_gb * 1000:
            killed = f"resident memory {peak / 1000:.1f} GB > {max_rss_gb:.1f} GB"
        elif avail < min_available_gb:
            killed = (
                f"machine's available memory {avail:.1f} GB < {min_available_gb} GB "
                f"(child at {peak / 1000:.1f} GB)"
            )
        elif time.perf_counter() - t0 > timeout:
            killed = f"over {timeout:.0f} s"
        if killed:
            proc.kill()
            proc.wait()
            break
        time.sleep(poll)
    seconds = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=5)
    rusage_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {
        "returncode": proc.returncode,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "rusage_children_max_mb": rusage_peak,
        "killed": killed,
        "stdout": "".join(chunks["out"]),
        "stderr": "".join(chunks["err"]),
    }


def last_json_line(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that parses as a JSON object (children print their result)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model and flags relevant to the figures, OS, load now."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["ram_available_gib"] = round(psutil.virtual_memory().available / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        # x86 lists its flags on "flags" lines, Arm on "Features" lines (bf16: Arm's)
        line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
        flags = set(line.partition(":")[2].split())
        wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "bf16")
        info["cpu_flags"] = [f for f in wanted if f in flags]
        fam = next((ln for ln in text.splitlines() if ln.startswith("cpu family")), "")
        info["cpu_family"] = fam.split(":", 1)[1].strip() if fam else None
    except OSError:  # pragma: no cover
        pass
    return info


def versions() -> dict[str, str]:
    """Versions of the packages the figures depend on (read from metadata: no imports)."""
    from importlib import metadata

    out = {}
    for pkg in (
        "kerastl",
        "tensorflow",
        "keras",
        "numpy",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "ai-edge-litert",
        "psutil",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        out["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["git"] = "?"
    return out


def quiet_tf() -> None:
    """Quiet TensorFlow/absl logging in a benchmark process (call before importing TF)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import warnings

    warnings.filterwarnings("ignore")
