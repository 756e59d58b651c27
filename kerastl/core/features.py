"""Facts about a frozen backbone's features that training and ``kerastl rank`` both check.

NumPy only: ``kerastl rank`` and ``kerastl advise`` import it without TensorFlow.
"""

from __future__ import annotations

import numpy as np

#: Feature RMS below which features are "collapsed" (:func:`collapsed`): numerically near
#: zero (e.g. random init with BatchNorm frozen at its initial statistics), so a head
#: trained on the raw features cannot learn, whatever the scale-invariant scores say.
COLLAPSED_RMS = 1e-6


def feature_rms(features: np.ndarray) -> float:
    """The root mean square of ``features`` (one row per example), in float64, without a
    float64 copy of the array.

    Example:
        >>> feature_rms(np.full((2, 3), 2.0, "float32"))
        2.0
    """
    f = np.asarray(features)
    f = f.reshape(len(f), -1)
    return float(np.sqrt(np.einsum("ij,ij->", f, f, dtype=np.float64) / max(f.size, 1)))


def collapsed(features: np.ndarray, rms: float | None = None) -> bool:
    """Whether frozen features carry nothing a head can learn from.

    Numerically zero (RMS below :data:`COLLAPSED_RMS`: random init with BatchNorm frozen
    at its initial statistics), or the same vector for every example (what varies is
    below a millionth of their size).

    Example:
        >>> collapsed(np.ones((4, 3))), collapsed(np.eye(3)), collapsed(np.eye(3) * 1e-9)
        (True, False, True)
    """
    f = np.asarray(features)
    f = f.reshape(len(f), -1)
    if rms is None:  # callers that report the RMS pass the one they computed
        rms = feature_rms(f)
    mean_sq = rms**2
    if rms < COLLAPSED_RMS:
        return True
    # what varies around each feature's mean, without an (n, d) float64 copy
    spread_sq = mean_sq - float(np.mean(np.square(f.mean(axis=0, dtype=np.float64))))
    return float(np.sqrt(max(spread_sq, 0.0))) <= 1e-6 * rms
