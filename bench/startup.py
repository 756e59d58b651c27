"""(6) Start-up: wall time of ``kerastl models`` and ``kerastl --help`` as a user runs them.

Each command is a fresh subprocess (the installed ``kerastl`` console script);
``python -c pass`` runs alternately with them as the floor any Python CLI pays.
Also checks that neither command imports TensorFlow (the reason it is fast).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench._harness import Bar, Section, alternate, fmt

BAR_SECONDS = 0.3


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "kerastl"
    if script.exists():
        return [str(script)]
    found = shutil.which("kerastl")
    return [found] if found else [sys.executable, "-m", "kerastl.cli"]


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-300:]}")
    return elapsed


HEAVY = ("tensorflow", "keras", "numpy", "yaml")


def _heavy_imports(args: list[str]) -> list[str]:
    """Which of :data:`HEAVY` a CLI invocation imports (each costs start-up time)."""
    code = (
        "import sys, contextlib, io\n"
        "from kerastl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    return [m for m in last.split(",") if m]


def run(quick: bool = False, reps: int | None = None) -> Section:
    """Measure start-up; ``reps`` overrides the repetition count (default 7 quick, 21 full)."""
    reps = reps or (7 if quick else 21)
    cli = _cli()
    commands = {
        "kerastl --help": [*cli, "--help"],
        "kerastl models": [*cli, "models"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    sec = Section("startup", "(6) Start-up time of the CLI", params={"reps": reps, "cli": cli})
    samples = alternate({k: (lambda c=c: _timed(c)) for k, c in commands.items()}, reps, warmup=1)
    t = sec.table(
        "Wall time of a fresh subprocess (median of alternating runs)",
        ["command", "median s", "min s", "max s", "runs", "load avg"],
    )
    for name, s in samples.items():
        t.rows.append(
            [
                name,
                fmt(s.median),
                fmt(min(s.values)),
                fmt(max(s.values)),
                len(s.values),
                fmt(s.load),
            ]
        )
    heavy = {
        name: _heavy_imports(args)
        for name, args in (("kerastl --help", ["--help"]), ("kerastl models", ["models"]))
    }
    numpy_s = alternate(
        {"import numpy": lambda: _timed([sys.executable, "-c", "import numpy"])},
        max(3, reps // 3),
        warmup=0,
    )["import numpy"]
    t.rows.append(
        [
            "python -c 'import numpy'",
            fmt(numpy_s.median),
            fmt(min(numpy_s.values)),
            fmt(max(numpy_s.values)),
            len(numpy_s.values),
            fmt(numpy_s.load),
        ]
    )
    for name in ("kerastl --help", "kerastl models"):
        s = samples[name]
        floor = samples["python -c pass"].median
        sec.bars.append(
            Bar(
                item=f"start-up `{name}`",
                bar=f"< {BAR_SECONDS} s",
                value=f"{s.median:.3f} s (min {min(s.values):.3f}, load {s.load})",
                met=s.median < BAR_SECONDS,
                note=("imports " + ", ".join(heavy[name]) if heavy[name] else "no heavy imports")
                + f"; bare `python -c pass` takes {floor:.3f} s, `import numpy` "
                f"{numpy_s.median:.3f} s here",
            )
        )
    sec.data = {k: v.as_dict() for k, v in samples.items()}
    sec.data["import numpy"] = numpy_s.as_dict()
    sec.data["heavy_imports"] = heavy
    if any("numpy" in v for v in heavy.values()):
        sec.notes.append(
            "The CLI imports numpy before it prints anything (see heavy_imports for the "
            "command): a module on the path of `kerastl.cli` imports it at package level, "
            "which costs the `import numpy` time above. Importing numpy inside the functions "
            "that need it would close most of the gap to the bar."
        )
    return sec
