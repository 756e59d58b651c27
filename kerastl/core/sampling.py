"""Choosing a few of many items evenly (NumPy only)."""

from __future__ import annotations

import numpy as np


def spread(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` items, spread evenly from the first to the last.

    Lists are often sorted (images by class, layers by depth): a prefix would take one
    end only. ``limit`` ``None`` or at least ``n``: all of them.

    Example:
        >>> spread(24, 5).tolist(), spread(3, 5).tolist(), spread(4, None).tolist()
        ([0, 6, 12, 17, 23], [0, 1, 2], [0, 1, 2, 3])
    """
    if limit is None or n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(int)
