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


def _script(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` as a user's script (no ``__main__`` guard); a hang fails, not stalls."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_a_dead_workers_job_runs_in_this_process(tmp_path):
    """The worker exits in the middle of its job (os._exit): the job comes back and runs
    here, in one warning line; every job is reported once."""
    out = _script(
        tmp_path,
        """
        import logging, os, time
        from kerastl.decide._workers import run_jobs
        got = []
        n = run_jobs([3, 4, 5, 6], local=lambda j: time.sleep(1.0) or j * 10,
                     remote=os._exit,  # the worker dies with exit code = the job
                     done=lambda j, r: got.append((j, r)), workers=2)
        print(n, sorted(got), flush=True)
    """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 [(3, 30), (4, 40), (5, 50), (6, 60)]", out.stdout
    warned = [ln for ln in out.stderr.splitlines() if "a rank worker failed" in ln]
    assert len(warned) == 1 and warned[0].endswith("its job runs in this process"), out.stderr


def test_no_worker_can_start_so_this_process_runs_every_job(monkeypatch, caplog):
    """No /dev/shm, a sandbox, a call inside a joblib worker: one process does it all."""
    from joblib.externals import loky

    def refuse(*args, **kwargs):
        raise OSError("[Errno 38] Function not implemented: '/dev/shm'")

    monkeypatch.setattr(loky, "ProcessPoolExecutor", refuse)
    got = []
    with caplog.at_level(logging.WARNING, logger="kerastl"):
        n = run_jobs([1, 2, 3], lambda j: j, operator.neg, lambda j, r: got.append(r), workers=2)
    assert n == 1 and got == [1, 2, 3]
    assert "no worker process could start (OSError: [Errno 38]" in caplog.text


def test_a_latency_that_cannot_be_timed_is_the_rows_cost_failure(tmp_path):
    """A file exported by a worker whose timing fails: the rows that share it say why,
    the scores stand, and the other rows keep their latency."""
    from kerastl.decide import _rank
    from kerastl.decide._costs import Pending

    gone = Pending("k1", "memory", str(tmp_path / "x" / "model.tflite"), 2.0)
    rows = [
        {"candidate": "a", "latency_ms": gone, "size_mb": 2.0, "cost_failed": None},
        {"candidate": "b", "latency_ms": 1.5, "size_mb": 3.0, "cost_failed": None},
        {"candidate": "a@random", "latency_ms": gone, "size_mb": 2.0, "cost_failed": None},
    ]
    x, y = _digits(2)
    run = _rank._Run(_rank.as_examples((x, y)), 32, "tflite", ("logme",), "logme", "memory", {})
    _rank._time_latencies(rows, run)
    for r in (rows[0], rows[2]):
        assert r["latency_ms"] is None and r["size_mb"] is None
        assert r["cost_failed"].startswith("cost on tflite failed: "), r
    assert rows[1]["latency_ms"] == 1.5 and rows[1]["cost_failed"] is None


def test_the_cli_filter_ends_while_a_child_still_holds_stderr():
    """A process started inside the filter (loky's resource trackers live as long as
    kerastl) keeps the pipe open: leaving the filter must not wait for it."""
    from kerastl.cli.quiet import NativeLogFilter

    f = NativeLogFilter()
    with f:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"])
    try:
        assert f._thread is not None and not f._thread.is_alive()
        assert child.poll() is None  # the child still runs, and holds the pipe
    finally:
        child.kill()
        child.wait()


def test_a_script_without_a_main_guard_runs_once_and_its_worker_takes_jobs(tmp_path):
    """multiprocessing's spawn would run the user's script again in each worker; the
    loky workers do not. The worker's results (negated) show it ranked some jobs."""
    out = _script(
        tmp_path,
        """
        import operator, time
        from kerastl.decide._workers import run_jobs
        print("script body", flush=True)
        got = {}
        n = run_jobs(list(range(1, 7)), local=lambda j: time.sleep(1.5) or j,
                     remote=operator.neg, done=got.__setitem__, workers=2)
        print(n, flush=True)
        print(sorted(got.items()), flush=True)
    """,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines.count("script body") == 1 and lines[-2] == "2", out.stdout
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


@pytest.mark.heavy
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
    local_jobs, timed_with, folders = [], [], []
    real_mkdtemp = _rank.tempfile.mkdtemp
    monkeypatch.setattr(_rank.tempfile, "mkdtemp", lambda *a, **k: folders.append(
        real_mkdtemp(*a, **k)) or folders[-1])  # fmt: skip
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
    rank_folders = [f for f in folders if os.path.basename(f).startswith("kerastl-rank-")]
    assert len(rank_folders) == 1 and not os.path.exists(rank_folders[0]), folders
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
    # a repeated rank in this process: the workers start with its costs and features
    again = kerastl.rank((x, y), cands, input_size=32, runtime="tflite", progress=False,
                         workers=2)  # fmt: skip
    assert again.workers == 2 and len(local_jobs) == 2
    assert all(r["cost_cached"] for r in again.rows), again.rows
    assert {r["candidate"]: r["latency_ms"] for r in again.rows} == {
        r["candidate"]: r["latency_ms"] for r in two.rows
    }
