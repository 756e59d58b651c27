"""Swap attributes of another library for the length of a block, then put them back.

kerastl replaces a few private functions of TensorFlow, TFLite and Keras while it traces
or converts a model (exact rewrites that save time or memory). Each swap goes through
:func:`patched`, so the originals come back on every exit, errors included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def patched(*swaps: tuple[Any, str, Any]) -> Iterator[None]:
    """Set ``owner.name = value`` for each ``(owner, name, value)`` while the block runs.

    The values in place before are restored in reverse order when the block ends.

    Example:
        >>> import types
        >>> ns = types.SimpleNamespace(f=len)
        >>> with patched((ns, "f", abs)):
        ...     ns.f(-2)
        2
        >>> ns.f is len
        True
    """
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, value in swaps:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
