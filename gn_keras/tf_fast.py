"""TensorFlow fast path for ``group_norm``: closed-form gradient, fused kernels.

This module owns how Group Normalization runs when Keras uses the TensorFlow
backend.  The math is the paper's (§3, Eqns. 1, 2, 6, 7) and the numerics
are those of the ``keras.ops`` reference in :mod:`gn_keras.functional`
(shifted mean, so a constant group returns β exactly; two-pass variance;
float32 statistics for 16-bit inputs; output in the input dtype).  What
changes is how the work is laid out, measured on ResNet-50 stage shapes on
CPU (see docs/performance.md):

* The input is viewed as ``(N, A, G, C/G, B)``: ``A`` gathers the axes
  before the channel axis, ``B`` those after it, so every rank and channel
  axis uses one kernel.  Sums run per channel over ``A`` and ``B`` first and
  only then over the group's ``C/G`` channels, which keeps the long
  reduction over contiguous channels; the sums are matmuls with a vector
  of ones, which beat XLA's reductions on CPU several times over, taken in
  chunks added in float64 so that large groups lose no accuracy
  (:mod:`gn_keras.tf_sums`).
* γ is folded into the inverse standard deviation, so the output is one
  multiply-add per element on the shifted input.
* The backward pass is closed-form (``tf.custom_gradient``): two per-channel
  sums, ``Σ dy`` and ``Σ dy·(x − μ)``, give dβ, dγ and the two per-group
  terms of dx, which is then one elementwise pass
  ``dx = σ⁻¹γ·dy − σ⁻²k₂·(x − μ) − σ⁻¹k₁``.
* In training graphs (``tf.function`` traced under a recording
  ``GradientTape``, as Keras's ``fit`` does) with every non-batch dimension
  static, the forward and backward kernels are nested
  ``tf.function(jit_compile=True)`` calls: each is one XLA program while
  the convolutions stay on oneDNN (compiled once per layer and input shape,
  on the first step).  Inference graphs, hence SavedModels and every export
  converted from them (tf2onnx cannot convert an XLA-compiled call),
  unknown spatial sizes and eager calls run the same ops plainly: nothing
  compiles at load time or per input size.
* Where the optional compiled kernels of :mod:`gn_keras.kernels` are
  built, float32/bfloat16/float16 inputs on CPU, channels last or first
  (``axis=1``), run them
  instead, in eager calls, training graphs and the graphs of Keras's
  ``fit``/``evaluate``/``predict``; they read the input once for the
  statistics and once for the output.  The user's own inference
  functions, graphs that leave the process (SavedModels, ONNX, LiteRT;
  see :mod:`gn_keras.portable`), graphs compiled whole by XLA, and
  machines with a GPU keep the TensorFlow ops above.
  Graphs that leave the process run the plain forward without the custom
  gradient: TensorFlow differentiates it (the shift is a constant that
  cancels), so a loaded SavedModel needs no saved gradient function.

Second-order gradients are supported: the gradient of the closed-form
backward is taken by autodiff through the plain forward ops, recomputed.
"""

import functools
import typing

import keras
import tensorflow as tf

from gn_keras import _internals, kernels, portable, tf_sums
from gn_keras.functional import apply_activation, statistics_dtype

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# The input dtypes the compiled kernels take (float32 statistics).
_KERNEL_DTYPES = ("float16", "bfloat16", "float32")


def _dtype_name(dtype):
    return keras.backend.standardize_dtype(dtype)


def supports(x):
    """Whether :func:`group_norm` handles ``x`` (masks are the caller's check)."""
    return tf.is_tensor(x) and _dtype_name(x.dtype) in _FLOAT_DTYPES


def group_norm(x, gamma, beta, groups, axis, epsilon, activation=None):
    """Group-normalize the TensorFlow tensor ``x``, arguments already validated.

    ``axis`` is the non-negative channel axis, ``groups`` the resolved group
    count; ``gamma``/``beta`` are per-channel vectors or None.
    ``activation`` (a name of :data:`FUSED_ACTIVATIONS`, or None) is applied
    to the result: the compiled kernels fuse it (no pass of its own, forward
    or backward); every other implementation runs it after the
    normalization.
    """
    # A tf.Variable read inside the custom gradient would need the
    # ``variables=`` protocol; reading it here keeps x a plain input.
    x = tf.convert_to_tensor(x)
    channels = int(x.shape[axis])
    stats_dtype = tf.as_dtype(statistics_dtype(x.dtype))
    layout = _Layout(channels, groups, axis, float(epsilon), len(x.shape), stats_dtype.name)
    gamma = _affine(gamma, channels, 1.0, stats_dtype)
    beta = _affine(beta, channels, 0.0, stats_dtype)
    implementation = _choose_kernels(x, layout)
    if implementation is FUSED and activation in FUSED_ACTIVATIONS:
        layout = layout._replace(activation=activation)
        return _normalize_with_closed_form_gradient(x, gamma, beta, layout, implementation)
    if implementation is PORTABLE:
        y = _forward(x, gamma, beta, layout)[0]
    else:
        y = _normalize_with_closed_form_gradient(x, gamma, beta, layout, implementation)
    return apply_activation(y, activation)


# The activations the compiled kernels fuse.
FUSED_ACTIVATIONS = ("relu", "silu")


class _Layout(typing.NamedTuple):
    """Static facts about one call; plain values, so they key kernel traces."""

    channels: int
    groups: int
    axis: int
    epsilon: float
    rank: int
    stats_dtype_name: str
    activation: str | None = None  # fused into the compiled kernels only

    @property
    def data_format(self):
        """The compiled kernels' name for the channel axis's place (axis 1 or last)."""
        return "channels_last" if self.axis == self.rank - 1 else "channels_first"

    @property
    def group_width(self):
        return self.channels // self.groups

    @property
    def stats_dtype(self):
        return tf.as_dtype(self.stats_dtype_name)

    def grouped(self, t):
        """View ``t`` as ``(N, A, G, C/G, B)`` in the statistics dtype."""
        shape = tf.shape(t)
        view = [
            _dim(t, shape, 0, 1),
            _dim(t, shape, 1, self.axis),
            self.groups,
            self.group_width,
            _dim(t, shape, self.axis + 1, self.rank),
        ]
        return tf.reshape(tf.cast(t, self.stats_dtype), view)

    def per_channel(self, vector):
        return tf.reshape(vector, [1, 1, self.groups, self.group_width, 1])

    def group_count(self, x5):
        """Elements per group, M = A·(C/G)·B, as a statistics-dtype scalar."""
        count = tf.shape(x5)[1] * self.group_width * tf.shape(x5)[4]
        return tf.cast(count, self.stats_dtype)


class _Kernels(typing.NamedTuple):
    """One implementation of the forward and the closed-form backward."""

    name: str
    forward: typing.Callable
    backward: typing.Callable


def _choose_kernels(x, layout):
    """The fastest implementation allowed for this call (module docstring).

    Without the private TensorFlow/Keras queries of :mod:`gn_keras._internals`
    no graph can be told apart from an export, so every call is portable.
    """
    if not _internals.available():
        return PORTABLE
    if not tf.executing_eagerly() and portable.required():
        return PORTABLE
    if _fused_allowed(x, layout) and kernels.load() is not None:
        return FUSED
    if _use_xla(x):
        return XLA
    return PLAIN


def _fused_allowed(x, layout):
    """Channels last or first, a dtype the kernels take, CPU, and a graph that stays here.

    In graphs: not inside XLA (it compiles the whole graph and knows no
    custom op), and only training graphs or Keras's own loops
    (:mod:`gn_keras.portable` says why).
    """
    if layout.axis not in (1, layout.rank - 1) or _dtype_name(x.dtype) not in _KERNEL_DTYPES:
        return False
    if _gpu_visible():
        return False
    if tf.executing_eagerly():
        return True
    if _internals.graph_in_xla_context():
        return False
    return _internals.tape_could_record() or portable.keras_loop_on_stack()


@functools.cache
def _gpu_visible():
    return bool(tf.config.list_logical_devices("GPU"))


def _use_xla(x):
    """Whether to run the XLA-compiled kernels for this call.

    Only in training graphs (a tape records while tracing, as in Keras's
    ``fit``): inference graphs, and the SavedModels and converted exports
    traced from them, keep plain ops and compile nothing at load time.  And
    only for static non-batch sizes: XLA compiles one program per shape, so
    at most a few batch sizes recompile.
    """
    return (
        not tf.executing_eagerly()
        and x.shape[1:].is_fully_defined()
        and _internals.tape_could_record()
    )


def _dim(t, shape, start, stop):
    """Product of dims ``start:stop`` of ``t``: a Python int when static."""
    static = t.shape[start:stop]
    if static.is_fully_defined():
        return static.num_elements()
    return tf.reduce_prod(shape[start:stop])


def _affine(vector, channels, fill, dtype):
    if vector is None:
        return tf.fill([channels], tf.constant(fill, dtype))
    # tf.convert_to_tensor reads a (Keras) variable; keras.ops would hand
    # back the variable itself, which tf.custom_gradient rejects.
    return tf.convert_to_tensor(vector)


def _forward(x, gamma, beta, layout):
    """Eqns. (1), (2), (6): return y and the statistics the backward reuses.

    The mean is kept as ``shift + delta``: ``shift`` is the group's first
    element, ``delta`` the mean of ``x − shift``.  ``x − shift`` is exact for
    inputs near the shift and ``delta`` is of the order of σ, so nothing
    cancels when |μ| ≫ σ, and a constant group gives exactly β.  The output
    ``(x − shift)·a + (β − delta·a)``, a = γ/σ, is one multiply-add on the
    shifted input, so unfused (inference) graphs make one pass fewer.
    """
    x5 = layout.grouped(x)
    count = layout.group_count(x5)
    shift = x5[:, :1, :, :1, :1]
    shifted = x5 - tf.stop_gradient(shift)
    delta = tf_sums.group_sum(shifted) / count
    variance = tf_sums.group_sum(tf.math.squared_difference(shifted, delta)) / count
    inv_std = tf.math.rsqrt(variance + tf.constant(layout.epsilon, layout.stats_dtype))
    scale = inv_std * layout.per_channel(tf.cast(gamma, layout.stats_dtype))
    offset = layout.per_channel(tf.cast(beta, layout.stats_dtype)) - delta * scale
    y = tf.cast(tf.reshape(shifted * scale + offset, tf.shape(x)), x.dtype)
    return y, (shift, delta, inv_std)


def _backward(x, gamma, beta, dy, statistics, layout):
    """Closed-form dx, dγ, dβ of Eqns. (1), (2), (6) from two per-channel sums."""
    del beta  # the fused kernel's activation gradient needs it; no activation here
    shift, delta, inv_std = statistics
    x5, dy5 = layout.grouped(x), layout.grouped(dy)
    gamma5 = layout.per_channel(tf.cast(gamma, layout.stats_dtype))
    count = layout.group_count(x5)
    centred = (x5 - shift) - delta
    sum_dy = tf_sums.channel_sum(dy5)
    sum_dy_centred = tf_sums.channel_sum(dy5 * centred)
    dbeta = tf.reshape(tf.reduce_sum(sum_dy, axis=0), [layout.channels])
    dgamma = tf.reshape(tf.reduce_sum(sum_dy_centred * inv_std, axis=0), [layout.channels])
    # Group means of γ·dy and of γ·dy·x̂: the two terms that the mean and
    # the variance contribute to dx.
    mean_gdy = tf.reduce_sum(gamma5 * sum_dy, axis=3, keepdims=True) / count
    mean_gdy_xhat = tf.reduce_sum(gamma5 * sum_dy_centred, axis=3, keepdims=True) * inv_std / count
    dx5 = (
        (inv_std * gamma5) * dy5
        - (inv_std * inv_std * mean_gdy_xhat) * centred
        - inv_std * mean_gdy
    )
    dx = tf.cast(tf.reshape(dx5, tf.shape(x)), x.dtype)
    return dx, dgamma, dbeta


def _fused_forward(x, gamma, beta, layout):
    """The compiled kernel's forward; statistics (N, G) float32."""
    y, shift, delta, inv_std = kernels.load().gn_keras_group_norm(
        x, tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32),
        groups=layout.groups, epsilon=layout.epsilon, activation=layout.activation or "none",
        data_format=layout.data_format,
    )  # fmt: skip
    return y, (shift, delta, inv_std)


def _fused_backward(x, gamma, beta, dy, statistics, layout):
    return kernels.load().gn_keras_group_norm_grad(
        x, tf.cast(dy, x.dtype), tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32),
        *statistics, groups=layout.groups, activation=layout.activation or "none",
        data_format=layout.data_format,
    )  # fmt: skip


PLAIN = _Kernels("plain", _forward, _backward)
# Graphs that leave the process: the plain forward with TensorFlow's own
# gradients.  A custom gradient would be saved without its Python function
# (TF warns about it on every load), and exports rarely need gradients.
PORTABLE = _Kernels("portable", _forward, None)
# One trace per layout, relaxed to any batch and spatial size; TensorFlow
# still compiles one XLA program per call site and input shape.
XLA = _Kernels(
    "xla",
    tf.function(_forward, jit_compile=True, reduce_retracing=True),
    tf.function(_backward, jit_compile=True, reduce_retracing=True),
)
FUSED = _Kernels("fused", _fused_forward, _fused_backward)


def _normalize_with_closed_form_gradient(x, gamma, beta, layout, implementation):
    @tf.custom_gradient
    def normalize(x, gamma, beta):
        y, statistics = implementation.forward(x, gamma, beta, layout)

        def gradient(dy):
            dx, dgamma, dbeta = _first_order(x, gamma, beta, dy, statistics, layout, implementation)
            return dx, tf.cast(dgamma, gamma.dtype), tf.cast(dbeta, beta.dtype)

        return y, gradient

    return normalize(x, gamma, beta)


def _first_order(x, gamma, beta, dy, statistics, layout, implementation):
    """The closed-form backward, itself differentiable for second order."""

    @tf.custom_gradient
    def backward(x, gamma, dy):
        gradients = implementation.backward(x, gamma, beta, dy, statistics, layout)

        def second_order(*upstream):
            return _reverse_over_reverse(x, gamma, beta, dy, upstream, layout)

        return gradients, second_order

    return backward(x, gamma, dy)


def _reverse_over_reverse(x, gamma, beta, dy, upstream, layout):
    """Gradient of (dx, dγ, dβ) by autodiff of the plain forward, recomputed.

    The saved statistics are constants to the closed form; recomputing them
    under a tape restores their dependence on x, which second order needs.
    """
    targets = [x, gamma, dy]
    upstream = [
        tf.zeros_like(t) if u is None else tf.cast(u, t.dtype)
        for u, t in zip(upstream, (x, gamma, beta))
    ]
    with tf.GradientTape() as outer:
        outer.watch(targets)
        with tf.GradientTape() as inner:
            inner.watch([x, gamma, beta])
            y = apply_activation(_forward(x, gamma, beta, layout)[0], layout.activation)
        first = inner.gradient(y, [x, gamma, beta], output_gradients=dy)
    return outer.gradient(first, targets, output_gradients=upstream)
