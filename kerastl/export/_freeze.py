"""Freezing a traced function's variables into constants, one variable read at a time.

ONNX export and TFLite conversion in parts both start from the frozen GraphDef of the
inference function; TensorFlow's public ``convert_variables_to_constants_v2`` holds several
copies of the weights on the way, these steps hold one.
"""

from __future__ import annotations

from typing import Any


def freeze(concrete: Any) -> tuple[Any, list[int]]:
    """The function's GraphDef with its variables as constants, and the captures frozen.

    TensorFlow's public ``convert_variables_to_constants_v2`` goes on to import that
    GraphDef into a new function, whose graph is then serialised again: on ResNet-50
    that held about ten copies of the weights at once. The two steps it runs first
    (the ones tf2onnx itself uses for large models) give the GraphDef alone, with each
    variable read only when its constant is made (:func:`reading_when_needed`).
    """
    from tensorflow.python.framework import convert_to_constants as c2c

    data = reading_when_needed()(func=concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_def, converted = c2c._replace_variables_by_constants(converter_data=data)
    data.forget()
    return graph_def, list(converted)


def reading_when_needed() -> type:
    """TensorFlow's eager converter data, reading each variable when its constant is made.

    TensorFlow's reads every variable into numpy first and holds them all while it
    writes the constants: two copies of the weights at the freeze's peak (ConvNeXt-B:
    1.94 GB, 1.61 GB read one by one; the GraphDef is the same, byte for byte). The
    converter asks for a value two or three times in a row (the constant, its shape);
    the last one read is kept until another variable is read, or :meth:`forget`.
    """
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants as c2c

    last: list = [None, None]  # (variable, its value): one weight at a time

    class Unread:
        """A variable not read yet; its ``dtype`` is all the data table needs."""

        __slots__ = ("variable",)

        def __init__(self, variable: Any) -> None:
            self.variable = variable

        @property
        def dtype(self) -> Any:
            return self.variable.dtype

    class ReadOnUse(c2c._TensorData):
        __slots__ = ()

        @property
        def numpy(self) -> Any:
            value = self[0]
            if not isinstance(value, Unread):
                return value
            if last[0] is not value.variable:
                last[:] = [None, None]  # the previous value goes before the next is read
                last[:] = [value.variable, value.variable.numpy()]
            return last[1]

    class Data(c2c._FunctionConverterDataInEager):
        def _eval(self, tensor: Any) -> Any:
            return Unread(tensor) if isinstance(tensor, tf.Variable) else tensor.numpy()

        def _build_tensor_data(self) -> None:
            super()._build_tensor_data()
            for name, entry in list(self._tensor_data.items()):
                self._tensor_data[name] = ReadOnUse(*entry)

        def forget(self) -> None:
            """Let go of the last value read."""
            last[:] = [None, None]

    return Data
