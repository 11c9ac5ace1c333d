"""Float64 NumPy reference for Group Normalization, for tests only.

Written straight from the paper's equations rather than from the library:
for every sample n and group g, the set S_i of Eqn. (7) is gathered
explicitly (the channels c with floor(c / (C/G)) = g, at every non-channel
position the mask allows), μ and σ follow Eqn. (2), and Eqns. (1) and (6)
give the output.  It loops instead of reshaping so that it shares no
code path with the implementation under test.
"""

import numpy as np


def group_norm_reference(x, gamma=None, beta=None, groups=32, axis=-1, epsilon=1e-5, mask=None):
    """Return GN(x) in float64; ``mask`` is shaped like x without its channel axis."""
    x = np.asarray(x, dtype=np.float64)
    axis = axis % x.ndim
    channels = x.shape[axis]
    if groups == -1:
        groups = channels
    per_group = channels // groups
    # (N, positions, C) view: channel last, every other non-batch axis flattened.
    x_nlc = np.moveaxis(x, axis, -1).reshape(x.shape[0], -1, channels)
    if mask is None:
        valid = np.ones(x_nlc.shape[:2], dtype=bool)
    else:
        valid = np.asarray(mask).reshape(x.shape[0], -1).astype(bool)
    y_nlc = np.empty_like(x_nlc)
    for n in range(x.shape[0]):
        for g in range(groups):
            channel_ids = [c for c in range(channels) if c // per_group == g]
            members = x_nlc[n][valid[n]][:, channel_ids]
            m = members.size
            mu = members.sum() / m if m else 0.0
            sigma = np.sqrt(((members - mu) ** 2).sum() / m + epsilon) if m else np.sqrt(epsilon)
            y_nlc[n][:, channel_ids] = (x_nlc[n][:, channel_ids] - mu) / sigma
    if gamma is not None:
        y_nlc = y_nlc * np.asarray(gamma, dtype=np.float64)
    if beta is not None:
        y_nlc = y_nlc + np.asarray(beta, dtype=np.float64)
    moved_shape = np.moveaxis(x, axis, -1).shape
    return np.moveaxis(y_nlc.reshape(moved_shape), -1, axis)


def numeric_gradient(function, value, direction_weights, step=1e-6):
    """Central finite differences of sum(function(value) * weights) w.r.t. value."""
    value = np.array(value, dtype=np.float64)
    grad = np.zeros_like(value)
    flat_value, flat_grad = value.reshape(-1), grad.reshape(-1)
    for i in range(flat_value.size):
        original = flat_value[i]
        flat_value[i] = original + step
        plus = np.sum(function(value) * direction_weights)
        flat_value[i] = original - step
        minus = np.sum(function(value) * direction_weights)
        flat_value[i] = original
        flat_grad[i] = (plus - minus) / (2 * step)
    return grad
