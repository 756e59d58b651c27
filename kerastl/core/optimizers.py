"""Optimizers kerastl models may be saved with (serialisable)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="kerastl")
class GroupRatesOptimizer(keras.optimizers.MultiOptimizer):
    """``keras.optimizers.MultiOptimizer`` that also steps a subset of its variables.

    Keras' version insists that every step gets gradients for every variable it
    was built with, which rules out :class:`GradualUnfreezing` (the trainable set
    grows during training). Here a step may cover any subset of those variables;
    each goes to its group's optimizer as before. An unknown variable is an error.
    """

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
