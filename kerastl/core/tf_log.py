"""TensorFlow's Python log warnings that are noise where kerastl does what they warn of."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


class _RetracingFilter(logging.Filter):
    """Moves TensorFlow's 'triggered tf.function retracing' warning to kerastl's debug log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "tf.function retracing" in record.getMessage():
            log.debug(f"tensorflow: {record.getMessage()}")
            return False
        return True


@contextlib.contextmanager
def quiet_retracing() -> Iterator[None]:
    """Move TensorFlow's "N out of the last M calls ... triggered tf.function retracing"
    to kerastl's debug log (shown with ``--debug``) while the block runs; other TensorFlow
    warnings pass.

    Where kerastl builds one model after another in a process (k-fold training, the
    candidates of ``kerastl rank`` and their exports), each traces its own functions from
    the same code: TensorFlow sees one function retraced and warns of a loop that "creates
    @tf.function repeatedly", which is what these loops are.

    Example:
        >>> tf_log = logging.getLogger("tensorflow")
        >>> with quiet_retracing():
        ...     any(isinstance(f, _RetracingFilter) for f in tf_log.filters)
        True
        >>> any(isinstance(f, _RetracingFilter) for f in tf_log.filters)
        False
    """
    tf_log = logging.getLogger("tensorflow")
    flt = _RetracingFilter()
    tf_log.addFilter(flt)
    try:
        yield
    finally:
        tf_log.removeFilter(flt)
