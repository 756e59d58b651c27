"""Optimizers kerastl models may be saved with (serialisable)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras.saving import deserialize_keras_object, serialize_keras_object


@keras.saving.register_keras_serializable(package="kerastl")
class VariableGroups:
    """Which optimizer steps which variable: one optimizer per named group.

    A serialisable stand-in for the ``variable -> optimizer`` function of
    ``keras.optimizers.MultiOptimizer``: ``groups`` maps a group name to its
    optimizer (in a fixed order, which is the order of the saved optimizer
    state), ``assignment`` maps a variable path to its group name, and every
    other variable goes to ``default``. ``rates`` records each group's nominal
    learning rate (for reports; a group's optimizer may follow a schedule).

    Example:
        >>> groups = VariableGroups(
        ...     {"head": keras.optimizers.SGD(0.1), "block7": keras.optimizers.SGD(0.05)},
        ...     {"block7a/kernel": "block7"},
        ...     rates={"head": 0.1, "block7": 0.05},
        ... )
        >>> VariableGroups.from_config(groups.get_config()).assignment
        {'block7a/kernel': 'block7'}
    """

    def __init__(
        self,
        groups: Mapping[str, keras.optimizers.Optimizer],
        assignment: Mapping[str, str],
        default: str = "head",
        rates: Mapping[str, float] | None = None,
    ) -> None:
        groups = dict(groups)
        if default not in groups:
            raise ValueError(
                f"default: expected one of the group names {sorted(groups)}, got {default!r}."
            )
        unknown = sorted(set(assignment.values()) - set(groups))
        if unknown:
            raise ValueError(
                f"assignment: names groups {unknown} that are not among {sorted(groups)}."
            )
        self.groups = groups
        self.assignment = dict(assignment)
        self.default = default
        self.rates = {k: float(v) for k, v in (rates or {}).items()}

    @property
    def default_optimizer(self) -> keras.optimizers.Optimizer:
        return self.groups[self.default]

    def values(self):
        """The optimizers, in group order (``MultiOptimizer`` takes them in this order)."""
        return self.groups.values()

    def group_of(self, variable: Any) -> str:
        """The group name of ``variable`` (by its path)."""
        return self.assignment.get(variable.path, self.default)

    def __call__(self, variable: Any) -> keras.optimizers.Optimizer:
        return self.groups[self.group_of(variable)]

    def get_config(self) -> dict[str, Any]:
        return {
            "groups": {k: serialize_keras_object(v) for k, v in self.groups.items()},
            "assignment": dict(self.assignment),
            "default": self.default,
            "rates": dict(self.rates),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> VariableGroups:
        config = dict(config)
        config["groups"] = {
            k: deserialize_keras_object(v, custom_objects=custom_objects)
            for k, v in config["groups"].items()
        }
        return cls(**config)


@keras.saving.register_keras_serializable(package="kerastl")
class GroupRatesOptimizer(keras.optimizers.MultiOptimizer):
    """``keras.optimizers.MultiOptimizer`` that also steps a subset of its variables.

    Keras' version insists that every step gets gradients for every variable it
    was built with, which rules out :class:`GradualUnfreezing` (the trainable set
    grows during training). Here a step may cover any subset of those variables;
    each goes to its group's optimizer as before. An unknown variable is an error.

    Given a :class:`VariableGroups` (as :func:`kerastl.freeze.discriminative_optimizer`
    builds it) it saves and loads with the model: the group optimizers, their rates
    and the variable-to-group mapping round-trip. ``kerastl_group_rates`` gives
    each group's nominal learning rate.
    """

    @property
    def kerastl_group_rates(self) -> dict[str, float]:
        """Nominal learning rate per group (empty unless built from :class:`VariableGroups`)."""
        return dict(getattr(self._optimizer_map, "rates", {}))

    def apply(self, grads, trainable_variables=None):
        if (
            trainable_variables is None
            or not self.built
            or len(grads) == len(self._trainable_variables_indices)
        ):
            return super().apply(grads, trainable_variables)
        per_opt: list[list] = [[] for _ in self._inner_optimizers]
        for grad, var in zip(grads, trainable_variables):
            idx = self._var_to_optimizer_idx.get(self._var_key(var))
            if idx is None:
                raise ValueError(
                    f"variable {var.path!r} was not known when the optimizer was built; "
                    "build it on every variable that may become trainable."
                )
            per_opt[idx].append((grad, var))
        for opt, pairs in zip(self._inner_optimizers, per_opt):
            if pairs:
                opt.apply([g for g, _ in pairs], [v for _, v in pairs])
        self._iterations.assign_add(1)
