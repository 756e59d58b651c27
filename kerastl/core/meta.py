"""The metadata every kerastl model carries, as one typed record.

A model's metadata is saved inside its ``.keras`` file (``kerastl_config``) and
copied into every exported artifact as JSON, so on disk it stays a plain dict;
:class:`ModelMeta` is how code reads and writes it.

Example:
    >>> meta = ModelMeta(backbone="resnet50", source="keras.applications", modality="image",
    ...                  task="classification", input={"shape": [224, 224, 3]},
    ...                  preprocessing="caffe", num_outputs=3, class_names=None)
    >>> list(meta.to_dict())[:6]
    ['kerastl_version', 'backbone', 'source', 'modality', 'task', 'num_outputs']
    >>> ModelMeta.from_dict(meta.to_dict()) == meta
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from kerastl._version import __version__


@dataclass(frozen=True)
class ModelMeta:
    """What a kerastl model is: backbone, task, classes, input and preprocessing.

    Fields left ``None`` are not written, except ``class_names`` and ``weights``
    of a model with a head (``num_outputs`` set), which are always written.
    Keys this version does not know are kept in ``extra`` and written back.
    """

    backbone: str | None = None
    source: str | None = None
    modality: str | None = None
    task: str | None = None
    input: dict[str, Any] = field(default_factory=dict)
    preprocessing: str | None = None
    kerastl_version: str = __version__
    head: str | None = None
    num_outputs: int | None = None
    class_names: list[str] | None = None
    output: str | None = None
    weights: str | None = None
    pooling: str | None = None
    dropout: float | None = None
    prototypes: dict[str, Any] | None = None
    feature_info: list[dict[str, Any]] | None = None
    freeze: str | None = None
    train_batchnorm: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _ORDER = (
        "kerastl_version backbone source modality task head num_outputs class_names input "
        "output preprocessing weights pooling dropout prototypes feature_info freeze "
        "train_batchnorm"
    ).split()

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in ``.keras`` files and artifacts."""
        keep = {"class_names", "weights"} if self.num_outputs is not None else set()
        out = {}
        for name in self._ORDER:
            value = getattr(self, name)
            if value is not None or name in keep:
                out[name] = copy.deepcopy(value)
        out.update(copy.deepcopy(self.extra))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Read a stored dict (unknown keys go to ``extra``)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**copy.deepcopy(values), extra=copy.deepcopy(extra))

    @classmethod
    def of(cls, model: Any) -> ModelMeta:
        """The metadata of ``model``; all ``None`` for a plain Keras model.

        Example:
            >>> ModelMeta.of(object()).task is None
            True
        """
        return cls.from_dict(getattr(model, "kerastl_config", None) or {})
