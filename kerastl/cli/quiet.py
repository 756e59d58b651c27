"""Keep TensorFlow's C++ / absl log lines off the terminal (the CLI, unless ``--debug``).

TensorFlow 2.21 logs through absl before ``absl::InitializeLog()`` is called, and absl
then writes every message to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says (the
``cudart_stub`` / ``cuInit`` / oneDNN / XNNPACK lines). The only switch left is the file
descriptor: :class:`NativeLogFilter` points fd 2 at a pipe and forwards every line to
the real stderr except the native log lines (:func:`is_native_log`). Python's own
messages (errors, warnings, ``logging``) go through untouched.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from typing import IO

#: Environment set before TensorFlow is imported (honoured by the parts that still read it).
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
}

_NATIVE = re.compile(
    r"^(?:[IWEF]\d{4} [\d:. ]+\s+\d+ [\w.-]+:\d+\]"  # absl / glog prefix
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|INFO: Created TensorFlow Lite"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|fully_quantize: \d+, inference_type: \d+)"  # the TFLite quantizer's settings
)


#: The last line written to the pipe: the pump stops there.
_END = b"\x00kerastl: end of the native log filter\n"


def is_native_log(line: str) -> bool:
    """Whether ``line`` is a TensorFlow/absl C++ log line.

    Example:
        >>> is_native_log("E0000 00:00:1795.123  1452 cuda_platform.cc:52] failed call to cuInit")
        True
        >>> is_native_log("fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32")
        True
        >>> is_native_log("kerastl export: error: model: expected a .keras file")
        False
    """
    return bool(_NATIVE.match(line))


class NativeLogFilter:
    """Context manager: fd 2 goes through a filter that drops native log lines.

    Example:
        >>> with NativeLogFilter():
        ...     pass
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._saved: int | None = None
        self._thread: threading.Thread | None = None
        self._python_stderr: IO[str] | None = None

    def __enter__(self) -> NativeLogFilter:
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
        except (OSError, ValueError):  # no real fd 2 (embedded interpreters)
            return self
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()
        if sys.stderr is sys.__stderr__ and sys.stderr is not None:
            # Python's own lines (logging, warnings) are never native log lines: they
            # skip the pipe, so they reach the terminal in order with stdout's lines
            # (through the pump thread they could come after later stdout lines).
            self._python_stderr = sys.stderr
            # its own copy of the terminal's descriptor: a handler made in the block (absl's,
            # when TensorFlow is imported) keeps writing to it after the block closes its own
            sys.stderr = io.TextIOWrapper(
                os.fdopen(os.dup(self._saved), "wb"),
                encoding=sys.stderr.encoding,
                errors="backslashreplace",
                line_buffering=True,
            )
        return self

    def _pump(self, read: int) -> None:
        out = os.fdopen(self._saved, "wb", closefd=False)
        with os.fdopen(read, "rb") as pipe:
            for raw in pipe:
                end = raw.endswith(_END)
                raw = raw[: -len(_END)] if end else raw
                if raw and not is_native_log(raw.decode("utf-8", "replace")):
                    out.write(raw)
                    out.flush()
                if end:  # the block is over, even if a child process still holds the pipe
                    return

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except ValueError:
            pass
        if self._python_stderr is not None:
            sys.stderr = self._python_stderr
            self._python_stderr = None
        # the pump stops at this line: a process started in the block (the resource
        # trackers of kerastl rank's worker pool live until this one exits) may still
        # hold the pipe, so its end of file would not come
        with contextlib.suppress(OSError):
            os.write(2, _END)
        os.dup2(self._saved, 2)  # the terminal again
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._saved)
        self._saved = None


def quiet_environment() -> None:
    """Set :data:`QUIET_ENV` (keeps values the user set) before TensorFlow is imported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
