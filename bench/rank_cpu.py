"""How many cores ``kerastl rank`` and the fine-tuning it stands in for keep busy.

``python bench/rank_cpu.py`` on digits (10 classes, 10 labels per class, 100 training
images, 64 px, the 8 candidates of bench/rank.py): CPU seconds (this process and its
worker processes) over wall seconds for ``kerastl.rank`` in 2 processes (``workers=2``), then in one
process (caches emptied before each), then for the two-phase fine-tuning of three of the
candidates. Writes bench/results_rank_cpu.md.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import rank as br  # noqa: E402


def usage() -> tuple[float, float, float]:
    """Wall clock, this process's CPU seconds, its finished children's CPU seconds."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def since(a: tuple[float, float, float]) -> dict[str, float]:
    """Wall, CPU (own, workers') and cores kept busy since ``a``."""
    b = usage()
    wall, own, kids = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    return {"wall": wall, "cpu_self": own, "cpu_workers": kids, "cores_busy": (own + kids) / wall}


def main() -> int:
    from kerastl.decide import parse_candidates, rank
    from kerastl.decide._costs import CostCache
    from kerastl.train._cache import FeatureCache

    spec = br.tasks(False)["digits10"]
    tr_ex, te_ex, _, _ = br._examples((*spec[:2], 10, *spec[3:]), 0)
    cands = parse_candidates(br.candidate_words(False, True))
    out = {}
    for w in (2, 1):
        FeatureCache.clear_memory()
        CostCache._memory.clear()
        a = usage()
        t = rank(tr_ex, cands, input_size=br.SIZE, runtime="tflite", progress=False, workers=w,
                 **br.build_options(tr_ex.modality))  # fmt: skip
        out[f"kerastl rank, {t.workers} process(es)"] = since(a)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    FeatureCache.clear_memory()
    tr, te = br._arrays(tr_ex, br.SIZE), br._arrays(te_ex, br.SIZE)
    a = usage()
    for c in cands[:3]:
        br.repeated(c, tr, te, 2, 3e-4, 40, 8, 1)
    out["two-phase fine-tuning of " + ", ".join(c.label for c in cands[:3])] = since(a)
    lines = ["## Cores kept busy: rank and fine-tuning", "", "`python bench/rank_cpu.py`", ""]
    lines += [__doc__.split("\n\n")[1].replace("\n", " "), "",
              "| run | wall (s) | CPU, this process (s) | CPU, workers (s) | cores busy |",
              "|---|---|---|---|---|"]  # fmt: skip
    for k, v in out.items():
        lines.append(f"| {k} | {v['wall']:.1f} | {v['cpu_self']:.1f} | {v['cpu_workers']:.1f} "
                     f"| {v['cores_busy']:.2f} |")  # fmt: skip
    lines += ["", f"Largest worker process: {rss:.0f} MB resident at its peak.", ""]
    Path(__file__).with_name("results_rank_cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
