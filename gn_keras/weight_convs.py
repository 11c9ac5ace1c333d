"""Convolutions that normalize their kernel instead of their features.

Two reparameterizations the norm family swaps in for ``Conv2D``/``Conv3D``:

* Weight Normalization (Salimans & Kingma 2016), the filter normalization
  the paper's footnote 3 compares with GN: each output channel's kernel is
  ``w = g · v / ‖v‖``, with ``v`` the stored kernel and ``g`` a learned gain.
* Weight Standardization (Qiao et al. 2019), paired with GN in BiT
  (Kolesnikov et al. 2020): each output channel's kernel is shifted to zero
  mean and scaled to unit variance over its (spatial, input-channel) entries
  before convolving.

Both keep every ``Conv2D``/``Conv3D`` argument, so a plain conv's config
rebuilds either one (see :func:`conv_config`), and both reduce over all
kernel axes but the last (the output channels).  The statistics are taken in
float32 even under a mixed-precision policy.
"""

import keras
from keras import ops

from gn_keras import _checks
from gn_keras.frame_conv3d import Conv3D

# Kernel norms are floored so an all-zero filter gives w = 0, not NaN.
_NORM_FLOOR = 1e-12
# BiT's weight-standardized convolution adds 1e-10 to the variance.
WS_EPSILON = 1e-10
# Config keys the subclasses add to a plain convolution's.
_EXTRA_KEYS = ("epsilon", "gain_initializer")


def _fan_in_axes(kernel):
    return tuple(range(len(kernel.shape) - 1))


def standardize_kernel(kernel, epsilon=WS_EPSILON):
    """Zero mean, unit variance per output channel (Weight Standardization)."""
    dtype = kernel.dtype
    kernel = ops.cast(kernel, "float32")
    mean, variance = ops.moments(kernel, axes=_fan_in_axes(kernel), keepdims=True)
    return ops.cast((kernel - mean) * ops.rsqrt(variance + epsilon), dtype)


def kernel_norms(kernel):
    """The L2 norm of each output channel's filter, shape ``(filters,)``."""
    kernel = ops.cast(kernel, "float32")
    return ops.sqrt(ops.sum(ops.square(kernel), axis=_fan_in_axes(kernel)))


def _check_epsilon(layer, epsilon):
    _checks.check_epsilon(epsilon, f"{type(layer).__name__}(name={layer.name!r})")


class _StandardizedKernel:
    """Mixin: convolve with the standardized kernel."""

    def __init__(self, *args, epsilon=WS_EPSILON, **kwargs):
        super().__init__(*args, **kwargs)
        _check_epsilon(self, epsilon)
        self.epsilon = float(epsilon)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, standardize_kernel(kernel, self.epsilon))

    def effective_kernel(self):
        return standardize_kernel(self.kernel, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


class _NormalizedKernel:
    """Mixin: convolve with ``g · v / ‖v‖`` per output channel.

    ``gain_initializer=None`` starts ``g`` at the norms of the initial
    kernel, so the layer starts as the plain conv its kernel initializer
    would give (e.g. He init); ``"zeros"`` starts the layer at output 0.
    """

    def __init__(self, *args, gain_initializer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain_initializer = (
            None if gain_initializer is None else keras.initializers.get(gain_initializer)
        )

    def build(self, input_shape):
        super().build(input_shape)
        initializer = self.gain_initializer
        if initializer is None:

            def initializer(shape, dtype=None):
                return ops.cast(kernel_norms(self.kernel), dtype)

        self.gain = self.add_weight(
            shape=(self.filters,),
            name="gain",
            initializer=initializer,
            trainable=True,
        )

    def _scaled(self, kernel):
        dtype = kernel.dtype
        norms = ops.maximum(kernel_norms(kernel), _NORM_FLOOR)
        scale = ops.cast(self.gain, "float32") / norms
        return ops.cast(ops.cast(kernel, "float32") * scale, dtype)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, self._scaled(kernel))

    def effective_kernel(self):
        return self._scaled(self.kernel)

    def match_gain_to_kernel(self):
        """Set ``g = ‖v‖`` so the effective kernel equals the stored one."""
        self.gain.assign(ops.cast(kernel_norms(self.kernel), self.gain.dtype))

    # Keras's conv saves only its kernel and bias, by position; the gain
    # goes in the next slot.
    def _gain_slot(self):
        return str(2 if self.use_bias else 1)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built:
            store[self._gain_slot()] = self.gain

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built:
            self.gain.assign(store[self._gain_slot()])

    def get_config(self):
        initializer = self.gain_initializer
        serialized = None if initializer is None else keras.initializers.serialize(initializer)
        return {**super().get_config(), "gain_initializer": serialized}


@keras.saving.register_keras_serializable(package="gn_keras")
class WSConv2D(_StandardizedKernel, keras.layers.Conv2D):
    """``Conv2D`` with a weight-standardized kernel (the BiT recipe's conv)."""


@keras.saving.register_keras_serializable(package="gn_keras")
class WSConv3D(_StandardizedKernel, Conv3D):
    """``Conv3D`` with a weight-standardized kernel."""


@keras.saving.register_keras_serializable(package="gn_keras")
class WNConv2D(_NormalizedKernel, keras.layers.Conv2D):
    """``Conv2D`` with a weight-normalized kernel (paper's footnote 3)."""


@keras.saving.register_keras_serializable(package="gn_keras")
class WNConv3D(_NormalizedKernel, Conv3D):
    """``Conv3D`` with a weight-normalized kernel."""


def effective_kernel(conv):
    """The kernel a convolution actually applies, for any of the classes."""
    if hasattr(conv, "effective_kernel"):
        return conv.effective_kernel()
    return conv.kernel


def conv_config(conv):
    """``conv``'s config without the keys only these subclasses accept."""
    return {key: value for key, value in conv.get_config().items() if key not in _EXTRA_KEYS}


def copy_conv_weights(source, target, kernel_transform=None):
    """Give built ``target`` the function of ``source`` as far as it can.

    The effective kernel of ``source`` (through ``kernel_transform`` if
    given, e.g. inflation to 3D) becomes ``target``'s stored kernel; a WN
    target then gets ``g = ‖kernel‖`` so it applies that kernel, while a
    standardized target still standardizes it, which is the point of WS.
    """
    kernel = effective_kernel(source)
    if kernel_transform is not None:
        kernel = kernel_transform(kernel)
    target.kernel.assign(ops.cast(kernel, target.kernel.dtype))
    if source.use_bias and target.use_bias:
        target.bias.assign(source.bias)
    if isinstance(target, _NormalizedKernel):
        target.match_gain_to_kernel()
