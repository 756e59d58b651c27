"""Progress bars on standard error, drawn only where someone watches them."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def on_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (standard error by default) is a terminal.

    A bar redraws its line with carriage returns; written to a redirected log, every redraw
    stays in the file (a 45-epoch demo left 25 kB of them in one line).

    Example:
        >>> import io
        >>> on_terminal(io.StringIO())
        False
    """
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    iterable: Iterable | None = None, *, total: int | None = None, show: bool = True, **kwargs: Any
) -> Any:
    """A ``tqdm`` bar on standard error, off unless ``show`` and standard error is a terminal.

    Args:
        iterable: What to iterate over (``None``: update the bar by hand).
        total: Its length, when ``iterable`` has none.
        show: ``False`` turns the bar off everywhere (``progress=False``, ``--quiet``).
        **kwargs: Passed on to ``tqdm`` (``desc``, ``unit``, ``leave``).

    Example:
        >>> list(progress_bar(range(3), desc="quiet in a doctest"))
        [0, 1, 2]
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, disable=not (show and on_terminal()), **kwargs)
