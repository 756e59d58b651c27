"""Choosing a tf.distribute strategy, precision and who writes (the chief)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from kerastl._errors import ConfigError, KerastlError, choice_error
from kerastl.train._config import PRECISIONS, STRATEGIES


def tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` environment variable (``{}`` when unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG: not valid JSON ({exc}): {raw[:200]!r}.") from None
    return value if isinstance(value, dict) else {}


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
    read distributed variables), but only the chief's files are kept.
    """
    if is_chief():
        return run_dir
    return tempfile.mkdtemp(prefix=f"kerastl_{worker_id()}_")


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
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
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
        print(
            "[kerastl] precision=mixed_float16 without a GPU is slow on CPU; "
            "consider mixed_bfloat16 or float32."
        )
    if precision == "mixed_bfloat16" and not has_gpu and not cpu_supports_bfloat16():
        print(
            "[kerastl] precision=mixed_bfloat16: this CPU has no native bfloat16 "
            "instructions; expect it to be slower than float32."
        )
    return precision


def set_precision(precision: str) -> str:
    """Set Keras' global dtype policy; returns the resolved policy name."""
    import keras

    resolved = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(resolved)
    return resolved
