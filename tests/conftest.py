"""Shared test setup: quiet TensorFlow, one seed, small helpers."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Each test starts from a clean Keras session (names, global state)."""
    yield
    import sys

    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session()
        keras.config.set_dtype_policy("float32")


def random_images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Raw 0-255 float32 images."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, channels)).astype("float32")
