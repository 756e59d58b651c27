"""TensorFlow's Python log warnings that are noise where kerastl does what they warn of."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: The Python loggers TensorFlow's modules write to (``tf_logging`` and absl's).
TENSORFLOW_LOGGERS = ("tensorflow", "absl")


class _PhraseFilter(logging.Filter):
    """Moves TensorFlow's warnings that contain ``phrase`` to kerastl's debug log."""

    def __init__(self, phrase: str) -> None:
        super().__init__()
        self.phrase = phrase

    def filter(self, record: logging.LogRecord) -> bool:
        if self.phrase in record.getMessage():
            log.debug(f"tensorflow: {record.getMessage()}")
            return False
        return True


@contextlib.contextmanager
def quiet_tensorflow(phrase: str) -> Iterator[None]:
    """Move TensorFlow's Python log records (:data:`TENSORFLOW_LOGGERS`) that contain
    ``phrase`` to kerastl's debug log (shown with ``--debug``) while the block runs; other
    TensorFlow warnings pass.

    Example:
        >>> absl_log = logging.getLogger("absl")
        >>> with quiet_tensorflow("deprecated conversion path"):
        ...     [f.phrase for f in absl_log.filters]
        ['deprecated conversion path']
        >>> any(isinstance(f, _PhraseFilter) for f in absl_log.filters)
        False
    """
    flt = _PhraseFilter(phrase)
    loggers = [logging.getLogger(name) for name in TENSORFLOW_LOGGERS]
    for logger in loggers:
        logger.addFilter(flt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(flt)


def quiet_retracing() -> contextlib.AbstractContextManager:
    """Move TensorFlow's "N out of the last M calls ... triggered tf.function retracing"
    to kerastl's debug log while the block runs (:func:`quiet_tensorflow`).

    Where kerastl builds one model after another in a process (k-fold training, the
    candidates of ``kerastl rank`` and their exports), each traces its own functions from
    the same code: TensorFlow sees one function retraced and warns of a loop that "creates
    @tf.function repeatedly", which is what these loops are.

    Example:
        >>> with quiet_retracing():
        ...     [f.phrase for f in logging.getLogger("tensorflow").filters]
        ['tf.function retracing']
    """
    return quiet_tensorflow("tf.function retracing")
