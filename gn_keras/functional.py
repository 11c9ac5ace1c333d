"""The Group Normalization math as one backend-agnostic function.

``group_norm`` follows the paper's reference code (§3.2, Figure 3): split
the channel axis into ``(G, C/G)``, take the mean and variance over the
group's channels and every non-batch, non-channel axis, normalize, and apply
the per-channel γ, β of Eqn. (6).  It is written against ``keras.ops`` so it
runs on the TensorFlow, JAX and PyTorch backends.

Two choices go beyond the paper's listing:

* Statistics are computed in float32 whenever the input is a 16-bit float,
  so mixed-precision models neither overflow the sum of squares nor lose
  the variance to rounding.  The result is cast back to the input dtype.
* γ is folded into the inverse standard deviation: a per-(sample, channel)
  scale ``a = γ/σ`` is formed on the small statistics tensor and the big
  tensor is touched once more, as ``(x − μ)·a + β``.  The fully folded
  ``x·a + (β − μ·a)`` would save nothing (both are one fused pass) but
  cancels catastrophically when |μ| ≫ σ and cannot return β exactly for a
  constant input, so the centring stays inside the pass.

The mean is taken relative to the first element of each group (a shifted
sum, exact for constant inputs) and the variance is two-pass (the mean is
subtracted before squaring), so both stay accurate for inputs whose mean is
far larger than their spread, e.g. mean 1e4 and std 1 in float32.
"""

import keras
from keras import ops

from gn_keras import _checks

_LOW_PRECISION = ("float16", "bfloat16")


def _statistics_dtype(dtype):
    return "float32" if dtype in _LOW_PRECISION else dtype


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


def _moments(xg, reduce_axes, mask, axis):
    if mask is None:
        first = tuple(
            slice(0, 1) if i in reduce_axes else slice(None) for i in range(len(xg.shape))
        )
        shift = ops.stop_gradient(xg[first])
        mean = shift + ops.mean(xg - shift, axis=reduce_axes, keepdims=True)
        variance = ops.mean(ops.square(xg - mean), axis=reduce_axes, keepdims=True)
        return mean, variance
    # The mask covers every axis but the channels: give it back the channel
    # axis as (1, 1) so it broadcasts over a group's (G, C/G) entries.
    weights = ops.cast(mask, xg.dtype)
    weights = ops.expand_dims(ops.expand_dims(weights, axis), axis)
    group_width = xg.shape[axis + 1]
    count = ops.sum(weights, axis=reduce_axes, keepdims=True) * group_width
    # A sample with no valid position would divide by zero; its statistics
    # are then 0 and its output is β plus the scaled input.
    count = ops.maximum(count, 1.0)
    mean = ops.sum(xg * weights, axis=reduce_axes, keepdims=True) / count
    centred = (xg - mean) * weights
    variance = ops.sum(ops.square(centred), axis=reduce_axes, keepdims=True) / count
    return mean, variance


def group_norm(
    x,
    gamma=None,
    beta=None,
    groups=_checks.DEFAULT_GROUPS,
    group_size=None,
    axis=-1,
    epsilon=1e-5,
    mask=None,
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
      epsilon: added to the variance; the paper's default is 1e-5.
      mask: optional boolean/0-1 tensor shaped like ``x`` without its
        channel axis, e.g. ``(N, T)`` for a sequence; masked-out positions
        are left out of the statistics (their outputs are still computed).

    Returns:
      A tensor of the shape and dtype of ``x``.
    """
    where = "group_norm"
    x = ops.convert_to_tensor(x)
    _checks.check_epsilon(epsilon, where)
    given_axis = axis
    axis = _checks.normalize_axis(axis, tuple(x.shape), where)
    channels = _checks.channel_count(tuple(x.shape), axis, where, given_axis)
    num_groups = _checks.resolve_groups(channels, groups, group_size, where)

    # TensorFlow fast path (closed-form gradient; compiled CPU kernels, or
    # XLA-scoped TF ops): see gn_keras/tf_fast.py.  Masks and the other
    # backends take keras.ops below.
    if mask is None and keras.config.backend() == "tensorflow":
        from gn_keras import tf_fast

        if tf_fast.supports(x):
            return tf_fast.group_norm(x, gamma, beta, num_groups, axis, epsilon)

    input_dtype = x.dtype
    stats_dtype = _statistics_dtype(input_dtype)
    rank = len(x.shape)
    xg = ops.reshape(ops.cast(x, stats_dtype), _grouped_shape(x, axis, num_groups))
    reduce_axes = tuple(i for i in range(rank + 1) if i not in (0, axis))
    mean, variance = _moments(xg, reduce_axes, mask, axis)

    per_channel = _broadcast_shape(rank, axis, num_groups, channels)
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * ops.reshape(ops.cast(gamma, stats_dtype), per_channel)
    y = (xg - mean) * scale
    if beta is not None:
        y = y + ops.reshape(ops.cast(beta, stats_dtype), per_channel)
    return ops.cast(ops.reshape(y, ops.shape(x)), input_dtype)
