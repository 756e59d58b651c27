"""Typed errors raised by kerastl, and the helper that words them.

Every error about user input names the argument, echoes the value received and
lists the valid choices, with close matches first (``difflib``), so a typo is
one glance away from its fix.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator


class KerastlError(Exception):
    """Base class of every error kerastl raises on purpose."""


class ConfigError(KerastlError, ValueError):
    """An argument, option or config key has a value kerastl cannot use."""


class UnknownNameError(ConfigError, KeyError):
    """A name (model, task, policy, format...) is not one of the known choices."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise.
        return str(self.args[0]) if self.args else ""


class WeightsError(KerastlError):
    """Weights could not be found, downloaded, verified or matched to the model."""


class DataError(KerastlError, ValueError):
    """Input data is missing, empty, corrupt or inconsistent with the task."""


class ExportError(KerastlError):
    """An export could not be written or did not pass validation."""


class ValidationError(ExportError):
    """An exported artifact does not match the Keras model within tolerance."""


class MissingDependencyError(KerastlError, ImportError):
    """An optional dependency is not installed; the message says what to install."""


def choice_error(
    argument: str,
    value: object,
    choices: Iterable[str],
    *,
    what: str = "value",
    cls: type[KerastlError] = UnknownNameError,
    limit: int = 40,
    canonical: dict[str, str] | None = None,
) -> KerastlError:
    """Build an error for a value that is not one of ``choices``.

    Args:
        argument: Name of the argument or config key, e.g. ``"task"``.
        value: What was received.
        choices: The valid choices.
        what: Noun for the value in the message (``"model"``, ``"format"``).
        cls: Error class to instantiate.
        limit: Longest list of choices to print in full.
        canonical: Maps aliases among ``choices`` to the names to suggest.

    Returns:
        The error, ready to ``raise``.

    Example:
        >>> str(choice_error("task", "clasification", ["classification", "regression"]))
        "Unknown task='clasification'. Did you mean 'classification'? Valid choices: 'classification', 'regression'."
    """
    choices = sorted(set(choices))
    close = difflib.get_close_matches(str(value).lower(), choices, n=3, cutoff=0.6)
    if canonical:
        close = list(dict.fromkeys(canonical.get(c, c) for c in close))
        choices = sorted(set(canonical.get(c, c) for c in choices))
    if what == "value":
        msg = f"Unknown {argument}={value!r}."
    else:
        msg = f"Unknown {what} {value!r} (argument {argument!r})."
    if close:
        msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    if len(choices) <= limit:
        msg += " Valid choices: " + ", ".join(repr(c) for c in choices) + "."
    else:
        msg += f" {len(choices)} choices; list them with `kerastl models` or kerastl.list_models()."
    return cls(msg)


def unknown_arguments_error(
    caller: str,
    unknown: Iterable[str],
    accepted: dict[str, Iterable[str]],
    note: str = "",
) -> ConfigError:
    """Build an error for keyword arguments ``caller`` does not take.

    Names each unknown argument, suggests its close matches among every accepted
    argument, then lists the accepted ones by group.

    Args:
        caller: What was called, e.g. ``"kerastl.build()"``.
        unknown: The keyword arguments it does not take.
        accepted: Group label -> the arguments of that group, in the order to print.
        note: Said after the unknown names (``"mobilenet_v3_small is an image backbone"``).

    Returns:
        The :class:`ConfigError`, ready to ``raise``.

    Example:
        >>> str(unknown_arguments_error("f()", ["frezee"], {"its own": ["freeze", "dropout"]}))
        "f() takes no argument 'frezee'. Did you mean 'freeze'? The valid options are its own: freeze, dropout."
    """
    unknown = sorted(unknown)
    every = [a for group in accepted.values() for a in group]
    said = ", ".join(repr(u) for u in unknown)
    msg = f"{caller} takes no argument{'s' if len(unknown) > 1 else ''} {said}"
    msg += f" ({note})." if note else "."
    hints = []
    for u in unknown:
        close = difflib.get_close_matches(u, every, n=2, cutoff=0.6)
        close = close or difflib.get_close_matches(u.lower(), every, n=2, cutoff=0.6)
        if close:
            alone = len(unknown) == 1
            hints.append(" or ".join(repr(c) for c in close) + ("" if alone else f" for {u!r}"))
    if hints:
        msg += " Did you mean " + ", ".join(hints) + "?"
    groups = [f"{label}: {', '.join(names) or 'none'}" for label, names in accepted.items()]
    return ConfigError(msg + " The valid options are " + "; ".join(groups) + ".")


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception as one line: its type and the first line of its message (cut to
    ``limit`` characters, with an ellipsis).

    Example:
        >>> one_line(RuntimeError("converter crashed\\nsecond line"))
        'RuntimeError: converter crashed'
        >>> one_line(ValueError("x" * 50), limit=20)
        'ValueError: xxxxxxx…'
    """
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    text = f"{type(exc).__name__}: {first}".rstrip(": ")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def check_positive_int(argument: str, value: object, none_means: str | None = None) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is an integer >= 1 (not a bool).

    With ``none_means`` set, ``None`` is accepted too, and the message says what it means.

    Example:
        >>> check_positive_int("runs", 3)
        >>> check_positive_int("runs", 0)
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: runs: expected a positive integer, got 0.
        >>> check_positive_int("threads", 1.5, none_means="every core")
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: threads: expected a positive integer or None (every core), got 1.5.
    """
    if value is None and none_means is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        alt = "" if none_means is None else f" or None ({none_means})"
        raise ConfigError(f"{argument}: expected a positive integer{alt}, got {value!r}.")


def check_folds(folds: object, name: str = "folds") -> int:
    """``folds`` if it is a whole number >= 2 (not a bool), else a ConfigError naming ``name``.

    The one check of k-fold cross-validation's number of folds: ``kerastl.train.kfold``
    and ``kerastl train/evaluate --folds`` (before TensorFlow is imported).

    Example:
        >>> check_folds(3)
        3
        >>> check_folds(1, "--folds")
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: --folds: expected a whole number of folds >= 2 (at most the number of examples), got 1.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(
            f"{name}: expected a whole number of folds >= 2 (at most the number of examples), "
            f"got {folds!r}."
        )
    return folds


def missing_dependency(module: str, pip_name: str, feature: str) -> MissingDependencyError:
    """Error for an optional dependency that is not importable."""
    return MissingDependencyError(
        f"{feature} needs the optional package {module!r}, which is not installed. "
        f"Run: pip install {pip_name}"
    )


@contextlib.contextmanager
def flag_for(argument: str, flag: str) -> Iterator[None]:
    """A ConfigError about ``argument`` raised inside names the CLI's ``flag`` instead.

    The API names its own arguments (``num_threads``); a command that passes a flag's value
    on (``--threads``) wraps the call, so the message names what the user typed.

    Example:
        >>> with flag_for("num_threads", "--threads"):
        ...     check_positive_int("num_threads", 0)
        Traceback (most recent call last):
        ...
        kerastl.errors.ConfigError: --threads: expected a positive integer, got 0.
    """
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        if not text.startswith(f"{argument}:"):
            raise
        raise ConfigError(flag + text[len(argument) :]) from None
