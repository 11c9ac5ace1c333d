"""Video layers of the 3D models: time padding by frame repetition, and max
pooling that runs under float16 on a CPU.

An inflated 3D network (Carreira & Zisserman 2017) should see a clip of
identical frames exactly as its 2D parent sees one frame. With zero padding
in time, a k-tap temporal kernel at the clip's ends covers fewer real frames
than in the middle, so the ends drift from the 2D features; repeating the end
frames keeps every position identical. The ResNet-50 I3D in ``models/`` pads
time with this layer (``ZeroPadding3D`` stays available as an option there).

TensorFlow registers no float16 CPU kernel for ``MaxPool3D`` (nor its
gradients; float32 and bfloat16 only), so a 3D model with Keras's
``MaxPooling3D`` cannot even run forward under ``mixed_float16`` on a CPU.
:class:`VideoMaxPooling3D` pools float16 in float32 and casts back, which is
exact: the cast to float32 is lossless, max commutes with it, and the result
is one of the float16 inputs.
"""

import keras
from keras import ops

from gn_keras import _checks

DATA_FORMATS = ("channels_last", "channels_first")


@keras.saving.register_keras_serializable(package="gn_keras")
class TemporalReplicatePadding(keras.layers.Layer):
    """Repeat the first/last frame ``padding`` times along the time axis.

    Args:
      padding: frames added at each end (a non-negative integer).
      data_format: ``"channels_last"`` for ``(N, T, H, W, C)`` or
        ``"channels_first"`` for ``(N, C, T, H, W)``.
    """

    def __init__(self, padding=1, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        where = f"TemporalReplicatePadding(name={self.name!r})"
        _checks.check_int(padding, "`padding`", minimum=0, where=where)
        _checks.check_choice(data_format, "`data_format`", DATA_FORMATS, where=where)
        self.padding = padding
        self.data_format = data_format
        self._time_axis = 1 if data_format == "channels_last" else 2

    def call(self, inputs):
        if self.padding == 0:
            return inputs
        axis = self._time_axis
        length = ops.shape(inputs)[axis]
        first = ops.take(inputs, [0] * self.padding, axis=axis)
        last = ops.take(inputs, ops.full((self.padding,), length - 1, "int32"), axis=axis)
        return ops.concatenate([first, inputs, last], axis=axis)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if shape[self._time_axis] is not None:
            shape[self._time_axis] += 2 * self.padding
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable(package="gn_keras")
class VideoMaxPooling3D(keras.layers.MaxPooling3D):
    """``keras.layers.MaxPooling3D`` that also runs float16 on a CPU (same arguments).

    float16 inputs are pooled in float32 (exact, see the module docstring);
    other dtypes use TensorFlow's kernels directly.
    """

    def call(self, inputs):
        if keras.backend.standardize_dtype(inputs.dtype) != "float16":
            return super().call(inputs)
        return ops.cast(super().call(ops.cast(inputs, "float32")), "float16")
