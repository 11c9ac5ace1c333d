"""The Group Normalization math as one backend-agnostic function.

``group_norm`` follows the paper's reference code (§3.2, Figure 3): split
the channel axis into ``(G, C/G)``, take the mean and variance over the
group's channels and every non-batch, non-channel axis, normalize, and apply
the per-channel γ, β of Eqn. (6).  It is written against ``keras.ops`` so it
runs on the TensorFlow, JAX and PyTorch backends.

Three choices go beyond the paper's listing:

* Statistics are computed in float32 whenever the input is a 16-bit float
  (and in float64 for float64 inputs), so mixed-precision models neither
  overflow the sum of squares nor lose the variance to rounding.  The
  result is cast back to the input dtype.  Dtypes are compared by their
  standardized names, since a torch or JAX dtype never equals a string.
* Means are sums divided by the element count: ``keras.ops.mean`` computes
  float64 inputs in float32 on the JAX and PyTorch backends.
* γ is folded into the inverse standard deviation: a per-(sample, channel)
  scale ``a = γ/σ`` is formed on the small statistics tensor and the big
  tensor is touched once more, as ``(x − μ)·a + β``.  The fully folded
  ``x·a + (β − μ·a)`` would save nothing (both are one fused pass) but
  cancels catastrophically when |μ| ≫ σ and cannot return β exactly for a
  constant input, so the centring stays inside the pass.

The mean is taken relative to the first element of each group (a shifted
sum, exact for constant inputs; the input is centred as ``(x − shift) −
mean(x − shift)``, never through a rounded mean) and the variance is
two-pass (the mean is subtracted before squaring), so both stay accurate
for inputs whose mean is far larger than their spread, e.g. mean 1e4 and
std 1 in float32.  Sums over long axes are taken in chunks
(:func:`chunking`), so that their error does not grow with the group's
size either.
"""

import functools

import keras
from keras import ops

from gn_keras import _checks


def statistics_dtype(dtype):
    """The dtype GN's statistics take for inputs of ``dtype`` (any backend's).

    float64 keeps float64; everything else (16-bit floats, float32,
    integers) is computed in float32.
    """
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def _output_dtype(dtype):
    """The input's dtype when it is a float, else the statistics dtype."""
    dtype = keras.backend.standardize_dtype(dtype)
    return dtype if keras.backend.is_float_dtype(dtype) else statistics_dtype(dtype)


def _grouped_shape(x, axis, groups):
    """The shape of ``x`` with its channel axis split into (groups, C/G)."""
    shape = list(ops.shape(x))
    channels = shape[axis]
    return shape[:axis] + [groups, channels // groups] + shape[axis + 1 :]


def _broadcast_shape(rank, axis, groups, channels):
    """Shape that lays a per-channel vector along (groups, C/G) at ``axis``."""
    shape = [1] * (rank + 1)
    shape[axis] = groups
    shape[axis + 1] = channels // groups
    return shape


def _element_count(xg, axes):
    """Elements of ``xg`` along ``axes``, in ``xg``'s dtype (dims may be dynamic)."""
    shape = ops.shape(xg)
    count = 1
    for axis in axes:
        count = count * shape[axis]
    return ops.cast(count, xg.dtype)


# The longest run of elements one sum adds up: longer sums are cut into
# chunks whose sums are added in turn, so that the rounding error of a
# group's mean and variance does not grow with the group's size (a plain
# float32 sum over the 16 M values of one group loses up to 1e-3 of the
# mean).  :mod:`gn_keras.tf_sums` adds its chunks in float64, and every
# ResNet stage's group is one chunk there; keras.ops, which JAX runs
# without float64, adds them in float32, chunk by chunk again.
CHUNK = 4096
# keras.ops reductions add each element in turn, the matmuls of tf_sums in
# several accumulators at once: shorter chunks keep them as accurate.
KERAS_OPS_CHUNK = 256


@functools.cache
def chunking(length, limit=CHUNK):
    """(chunks, chunk size, padding) for a sum over ``length`` elements.

    ``chunks · size = length + padding``, ``size <= limit`` and
    ``padding < chunks``.  The size divides ``length`` when such a size of
    at least ``limit / 4`` exists; else the sum is zero-padded.
    """
    if length <= limit:
        return 1, length, 0
    for size in range(limit, limit // 4 - 1, -1):
        if length % size == 0:
            return length // size, size, 0
    chunks = -(-length // limit)
    size = -(-length // chunks)
    return chunks, size, chunks * size - length


def _chunked_sum(t, axis):
    """``t`` summed over ``axis`` (kept, size 1), in chunks of <= KERAS_OPS_CHUNK elements.

    An axis of unknown length (TensorFlow graphs) is summed in one go.
    """
    length = t.shape[axis]
    if not isinstance(length, int) or length <= KERAS_OPS_CHUNK:
        return ops.sum(t, axis=axis, keepdims=True)
    chunks, size, padding = chunking(length, KERAS_OPS_CHUNK)
    if padding:
        widths = [(0, 0)] * len(t.shape)
        widths[axis] = (0, padding)
        t = ops.pad(t, widths)
    shape = list(ops.shape(t))
    partial = ops.sum(ops.reshape(t, shape[:axis] + [chunks, size] + shape[axis + 1 :]), axis + 1)
    return _chunked_sum(partial, axis)


def _group_sum(t, axis):
    """Sums of the grouped ``t`` over every axis but the batch and ``axis`` (kept, size 1).

    The axes before and after ``axis`` are merged (no copy) and each is
    summed in chunks.
    """
    shape = list(ops.shape(t))
    before, after = _product(shape[1:axis]), _product(shape[axis + 1 :])
    merged = ops.reshape(t, [shape[0], before, shape[axis], after])
    sums = _chunked_sum(_chunked_sum(merged, 3), 1)
    return ops.reshape(
        sums, [shape[0]] + [1] * (axis - 1) + [shape[axis]] + [1] * (len(shape) - axis - 1)
    )


def _product(sizes):
    total = 1
    for size in sizes:
        total = total * size
    return total


def _moments(xg, reduce_axes, mask, axis):
    if mask is None:
        first = tuple(
            slice(0, 1) if i in reduce_axes else slice(None) for i in range(len(xg.shape))
        )
        shift = ops.stop_gradient(xg[first])
        count = _element_count(xg, reduce_axes)
        shifted = xg - shift
        delta = _group_sum(shifted, axis) / count
        centred = shifted - delta
        return centred, _group_sum(ops.square(centred), axis) / count
    # The mask covers every axis but the channels: give it back the channel
    # axis as (1, 1) so it broadcasts over a group's (G, C/G) entries.
    weights = ops.cast(mask, xg.dtype)
    weights = ops.expand_dims(ops.expand_dims(weights, axis), axis)
    group_width = xg.shape[axis + 1]
    count = _group_sum(weights, axis) * group_width
    # A sample with no valid position would divide by zero; its statistics
    # are then 0 and its output is β plus the scaled input.
    count = ops.maximum(count, 1.0)
    centred = xg - _group_sum(xg * weights, axis) / count
    variance = _group_sum(ops.square(centred * weights), axis) / count
    return centred, variance


def _shapes_agree(shape, expected):
    """Equal ranks, and equal sizes wherever both are known."""
    return len(shape) == len(expected) and all(
        a is None or b is None or a == b for a, b in zip(shape, expected)
    )


def _checked_mask(mask, x, axis, where):
    """``mask`` shaped like ``x`` without its channel axis, or a ValueError.

    A mask that keeps the channel axis with size 1 (a trailing ``(..., 1)``
    for channels_last, as tf-keras's masks do) is squeezed.  Any other shape
    is refused: broadcasting it would silently mix up samples or positions.
    """
    mask = ops.convert_to_tensor(mask)
    given_shape = shape = tuple(mask.shape)
    input_shape = tuple(x.shape)
    expected = input_shape[:axis] + input_shape[axis + 1 :]
    if len(shape) == len(input_shape) and shape[axis] == 1:
        mask = ops.squeeze(mask, axis)
        shape = shape[:axis] + shape[axis + 1 :]
    if not _shapes_agree(shape, expected):
        raise ValueError(
            f"{where}: mask of shape {given_shape} does not fit the input of "
            f"shape {input_shape}: it must have the input's shape without its channel "
            f"axis, {expected}, or with that axis of size 1."
        )
    return mask


def group_norm(
    x,
    gamma=None,
    beta=None,
    groups=_checks.DEFAULT_GROUPS,
    group_size=None,
    axis=-1,
    epsilon=1e-5,
    mask=None,
    activation=None,
):
    """Group-normalize ``x`` (Wu & He 2018, Eqns. 1, 2, 6, 7).

    Args:
      x: tensor of rank >= 2, batch first; any other non-channel axes
        (time, height, width, depth) are normalized over together.
      gamma, beta: optional per-channel scale and offset, shape ``(C,)``.
      groups: number of groups G; ``-1`` for one channel per group (IN),
        ``1`` for a single group (LN over all non-batch axes).
      group_size: channels per group; when given it decides the group count.
      axis: the channel axis (``-1`` channels_last, ``1`` channels_first).
      epsilon: added to the variance; the paper's default is 1e-5.  It must
        be positive (Keras and torch also accept 0).
      mask: optional boolean/0-1 tensor shaped like ``x`` without its
        channel axis, e.g. ``(N, T)`` for a sequence, or with that axis of
        size 1; masked-out positions are left out of the statistics (their
        outputs are still computed).  Other shapes raise a ``ValueError``.
      activation: ``None``, ``"relu"`` or ``"silu"`` (alias ``"swish"``):
        an activation on the result, fused into the compiled TensorFlow
        kernels.  The paper's ResNet blocks follow most GN layers with a
        ReLU (§4.1); the VAEs and UNets of diffusion models follow theirs
        with a SiLU.

    Returns:
      A tensor of the shape and dtype of ``x`` (float32 for integer ``x``).
    """
    activation = activation_name(activation, "group_norm")
    return normalize(
        x, gamma, beta, groups, group_size, axis, epsilon, mask, "group_norm", activation
    )


# The activations GN can apply to its output, by the one name stored for
# each; the compiled TensorFlow kernels fuse them into their own passes.
ACTIVATIONS = (None, "relu", "silu")
# Other accepted spellings, and the stored name each stands for.
ACTIVATION_ALIASES = {"swish": "silu"}


def activation_name(activation, where):
    """The stored name (one of :data:`ACTIVATIONS`) of ``activation``; else a ValueError."""
    name = (
        ACTIVATION_ALIASES.get(activation, activation)
        if isinstance(activation, str)
        else activation
    )
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{where}: argument `activation` must be None, 'relu', 'silu' or 'swish', "
            f"got activation={activation!r}."
        )
    return name


def apply_activation(y, activation):
    """``y`` through the activation named ``activation`` (a name of :data:`ACTIVATIONS`).

    SiLU is written out as ``y·sigmoid(y)``: TensorFlow's ``tf.nn.silu``
    carries a custom gradient, which a SavedModel keeps without its function.
    """
    if activation == "relu":
        return ops.relu(y)
    if activation == "silu":
        return y * ops.sigmoid(y)
    return y


def normalize(x, gamma, beta, groups, group_size, axis, epsilon, mask, where, activation=None):
    """:func:`group_norm`, with errors naming ``where`` (the layer or function)."""
    x = ops.convert_to_tensor(x)
    _checks.check_epsilon(epsilon, where)
    given_axis = axis
    axis = _checks.normalize_axis(axis, tuple(x.shape), where)
    channels = _checks.channel_count(tuple(x.shape), axis, where, given_axis)
    num_groups = _checks.resolve_groups(channels, groups, group_size, where)
    if mask is not None:
        mask = _checked_mask(mask, x, axis, where)

    # TensorFlow fast path (closed-form gradient; compiled CPU kernels, or
    # XLA-scoped TF ops): see gn_keras/tf_fast.py.  Masks and the other
    # backends take keras.ops below.
    if mask is None and keras.config.backend() == "tensorflow":
        from gn_keras import tf_fast

        if tf_fast.supports(x):
            return tf_fast.group_norm(x, gamma, beta, num_groups, axis, epsilon, activation)

    stats_dtype = statistics_dtype(x.dtype)
    rank = len(x.shape)
    xg = ops.reshape(ops.cast(x, stats_dtype), _grouped_shape(x, axis, num_groups))
    reduce_axes = tuple(i for i in range(rank + 1) if i not in (0, axis))
    centred, variance = _moments(xg, reduce_axes, mask, axis)

    per_channel = _broadcast_shape(rank, axis, num_groups, channels)
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * ops.reshape(ops.cast(gamma, stats_dtype), per_channel)
    y = centred * scale
    if beta is not None:
        y = y + ops.reshape(ops.cast(beta, stats_dtype), per_channel)
    y = apply_activation(y, activation)
    return ops.cast(ops.reshape(y, ops.shape(x)), _output_dtype(x.dtype))
