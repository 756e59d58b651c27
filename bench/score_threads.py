"""The rank scores with BLAS on its default threads vs on one thread (``one_blas_thread``).

    python -m bench.score_threads

``kerastl rank`` scores every candidate's frozen features with LogME (and on 20 random
subsets for its ``sure`` column), centred LogME, kNN and a ridge probe: NumPy / SciPy
matrix work on a few hundred rows. In one process that has run a TensorFlow feature pass
first (as rank does), the scoring of one candidate is timed both ways, alternating after
one untimed call; figures are medians of ``--runs`` calls:

* ``default``: BLAS with as many threads as the machine has cores (NumPy's default);
* ``one thread``: inside :func:`kerastl.decide._scores.one_blas_thread` (what rank does).

Each shape runs on a quiet machine and beside a busy neighbour: a child process that
spins one core for the whole measurement, as another job does. Writes
``bench/results_score_threads.md`` (RESULTS.md includes it).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results_score_threads.md"
#: (examples, feature dims, classes): rank's bench tasks (100-1000 images, EfficientNet-Lite0).
SHAPES = ((100, 1280, 10), (300, 1280, 10), (1000, 1280, 10))


def _spin(stop: Any) -> None:  # pragma: no cover - runs in the child
    while not stop.is_set():
        sum(range(10_000))


def _features(n: int, d: int, k: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    x = np.eye(k)[y] @ rng.normal(size=(k, d)) + 2 * rng.normal(size=(n, d))
    return np.maximum(x, 0).astype("float32"), y  # ReLU-like, as pooled features are


def _score_one(x: Any, y: Any) -> None:
    """What rank computes per candidate: every estimator, then LogME on 20 subsets."""
    from kerastl.decide._scores import ESTIMATORS, score, subset_scores, subsets

    for e in ESTIMATORS:
        score(x, y, e)
    subset_scores(x, y, subsets(y, 20), "logme")


def _median_pair(x: Any, y: Any, runs: int) -> tuple[float, float]:
    import numpy as np

    from kerastl.decide._scores import one_blas_thread

    def one() -> None:
        with one_blas_thread():
            _score_one(x, y)

    def default() -> None:
        _score_one(x, y)

    default(), one()
    a, b = [], []
    for i in range(runs):
        for fn, out in ((default, a), (one, b))[:: 1 if i % 2 == 0 else -1]:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return float(np.median(a)), float(np.median(b))


def _tf_feature_pass() -> None:
    """A feature pass, so TensorFlow's thread pools exist as they do in ``kerastl rank``."""
    import numpy as np

    import kerastl

    model = kerastl.build(
        "efficientnet_lite0", num_classes=10, weights=None, input_shape=(64, 64, 3)
    )
    model.predict(np.zeros((64, 64, 64, 3), "float32"), verbose=0)


def measure(runs: int) -> list[dict[str, Any]]:
    import threadpoolctl

    _tf_feature_pass()
    blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    rows = []
    for busy in (False, True):
        stop = mp.Event()
        child = mp.Process(target=_spin, args=(stop,), daemon=True) if busy else None
        if child:
            child.start()
        try:
            for n, d, k in SHAPES:
                x, y = _features(n, d, k)
                default, one = _median_pair(x, y, runs)
                rows.append({"busy": busy, "n": n, "d": d, "classes": k, "default_s": default,
                             "one_s": one, "blas_threads": max(blas or [0])})  # fmt: skip
                print(rows[-1], flush=True)
        finally:
            if child:
                stop.set()
                child.join()
    return rows


def markdown(rows: list[dict[str, Any]], command: str, commit: str) -> str:
    lines = [
        "## Rank scores: BLAS threads",
        "",
        f"`{command}` ({commit}; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} after the run).",
        "",
        "The scoring of one candidate (LogME, centred LogME, kNN, ridge probe, then LogME on "
        "20 subsets: what `kerastl rank` computes per candidate) on synthetic ReLU-like "
        "features, in one process that ran a TensorFlow feature pass first. `default`: "
        "BLAS on as many threads as cores (NumPy's default); `one thread`: inside "
        "`kerastl.decide._scores.one_blas_thread`, as rank runs it. The two ways alternate "
        "after one untimed call of each; medians of the timed calls. `one core busy`: a "
        "child process spins one core for the whole measurement, as another job would.",
        "",
        "| neighbour | examples x dims, classes | default BLAS threads | default s | one thread s "
        "| one thread / default |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'one core busy' if r['busy'] else 'quiet'} | {r['n']} x {r['d']}, {r['classes']} | "
            f"{r['blas_threads']} | {r['default_s']:.3f} | {r['one_s']:.3f} | "
            f"{r['one_s'] / r['default_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed calls of each way (median)")
    args = p.parse_args(argv)
    cmd = "python -m bench.score_threads" + (f" --runs {args.runs}" if args.runs != 5 else "")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=HERE).returncode
    md = markdown(measure(args.runs), cmd, commit + ("+changes" if dirty else ""))
    RESULTS_MD.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
