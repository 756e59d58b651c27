"""Memory TensorFlow frees goes back to the OS in a process that imported kerastl."""

import os
import subprocess
import sys

SCRIPT = """
import kerastl, psutil, tensorflow as tf
from kerastl.export.formats.base import release_memory
rss = lambda: psutil.Process().memory_info().rss / 2**20
tf.zeros((8,)).numpy()  # the CPU device and its allocator
before = rss()
held = [tf.random.uniform((25 * 2**20 // 4,)) for _ in range(16)]  # 400 MiB in 25 MiB tensors
held = [t + 1.0 for t in held]
del held
release_memory()
print(round(rss() - before))
"""


def _kept_mib(env_value: str | None, onednn: str | None = None) -> int:
    env = dict(os.environ)
    env.pop("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", None)
    if env_value is not None:
        env["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = env_value
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_importing_kerastl_lets_tensorflow_hand_freed_tensors_back():
    """400 MiB of tensors made and dropped: with kerastl's default under 100 MiB stays
    resident; with the user's explicit ``0`` (kept, not overridden) TensorFlow's oneDNN
    pool keeps most of it. TensorFlow turns oneDNN on by itself only on CPUs with AVX-512
    (an AMD EPYC without it returned the memory either way), so the pair also runs with
    oneDNN turned on (``TF_ENABLE_ONEDNN_OPTS=1``), where the pool shows on any x86 CPU."""
    assert _kept_mib(None) < 100
    assert _kept_mib(None, onednn="1") < 100
    assert _kept_mib("0", onednn="1") > 300
