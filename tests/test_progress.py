"""Progress bars redraw their line on a terminal and stay out of redirected logs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

REDRAWS = ("\r", "\x08", "\x1b[")  # carriage return, backspace, ANSI escape


def _feature_pass() -> None:
    import keras
    import tensorflow as tf

    from kerastl.train._cache import compute_features

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))
    x = np.zeros((12, 4, 4, 3), "float32")
    compute_features(model, tf.data.Dataset.from_tensor_slices((x, np.arange(12))).batch(4), 3)


def _demo_bar() -> None:
    from kerastl.train.demo import _EpochBar

    with _EpochBar(3, "fine-tuning (top)") as bar:
        tick = bar.callback()
        for epoch in range(3):
            tick.on_epoch_end(epoch, {"val_accuracy": 0.5})


def _rank_bar() -> None:
    from kerastl.core.progress import progress_bar

    assert list(progress_bar(range(3), desc="kerastl rank", unit="model")) == [0, 1, 2]


@pytest.mark.parametrize("draw", [_feature_pass, _demo_bar, _rank_bar])
@pytest.mark.parametrize("terminal", [False, True])
def test_a_bar_is_drawn_on_a_terminal_only(draw, terminal, capfd, monkeypatch):
    """Redirected (a log file, CI), a bar's carriage-return redraws would all stay in the file:
    the demo's log held 25 kB of them. On a terminal the bar is drawn (the control)."""
    if terminal:
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    draw()
    out, err = capfd.readouterr()
    written = out + err
    if terminal:
        assert "\r" in err, written
    else:
        assert not [c for c in REDRAWS if c in written], repr(written[:300])


def test_show_false_turns_the_bar_off_on_a_terminal_too(capfd, monkeypatch):
    from kerastl.core.progress import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert list(progress_bar(range(3), show=False, desc="quiet")) == [0, 1, 2]
    assert capfd.readouterr().err == ""
