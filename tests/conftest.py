"""Shared test setup: quiet TensorFlow, one seed, small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks' helpers

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bench._plain import informative_batchnorm  # noqa: E402


def _release_custom_gradients() -> bool:
    """Drop the gradients TensorFlow registered for ``tf.custom_gradient`` while tracing.

    In graph mode every traced ``custom_gradient`` call registers a gradient function
    under a fresh ``CustomGradient-<n>`` name in a global registry that is never
    cleared, and each function holds its whole traced graph, so every ``fit`` leaks
    its training graph and the model it captured (plain Keras too): about 300 MB per
    registry entry fitted, enough to take a test worker past 12 GB and into the OOM
    killer. Between tests no graph needs them any more.
    """
    from tensorflow.python.framework import ops

    registry = ops._gradient_registry._registry
    stale = [name for name in registry if name.startswith("CustomGradient-")]
    for name in stale:
        del registry[name]
    return bool(stale)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a test marked ``heavy`` run first, their heavy tests leading.

    Two workers draw tests in collection order. A two-minute test drawn last keeps one
    worker busy while the other idles; drawn early, the short tests fill in around it.
    A module's tests stay together, so its module-scoped fixtures are built once per worker.
    """
    module_of = {item: item.nodeid.split("::")[0] for item in items}
    first_seen = {m: i for i, m in reversed(list(enumerate(module_of.values())))}
    heavy_modules = {module_of[i] for i in items if i.get_closest_marker("heavy")}

    def key(item: pytest.Item) -> tuple[bool, int, bool]:
        module = module_of[item]
        heavy = item.get_closest_marker("heavy") is not None
        return module not in heavy_modules, first_seen[module], not heavy

    items.sort(key=key)


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Each test starts from a clean Keras session (names, global state) and frees the last."""
    yield
    import sys

    if "keras" in sys.modules:
        import gc

        import keras

        # One garbage collection, after the gradient registry lets go of its graphs:
        # clear_session's own would walk the same heap a second time (0.3 s a test).
        keras.backend.clear_session(free_memory=False)
        keras.config.set_dtype_policy("float32")
        if "tensorflow" in sys.modules:
            _release_custom_gradients()
        gc.collect()


def random_images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Raw 0-255 float32 images."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, channels)).astype("float32")


def layers_left_out(whole, part) -> list:
    """Weak references to the layers of ``whole`` (itself included) that ``part`` does not use.

    Once ``whole`` is dropped and collected, every reference should be dead: a live one is a
    layer the cut-out ``part`` still keeps in memory.
    """
    import weakref

    kept = {id(layer) for layer in part._flatten_layers(include_self=True, recursive=True)}
    return [
        weakref.ref(layer)
        for layer in whole._flatten_layers(include_self=True, recursive=True)
        if id(layer) not in kept
    ]


def class_images(n_per_class=8, classes=3, size=32, seed=0):
    """Classes that differ in brightness and texture, so even a random backbone separates them."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        base = rng.random((n_per_class, size, size, 3)) * 40 + 60 * c
        stripes = (np.arange(size) % (c + 2) == 0)[None, :, None, None] * 60
        xs.append(np.clip(base + stripes, 0, 255))
        ys += [c] * n_per_class
    return np.concatenate(xs).astype("uint8"), np.asarray(ys)


def informative(model, x):
    """Set BatchNorm moving statistics from one batch so a random-init model's outputs vary
    (:func:`bench._plain.informative_batchnorm`); returns ``model``.

    With ``weights=None`` the default statistics (mean 0, variance 1) shrink activations to
    ~1e-11 and every output is the same constant, which would make parity checks vacuous.
    """
    informative_batchnorm(model, x)
    return model


def calibrate_backbone(path, seed=0, images=None):
    """Random mobilenet_v3_small backbone weights with BatchNorm statistics measured on
    ``images`` (uint8, 32 x 32; default: :func:`class_images`), saved to ``path``.

    A randomly initialised backbone with frozen BatchNorm (mean 0, variance 1)
    outputs features near zero; with measured statistics its features vary
    with the input, which is what the tests need (a stand-in for pretrained
    weights, which cannot be downloaded here). Subprocess scripts import it with the
    tests folder on ``sys.path``.
    """
    import keras

    from kerastl.builder import build

    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    model = build("mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3), compile=False)
    x = class_images(8, 3)[0] if images is None else images
    informative(model, np.asarray(x).astype("float32"))
    model.get_layer("backbone").save_weights(str(path))
    keras.utils.clear_session()
    return str(path)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    """A mobilenet_v3_small backbone weights file whose features vary with the input
    (:func:`calibrate_backbone`): runs with a frozen backbone need one, since a frozen
    random-init backbone is refused (its features are the same for every example)."""
    return calibrate_backbone(tmp_path_factory.mktemp("w") / "calibrated.weights.h5")
