"""``kerastl rank`` with worker processes (kerastl.decide._workers): the same table as one
process, latencies timed once nothing else runs, a dead worker's job run here, and no
``__main__`` guard needed in the user's script."""

from __future__ import annotations

import logging
import operator
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kerastl.decide._workers import jobs_of, run_jobs, worker_count
from kerastl.errors import ConfigError


def test_jobs_keep_a_model_its_taps_and_its_architecture_together():
    keys = [
        (("a", "imagenet"), "a:None"),
        (("b", "imagenet"), "b:None"),
        (("a", "imagenet"), "a:2"),  # a's tap: a's build
        (("a", None), "a:None"),  # random-init a: a's export
        (("c", "x.keras"), "c:None"),
        (("a", "y.keras"), "a:2"),  # another a's tap 2: the export of a:2
    ]
    assert jobs_of(keys) == [[0, 2, 3, 5], [1], [4]]
    assert jobs_of([]) == []


def test_worker_count_refuses_what_is_not_a_positive_integer():
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ConfigError, match=r"^workers: expected a positive integer"):
            worker_count(bad, jobs=3)
    assert worker_count(None, jobs=1) == 1 and worker_count(8, jobs=3) == 3


def test_a_dead_workers_job_runs_in_this_process(caplog):
    """The worker exits in the middle of its job (os._exit): the job comes back and runs
    here; every job is reported once."""
    got = []
    with caplog.at_level(logging.WARNING, logger="kerastl"):
        run_jobs(
            [3, 4, 5, 6],
            local=lambda j: time.sleep(1.0) or j * 10,
            remote=os._exit,  # the worker dies with exit code = the job
            done=lambda j, r: got.append((j, r)),
            workers=2,
        )
    assert sorted(got) == [(3, 30), (4, 40), (5, 50), (6, 60)], got
    assert "a rank worker failed" in caplog.text and "its job runs in this process" in caplog.text


def test_a_script_without_a_main_guard_runs_once_and_its_worker_takes_jobs(tmp_path):
    """multiprocessing's spawn would run the user's script again in each worker; the
    loky workers do not. The worker's results (negated) show it ranked some jobs."""
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent("""
        import operator, time
        from kerastl.decide._workers import run_jobs
        print("script body", flush=True)
        got = {}
        run_jobs(list(range(1, 7)), local=lambda j: time.sleep(1.5) or j, remote=operator.neg,
                 done=got.__setitem__, workers=2)
        print(sorted(got.items()), flush=True)
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines.count("script body") == 1, out.stdout
    results = dict(eval(lines[-1]))  # noqa: S307 - our own script's printed list
    assert sorted(results) == list(range(1, 7))
    by_worker = [j for j, r in results.items() if r == operator.neg(j)]
    here = [j for j, r in results.items() if r == j]
    assert by_worker and here and 1 in here, results  # the largest (first) job runs here


def _digits(n_per_class: int = 12):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:n_per_class] for c in (0, 1, 2)])
    return (d.images[idx] * 16).astype("uint8"), d.target[idx]


def test_rank_with_two_workers_gives_the_table_of_one_and_times_latency_after(monkeypatch):
    """Two architectures, two jobs: one ranked in this process, one in a worker. Scores,
    sureness and file sizes are those of one process; every latency is timed after the
    ranking (none while the worker computes), and the worker's features are kept here."""
    pytest.importorskip("tensorflow")
    import kerastl
    from kerastl.decide import _costs, _rank
    from kerastl.train._cache import FeatureCache

    x, y = _digits()
    cands = "efficientnet_lite0:tap2,efficientnet_lite1:tap2"

    def table(workers: int):
        FeatureCache.clear_memory()
        monkeypatch.setattr(_costs.CostCache, "_memory", {})
        return kerastl.rank((x, y), cands, input_size=32, runtime="tflite", progress=False,
                            workers=workers)  # fmt: skip

    one = table(1)
    local_jobs, timed_with = [], []
    real_job, real_time = _rank.rank_job, _rank._time_latencies
    monkeypatch.setattr(_rank, "rank_job", lambda job, *a, **k: local_jobs.append(job) or
                        real_job(job, *a, **k))  # fmt: skip
    monkeypatch.setattr(_rank, "_time_latencies", lambda rows, run: timed_with.append(
        [type(r["latency_ms"]).__name__ for r in rows]) or real_time(rows, run))  # fmt: skip
    two = table(2)
    assert two.workers == 2 and one.workers == 1
    assert len(local_jobs) == 1, local_jobs  # the other job was the worker's
    assert timed_with == [["Pending", "Pending"]]  # nothing timed during the ranking
    assert not _costs._PENDING  # and the exported files are gone
    by = {r["candidate"]: r for r in one.rows}
    for r in two.rows:
        o = by[r["candidate"]]
        for k in ("logme", "knn", "probe", "size_mb", "sure"):
            same = r[k] is o[k] is None or r[k] == pytest.approx(o[k], rel=1e-6)
            assert same, (r["candidate"], k, r[k], o[k])
        assert isinstance(r["latency_ms"], float) and r["latency_ms"] > 0
        assert not r["cost_failed"] and not r["failed"]
    assert [r["candidate"] for r in two.rows] == [r["candidate"] for r in one.rows]
    assert one.rows[0]["sure"] is not None  # the two scores differ: a lead to be sure of
    assert len(FeatureCache._memory) == 2  # both candidates' features, the worker's too
    assert two.seconds["wall"] < two.seconds["features_and_scores"] + two.seconds["cost"] + 60
