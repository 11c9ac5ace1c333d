"""``Conv3D`` that runs as 2D convolutions over frames on CPUs without oneDNN.

Without oneDNN, TensorFlow's CPU ``Conv3D`` and its gradients are about 9×
slower than oneDNN's on an I3D step, while 2D convolutions lose under 2×
(see :mod:`gn_keras._platform`). A video conv with temporal stride 1 is a
sum of 2D convolutions: output frame t is Σ_τ conv2d(frame t+τ, kernel[τ])
over the kt temporal taps. So the layer folds time into the batch, runs one
``conv2d`` per tap and adds the taps' outputs shifted in time. I3D's convs
(§4.3's 1×1×1, 1×3×3 and 3×1×1 units) all qualify; a 1-frame kernel is one
2D convolution of the folded batch.

Same arguments, weights and results as ``keras.layers.Conv3D`` (the sum is
only reordered, so results agree to float rounding); anything else
(temporal strides or dilation, groups, channels_first, another backend, a
GPU or a oneDNN CPU, and graphs traced for an export, as
:mod:`gn_keras.portable` tells them) takes Keras's own path.
"""

import keras

from gn_keras import _internals, _platform, portable


def _frame_conv_applies(layer):
    return (
        _platform.tf_cpu_without_onednn()
        and layer.data_format == "channels_last"
        and layer.strides[0] == 1
        and tuple(layer.dilation_rate) == (1, 1, 1)
        and layer.groups == 1
        and not _traced_for_export()
    )


def _traced_for_export():
    """An export keeps ``Conv3D``: it runs elsewhere, where that may be faster.

    Without the private queries of :mod:`gn_keras._internals` no graph can
    be told apart from an export, so every traced graph keeps it.
    """
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    return not _internals.available() or portable.required()


def conv3d_as_frame_convs(inputs, kernel, spatial_strides, padding):
    """``Conv3D`` (NDHWC, temporal stride 1) as one ``conv2d`` per temporal tap."""
    import tensorflow as tf

    taps = kernel.shape[0]
    if padding == "same" and taps > 1:  # TF's "same" in time: (taps-1)//2 zeros before
        before = (taps - 1) // 2
        inputs = tf.pad(inputs, [[0, 0], [before, taps - 1 - before], [0, 0], [0, 0], [0, 0]])
    shape = tf.shape(inputs)
    frames = tf.reshape(inputs, tf.concat([[-1], shape[2:]], 0))
    out_frames = shape[1] - (taps - 1)
    total = None
    for tap in range(taps):
        y = tf.nn.conv2d(frames, kernel[tap], list(spatial_strides), padding.upper())
        y = tf.reshape(y, tf.concat([shape[:2], tf.shape(y)[1:]], 0))
        y = y[:, tap : tap + out_frames] if taps > 1 else y
        total = y if total is None else total + y
    return total


@keras.saving.register_keras_serializable(package="gn_keras")
class Conv3D(keras.layers.Conv3D):
    """``keras.layers.Conv3D`` that is fast on CPUs without oneDNN (same arguments)."""

    def convolution_op(self, inputs, kernel):
        if not _frame_conv_applies(self):
            return super().convolution_op(inputs, kernel)
        return conv3d_as_frame_convs(inputs, kernel, self.strides[1:], self.padding)
