"""The contract every export format implements, and what the pipeline hands it.

:func:`kerastl.export.pipeline.export` knows no format by name: it asks each selected
:class:`Format` to check its options, plan its published paths, write its artifacts
into the staging folder, load them back and publish them. A format is one class in
one module of :mod:`kerastl.export.formats`, listed once in its ``FORMATS`` table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from kerastl.export._trace import Prepared
    from kerastl.export.artifact import Artifact


@dataclass(frozen=True)
class Options:
    """The arguments of :func:`kerastl.export` after the format list (as given)."""

    quantize: list[str] = field(default_factory=list)
    calibration_data: Any = None
    validation_data: Any = None
    name: str | None = None
    version: int | None = None
    int8_io: str = "float32"
    allow_flex: bool = False
    opset: int | None = None
    overwrite: bool = False
    tolerances: dict[str, dict[str, float]] | None = None
    max_validation_samples: int = 64
    max_calibration_samples: int = 500
    latency_runs: int = 10

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`kerastl.export` (values not copied)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Job:
    """What a format writes from: the traced model, its data and the staging folder."""

    prepared: Prepared
    name: str
    out: Path
    staging: Path
    options: Options
    targets: dict[tuple[str, str], Path]
    x_val: np.ndarray
    y_val: np.ndarray | None
    x_cal: np.ndarray | None
    reference: dict[str, np.ndarray]


@dataclass
class Staged:
    """One artifact to write into staging: ``write()`` returns the report's details.

    ``reference`` narrows the Keras outputs it is validated against (default: all).
    """

    precision: str
    path: Path
    write: Callable[[], dict[str, Any]]
    reference: dict[str, Any] | None = None


class Format:
    """An export format: the protocol :mod:`kerastl.export.pipeline` runs over.

    Attributes:
        name: The format's name in ``formats=`` and in the report.
        versioned: Published into a new numbered folder that is never overwritten
            (TF Serving); otherwise a file replaced only with ``overwrite=True``.
        reads_saved_model: Writes or converts from a SavedModel under ``out_dir``, which
            TensorFlow reads through a glob pattern (so ``[`` ``]`` in the path break it).
    """

    name: str = "base"
    versioned: bool = False
    reads_saved_model: bool = False

    def check_options(self, options: Options, formats: list[str]) -> None:
        """Refuse this format's options that are bad or given without the format."""

    def require(self) -> None:
        """Raise :class:`MissingDependencyError` when the format's packages are missing."""

    def targets(self, out: Path, name: str, options: Options, meta: dict) -> dict[str, Path]:
        """Precision -> published path of every artifact this format writes."""
        raise NotImplementedError

    def artifacts(self, job: Job) -> Iterator[Staged]:
        """The artifacts to write, in order (code between items runs outside their checks)."""
        raise NotImplementedError

    def load(self, path: Path) -> Artifact:
        """The staged artifact loaded in its runtime, for validation."""
        from kerastl.export.artifact import load_artifact

        return load_artifact(path, format=self.name)

    def non_builtin_ops(self, artifact: Artifact, path: Path) -> list[str]:
        """Ops outside the runtime's builtin set (reported per artifact)."""
        return []

    def publish(self, source: Path, target: Path) -> None:
        """Move a validated artifact from staging to ``target`` (its folder exists)."""
        from kerastl.export.formats.onnx import replace_file

        replace_file(source, target)
