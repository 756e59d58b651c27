"""Candidates of ``kerastl rank`` ranked side by side, in this process and worker processes.

Most of a candidate's ranking time on a small data set is not arithmetic that fills the
cores: it is building the Keras model, tracing its functions, writing the SavedModel the
TFLite converter reads, and converting it, which run on one core. So ``workers``
processes ranking candidates at once finish sooner (bench/results_rank_cost.md).

The candidates are split into jobs so that nothing is done twice: a model's taps go with
it (one build of the backbone, :func:`kerastl.builder.shared_backbones`) and every
candidate of one architecture goes to the same job (one export measures its cost). This
process works through the jobs from the largest down and each worker takes the next
job the moment it is free. A worker that dies hands its job back to this process.

The workers are joblib's loky processes (started by fork and exec: TensorFlow is not safe
to fork). Unlike :mod:`multiprocessing`'s ``spawn``, loky does not run the user's script
again in each worker, so a script that calls :func:`kerastl.rank` needs no
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from joblib.externals.loky import ProcessPoolExecutor

from kerastl.errors import check_positive_int, one_line

log = logging.getLogger(__name__)

#: At most this many processes when ``workers`` is left to kerastl: each holds its own
#: TensorFlow runtime, model and copy of array data.
AUTO_MAX = 4


def jobs_of(keys: Sequence[tuple[Any, Any]]) -> list[list[int]]:
    """Indices of the candidates, grouped into jobs: candidates that share a model and
    weights (``keys[i][0]``) or an architecture (``keys[i][1]``) are in one job. Jobs
    come largest first (ties as given); in a job, the indices are in the given order.

    Example:
        >>> jobs_of([(("lite0", "imagenet"), "lite0:None"), (("lite1", "imagenet"), "lite1:None"),
        ...          (("lite0", "imagenet"), "lite0:2"), (("lite0", None), "lite0:None")])
        [[0, 2, 3], [1]]
    """
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for field in (0, 1):
        first: dict[Any, int] = {}
        for i, k in enumerate(keys):
            parent[root(i)] = root(first.setdefault(k[field], i))
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def cores() -> int:
    """The CPU cores this process may use: its affinity, and a container's CPU quota
    (loky reads the cgroup limit that ``os.sched_getaffinity`` does not see).

    Example:
        >>> cores() >= 1
        True
    """
    from joblib.externals.loky import cpu_count

    return cpu_count()


def worker_count(workers: int | None, jobs: int, gpu: bool = False) -> int:
    """How many processes rank (this one included): ``workers``, or when ``None`` one
    per core up to :data:`AUTO_MAX` (one if ``gpu``: each TensorFlow process would take
    the GPU's memory, and there the feature pass is not what takes the time); never more
    than there are jobs.

    Raises:
        ConfigError: ``workers`` is not a positive integer.

    Example:
        >>> worker_count(3, jobs=2), worker_count(1, jobs=5), worker_count(None, 5, gpu=True)
        (2, 1, 1)
        >>> worker_count(0, jobs=2)
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: workers: expected a positive integer or None (one per CPU core, at most 4), got 0.
    """
    check_positive_int("workers", workers, none_means=f"one per CPU core, at most {AUTO_MAX}")
    if workers is None:
        workers = 1 if gpu else min(cores(), AUTO_MAX)
    return max(1, min(workers, jobs))


def run_jobs(
    jobs: list[Any],
    local: Callable[[Any], Any],
    remote: Callable[[Any], Any],
    done: Callable[[Any, Any], None],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> int:
    """Run every job once and hand ``done(job, result)`` each result, in this process;
    returns how many processes took part.

    This process runs ``local(job)``; ``workers - 1`` worker processes run ``remote(job)``
    (a picklable module-level function, after ``initializer(*initargs)``; pass a
    snapshot, not objects this process goes on changing). A job whose worker failed (it
    died, or its result could not come back) is run here; so is every job when no worker
    process can be started (no ``/dev/shm``, inside a joblib worker, ...).

    Example:
        >>> got = []
        >>> run_jobs([1, 2, 3], lambda j: j * 10, None, lambda j, r: got.append(r), workers=1)
        1
        >>> got
        [10, 20, 30]
    """
    pool = _pool(workers - 1, initializer, initargs) if workers > 1 and len(jobs) > 1 else None
    if pool is None:
        for job in jobs:
            done(job, local(job))
        return 1
    feeder = _Feeder(deque(jobs), pool, remote)
    try:
        job = feeder.next_job()  # the largest job: this process starts at once
        feeder.start(workers - 1)
        while job is not None or feeder.running():
            if job is not None:
                done(job, local(job))
            feeder.hand_over(done, block=job is None)
            job = feeder.next_job()
    except BaseException:
        pool.shutdown(wait=True, kill_workers=True)  # killed first: no job is waited for
        raise
    pool.shutdown(wait=True)  # the workers are idle: they exit at once
    return 1 + len(feeder.helped)


def _pool(n: int, initializer: Callable[..., None] | None, initargs: tuple) -> Any:
    """loky's process pool of ``n`` workers, or ``None`` (said once) if it cannot start."""
    try:
        from joblib.externals.loky import ProcessPoolExecutor
        from joblib.externals.loky.backend.context import get_context

        # loky's own start method (fork and exec), whatever joblib's default is
        context = get_context("loky")
        return ProcessPoolExecutor(n, context=context, initializer=initializer, initargs=initargs)
    except Exception as exc:  # noqa: BLE001 - one process still does the whole job
        log.warning("no worker process could start (%s); ranking in this process", one_line(exc))
        return None


class _Feeder:
    """The queue of jobs, and one thread per worker that hands it the next job as soon
    as it has sent back the last one (so a worker never waits for this process)."""

    def __init__(
        self, todo: deque, pool: ProcessPoolExecutor, remote: Callable[[Any], Any]
    ) -> None:
        self.todo, self.pool, self.remote = todo, pool, remote
        self.lock = threading.Lock()
        self.results: queue.Queue[tuple[Any, Any, BaseException | None]] = queue.Queue()
        self.taken = 0  # jobs a worker took whose result has not been handed over
        self.helped: set[int] = set()  # the feeder threads whose worker sent a result

    def next_job(self, remote: bool = False) -> Any:
        """The next job of the queue (``None``: empty); ``remote``: a worker takes it."""
        with self.lock:
            if not self.todo:
                return None
            self.taken += remote
            return self.todo.popleft()

    def running(self) -> bool:
        """Whether a worker holds a job whose result is not handed over yet."""
        with self.lock:
            return self.taken > 0

    def start(self, n: int) -> None:
        """Start ``n`` feeder threads, one per worker."""
        for k in range(n):
            threading.Thread(target=self._feed, args=(k,), daemon=True, name="kerastl-feed").start()

    def _feed(self, k: int) -> None:
        while (job := self.next_job(remote=True)) is not None:
            try:
                result = self.pool.submit(self.remote, job).result()
            except BaseException as exc:  # noqa: BLE001 - handed over; the job runs here
                self.results.put((job, None, exc))
                return  # a dead worker breaks the pool: this process takes the rest
            self.helped.add(k)
            self.results.put((job, result, None))

    def hand_over(self, done: Callable[[Any, Any], None], block: bool) -> None:
        """Report finished remote jobs to ``done``; a failed one goes back in the queue."""
        while True:
            try:
                job, result, error = self.results.get(block=block)
            except queue.Empty:
                return
            with self.lock:
                self.taken -= 1
                if error is not None:
                    self.todo.appendleft(job)
            if error is None:
                done(job, result)
            else:
                log.warning("a rank worker failed (%s); its job runs in this process",
                            one_line(error))  # fmt: skip
            block = False  # one result waited for; collect the others already in
