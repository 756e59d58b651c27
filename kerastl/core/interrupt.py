"""Ctrl-C that libraries cannot swallow.

A ``KeyboardInterrupt`` raised while Keras traces a function can land in one
of its bare ``except:`` blocks and vanish, and the run then carries on as if
nothing happened. The command line installs :func:`install`: the first SIGINT
is remembered here as well as raised, and training callbacks call
:func:`check` at every step and epoch boundary, so a swallowed interrupt is
raised again at the next one.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def _handler(signum, frame):
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through :func:`_handler` (main thread only; otherwise a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def requested() -> bool:
    """True once Ctrl-C was pressed in this process."""
    return _requested.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed (again, if it was swallowed)."""
    if _requested.is_set():
        raise KeyboardInterrupt


def reset() -> None:
    """Forget an earlier Ctrl-C (tests)."""
    _requested.clear()
