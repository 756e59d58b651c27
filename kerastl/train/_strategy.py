"""Choosing a tf.distribute strategy, precision and who writes (the chief)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from kerastl.errors import ConfigError, KerastlError, choice_error
from kerastl.train._config import PRECISIONS, STRATEGIES

log = logging.getLogger(__name__)


def tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` environment variable (``{}`` when unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG: not valid JSON ({exc}): {raw[:200]!r}.") from None
    check_tf_config(value)
    return value


_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def check_tf_config(value: Any) -> None:
    """Refuse a ``TF_CONFIG`` TensorFlow would fail on with a traceback: not an object, a
    cluster without this process's task, a task type the cluster does not list, an index
    that is not a whole number within the cluster.

    Example:
        >>> check_tf_config({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
        >>> check_tf_config({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}})
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: TF_CONFIG: task index 5 is not a 'worker' of the cluster (indices 0..1).
    """
    if not isinstance(value, dict):
        raise ConfigError(
            f"TF_CONFIG: expected a JSON object like {_TF_CONFIG_EXAMPLE}, got "
            f"{type(value).__name__}."
        )
    cluster = value.get("cluster")
    if cluster is None:
        return
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ConfigError(f"TF_CONFIG: 'cluster' must map task types to address lists, e.g. "
                          f"{_TF_CONFIG_EXAMPLE}.")  # fmt: skip
    task = value.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise ConfigError(
            "TF_CONFIG: a cluster needs this process's 'task', e.g. "
            f'"task": {{"type": "worker", "index": 0}} (got {task!r}).'
        )
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        raise ConfigError(
            f"TF_CONFIG: task type {kind!r} is not in the cluster; valid: {sorted(cluster)}."
        )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(
            f"TF_CONFIG: task index {index!r} is not a {kind!r} of the cluster (indices "
            f"0..{len(cluster[kind]) - 1})."
        )


def cluster_workers(config: dict[str, Any] | None = None) -> int:
    """How many chief + worker tasks ``TF_CONFIG`` names."""
    cluster = (config if config is not None else tf_config()).get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def is_chief(config: dict[str, Any] | None = None) -> bool:
    """True for the task that writes the run folder.

    The chief is task ``chief``, or ``worker`` 0 when the cluster has no chief,
    or the only process when ``TF_CONFIG`` is unset.

    Example:
        >>> is_chief({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
        False
    """
    config = tf_config() if config is None else config
    task = config.get("task") or {}
    if not task:
        return True
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    has_chief = bool(config.get("cluster", {}).get("chief"))
    return kind == "worker" and index == 0 and not has_chief


def worker_id(config: dict[str, Any] | None = None) -> str:
    """``"chief"``, ``"worker1"``... for naming per-worker files."""
    config = tf_config() if config is None else config
    task = config.get("task") or {}
    return "chief" if is_chief(config) else f"{task.get('type', 'worker')}{task.get('index', 0)}"


def write_dir(run_dir: str) -> str:
    """Where this task writes: ``run_dir`` on the chief, a temporary folder elsewhere.

    Every task of a multi-worker job must run the same saving code (the saves
    read distributed variables), but only the chief's files are kept. A worker's
    folder is named after the run and the worker, and emptied when it starts: one
    killed before it could delete its folder leaves that one only, until it runs again.

    Example:
        >>> write_dir("runs/exp1")  # without TF_CONFIG this process is the chief
        'runs/exp1'
    """
    if is_chief():
        return run_dir
    import hashlib
    import shutil
    from pathlib import Path

    key = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"kerastl_{worker_id()}_{key}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder)


def resolve_strategy_name(name: str = "auto") -> str:
    """Apply the ``auto`` rules: several GPUs -> mirrored; TF_CONFIG workers -> multi_worker.

    Example:
        >>> resolve_strategy_name("one_device")
        'one_device'
    """
    if name not in STRATEGIES:
        raise choice_error("strategy", name, STRATEGIES)
    if name != "auto":
        return name
    if cluster_workers() > 1:
        return "multi_worker"
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "one_device"


#: The MultiWorkerMirroredStrategy of this process, by TF_CONFIG (see get_strategy).
_MULTI_WORKER: dict[str, Any] = {}


def get_strategy(name: str = "auto", devices: list[str] | None = None):
    """Create the ``tf.distribute`` strategy for ``name``.

    Args:
        name: ``auto``, ``one_device``, ``mirrored``, ``multi_worker`` or ``tpu``.
        devices: Devices for ``mirrored`` (default: all GPUs, else the CPU).

    Returns:
        A ``tf.distribute.Strategy``. ``one_device`` returns the default
        strategy (whatever device TensorFlow places ops on).

    Example:
        >>> strategy = get_strategy("auto")  # doctest: +SKIP
        >>> strategy.num_replicas_in_sync  # doctest: +SKIP
        1
    """
    import tensorflow as tf

    resolved = resolve_strategy_name(name)
    if resolved == "one_device":
        return tf.distribute.get_strategy()
    if resolved == "mirrored":
        if devices is None and not tf.config.list_logical_devices("GPU"):
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            devices = cpus if len(cpus) > 1 else None  # logical CPUs, as configured by the user
        return tf.distribute.MirroredStrategy(devices=devices)
    if resolved == "multi_worker":
        if cluster_workers() == 0:
            raise ConfigError(
                "strategy='multi_worker' needs TF_CONFIG naming the cluster, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}.'
            )
        # One per process and cluster: a second MultiWorkerMirroredStrategy re-enables
        # collective ops on the running context, which can abort the other workers'
        # collectives ("Delete called on non-empty BufRendezvous") when train() runs again.
        key = os.environ.get("TF_CONFIG", "")
        if key not in _MULTI_WORKER:
            options = tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
            )
            _MULTI_WORKER[key] = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=options
            )
        return _MULTI_WORKER[key]
    # tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as exc:  # noqa: BLE001 - no TPU here
        raise KerastlError(
            f"strategy='tpu': no TPU could be reached ({type(exc).__name__}: {exc}). "
            "Use strategy='auto' on machines without a TPU."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def cpu_supports_bfloat16() -> bool:
    """True when the CPU has native bfloat16 instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str = "float32") -> str:
    """``auto`` -> ``mixed_float16`` with a GPU, else ``float32``; warn on a poor match."""
    if precision not in PRECISIONS:
        raise choice_error("precision", precision, PRECISIONS)
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if precision == "auto":
        return "mixed_float16" if has_gpu else "float32"
    if precision == "mixed_float16" and not has_gpu:
        log.warning(
            "precision=mixed_float16 without a GPU is slow on CPU; "
            "consider mixed_bfloat16 or float32."
        )
    if precision == "mixed_bfloat16" and not has_gpu and not cpu_supports_bfloat16():
        log.warning(
            "precision=mixed_bfloat16: this CPU has no native bfloat16 "
            "instructions; expect it to be slower than float32."
        )
    return precision


def set_precision(precision: str) -> str:
    """Set Keras' global dtype policy; returns the resolved policy name."""
    import keras

    resolved = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(resolved)
    return resolved


# -- Keras model.fit under MultiWorkerMirroredStrategy -------------------------------------
#
# Keras 3 (checked with 3.15) cannot fit under MultiWorkerMirroredStrategy (keras-team/keras
# #20585), and the Keras trainer has no hook to fix it from outside, so the model *instance*
# is patched (never the Keras classes) and only when the strategy really spans workers:
#
# 1. ``TensorFlowTrainer._maybe_symbolic_build`` builds optimizer and metric variables from a
#    first batch that it gets with ``strategy.reduce("MEAN", per_replica_batch)``; that reduce
#    fails eagerly across workers ("Attempt to convert a value (PerReplica...)"). Only shapes
#    and dtypes matter there, so this worker's first replica batch is used instead.
# 2. ``reduce_per_replica(..., "auto")`` reduces the step's logs across workers with
#    ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalar logs ("Invalid reduction
#    dimension 0 for input with 0 dimensions"). The wrapped steps return scalars as shape
#    ``[1]``: the mean over axis 0 of those across all replicas is the cross-replica mean,
#    a scalar again, which is what the logs should hold.
# 3. BatchNormalization's moving statistics have aggregation "none": each replica updates its
#    own copy from its own shard of the batch, so the workers end with different weights
#    (and only the chief's are saved). The wrapped train step all-reduces them (mean) after
#    each update, one batched collective per step. Because the moving averages are linear in
#    the batch statistics, the mean equals the moving average of the replicas' mean batch
#    statistics.


def strategy_name(strategy: Any) -> str:
    """The public ``tf.distribute`` class name of ``strategy`` (for logs and the model card).

    ``tf.distribute.MultiWorkerMirroredStrategy`` is implemented by a class named
    ``CollectiveAllReduceStrategy``, and ``one_device`` is TensorFlow's default strategy
    (``_DefaultDistributionStrategy``); report the names users know.

    Example:
        >>> import tensorflow as tf
        >>> strategy_name(tf.distribute.get_strategy())
        'default (one device)'
    """
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    name = type(strategy).__name__
    return "default (one device)" if name == "_DefaultDistributionStrategy" else name


def spans_workers(strategy: Any) -> bool:
    """True for a MultiWorkerMirroredStrategy whose cluster has more than one worker."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_mode()) if in_mode is not None else strategy.num_replicas_in_sync > 1


def chiefs_value(strategy: Any, value: int) -> int:
    """The chief's ``value``, on every worker of a multi-worker job (a collective: every
    worker must call it); ``value`` itself under any other strategy.

    Decisions each worker takes from shared files (which run folder a run takes) can race
    with the chief's writes; the chief's decision is the one its files follow.

    Example:
        >>> import tensorflow as tf
        >>> chiefs_value(tf.distribute.OneDeviceStrategy("/cpu:0"), 3)
        3
    """
    if not spans_workers(strategy):
        return value
    import tensorflow as tf

    # the chief's local replicas share its value, so their sum over the cluster is it
    mine = float(value) / len(strategy.extended.worker_devices) if is_chief() else 0.0
    per_replica = strategy.run(lambda: tf.constant(mine, tf.float64))
    return int(round(float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))))


def cluster_sum(strategy: Any, value: float) -> float:
    """The sum of every worker's ``value`` (a collective: every worker must call it);
    ``value`` itself under any other strategy."""
    if not spans_workers(strategy):
        return value
    import tensorflow as tf

    mine = float(value) / len(strategy.extended.worker_devices)  # summed over local replicas
    per_replica = strategy.run(lambda: tf.constant(mine, tf.float64))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


def prepare_fit(model: Any, strategy: Any) -> Any:
    """Make ``model.fit``/``evaluate`` work under ``strategy``; returns ``model``.

    A no-op except under a MultiWorkerMirroredStrategy spanning several workers,
    where it patches this model instance around Keras 3 bugs (see the comment
    above). Idempotent; call it before every ``fit`` (recompiling keeps it).

    Example:
        >>> prepare_fit(model, get_strategy("multi_worker")).fit(ds)  # doctest: +SKIP
    """
    if not spans_workers(strategy) or getattr(model, "_kerastl_multi_worker", False):
        return model
    import types

    import tensorflow as tf

    base_train_step, base_test_step = model.train_step, model.test_step

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(it),
                )
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def as_rank1(logs):
        return tf.nest.map_structure(
            lambda v: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v, logs
        )

    def train_step(data):
        logs = base_train_step(data)
        state = _moving_statistics(model)  # read when the step is traced (after compile)
        if state:
            ctx = tf.distribute.get_replica_context()
            means = ctx.all_reduce(
                tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in state]
            )
            for v, mean in zip(state, means):
                v.assign(mean)
        return as_rank1(logs)

    def test_step(data):
        return as_rank1(base_test_step(data))

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)
    model.train_step = train_step
    model.test_step = test_step
    model._kerastl_multi_worker = True
    return model


def _moving_statistics(model: Any) -> list:
    """Non-trainable float weights of the trainable BatchNormalization layers of ``model``."""
    import keras

    out = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            out += [w for w in layer.non_trainable_weights if "float" in str(w.dtype)]
    return out
