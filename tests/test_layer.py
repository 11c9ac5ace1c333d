"""Numerical tests of GroupNormalization against the float64 reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from gn_reference import group_norm_reference, numeric_gradient

from gn_keras import GroupNormalization, group_norm

# (shape, axis, groups, group_size): ranks 2-5, odd sizes, both data formats.
CASES = [
    ((3, 12), -1, 4, None),
    ((4, 6), 1, -1, None),
    ((3, 7, 12), -1, 3, None),
    ((3, 12, 7), 1, None, 4),
    ((2, 5, 7, 16), -1, 4, None),
    ((2, 5, 7, 16), -1, 1, None),
    ((2, 5, 7, 16), -1, -1, None),
    ((2, 5, 7, 16), -1, None, 2),
    ((2, 16, 5, 7), 1, 8, None),
    ((1, 3, 5, 4, 8), -1, 2, None),
    ((2, 8, 3, 5, 4), 1, 4, None),
    ((2, 5, 12, 3), 2, 3, None),
    ((2, 3, 5, 64), -1, 32, None),
    ((2, 5, 12, 3), -2, 6, None),
]


def _random_input(rng, shape):
    # Non-zero mean and non-unit spread (one of each per call, shared by all channels).
    return rng.normal(size=shape) * rng.uniform(0.5, 3.0) + rng.uniform(-4, 4)


def _groups_for(channels, groups, group_size):
    return channels // group_size if group_size else groups


@pytest.mark.parametrize("shape,axis,groups,group_size", CASES)
def test_layer_matches_reference(rng, shape, axis, groups, group_size):
    x = _random_input(rng, shape).astype("float32")
    kwargs = {"group_size": group_size} if group_size else {"groups": groups}
    layer = GroupNormalization(axis=axis, **kwargs)
    layer.build(x.shape)
    channels = shape[axis]
    gamma = rng.normal(1.0, 0.5, channels).astype("float32")
    beta = rng.normal(0.0, 0.5, channels).astype("float32")
    layer.set_weights([gamma, beta])
    expected = group_norm_reference(
        x, gamma, beta, _groups_for(channels, groups, group_size), axis, 1e-5
    )
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_functional_form_float64_is_exact(rng):
    x = _random_input(rng, (3, 5, 6, 12))
    gamma, beta = rng.normal(size=12), rng.normal(size=12)
    actual = group_norm(x, gamma, beta, groups=4, epsilon=1e-3)
    expected = group_norm_reference(x, gamma, beta, 4, -1, 1e-3)
    assert actual.dtype == tf.float64
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_output_independent_of_batch_companions(rng):
    """§3: GN's computation is independent of the batch; BN's is not."""
    x = _random_input(rng, (4, 6, 6, 16)).astype("float32")
    layer = GroupNormalization(groups=4)
    full = layer(x).numpy()
    alone = layer(x[1:2]).numpy()
    np.testing.assert_allclose(full[1:2], alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,axis,groups", [((2, 3, 4, 6), -1, 3), ((2, 6, 5), 1, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradients_match_finite_differences(rng, shape, axis, groups, affine):
    x = _random_input(rng, shape)
    channels = shape[axis]
    gamma = rng.normal(1.0, 0.5, channels) if affine else None
    beta = rng.normal(0.0, 0.5, channels) if affine else None
    weights = rng.normal(size=shape)

    variables = [tf.Variable(x)] + ([tf.Variable(gamma), tf.Variable(beta)] if affine else [])
    with tf.GradientTape() as tape:
        y = group_norm(*variables, groups=groups, axis=axis)
        loss = tf.reduce_sum(y * weights)
    grads = [g.numpy() for g in tape.gradient(loss, variables)]

    def ref(**override):
        args = {"x": x, "gamma": gamma, "beta": beta, **override}
        return group_norm_reference(args["x"], args["gamma"], args["beta"], groups, axis)

    np.testing.assert_allclose(
        grads[0], numeric_gradient(lambda v: ref(x=v), x, weights), rtol=1e-5, atol=1e-6
    )
    if affine:
        np.testing.assert_allclose(
            grads[1], numeric_gradient(lambda v: ref(gamma=v), gamma, weights), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            grads[2], numeric_gradient(lambda v: ref(beta=v), beta, weights), rtol=1e-5, atol=1e-6
        )


def test_float32_layer_gradients_match_float64(rng):
    x = _random_input(rng, (2, 4, 5, 8))
    layer = GroupNormalization(groups=2)
    layer.build(x.shape)
    layer.set_weights(
        [rng.normal(1, 0.3, 8).astype("float32"), rng.normal(0, 0.3, 8).astype("float32")]
    )
    weights = rng.normal(size=x.shape)

    def gradients(dtype):
        xv = tf.Variable(x.astype(dtype))
        gamma = tf.cast(layer.gamma, dtype)
        beta = tf.cast(layer.beta, dtype)
        with tf.GradientTape() as tape:
            tape.watch([gamma, beta])
            loss = tf.reduce_sum(group_norm(xv, gamma, beta, groups=2) * weights.astype(dtype))
        return [g.numpy().astype("float64") for g in tape.gradient(loss, [xv, gamma, beta])]

    for low, high in zip(gradients("float32"), gradients("float64")):
        np.testing.assert_allclose(low, high, rtol=1e-4, atol=1e-5)


def test_groups_one_equals_layer_normalization(rng):
    x = _random_input(rng, (3, 5, 6, 8)).astype("float32")
    ours = GroupNormalization(groups=1, epsilon=1e-3)
    keras_ln = keras.layers.LayerNormalization(axis=[1, 2, 3], epsilon=1e-3)
    np.testing.assert_allclose(ours(x).numpy(), keras_ln(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape,axis,groups", [((2, 6, 7, 16), -1, 4), ((2, 16, 5), 1, 8), ((3, 9, 12), -1, -1)]
)
def test_matches_keras_group_normalization(rng, shape, axis, groups):
    x = _random_input(rng, shape).astype("float32")
    channels = shape[axis]
    gamma = rng.normal(1, 0.5, channels).astype("float32")
    beta = rng.normal(0, 0.5, channels).astype("float32")
    ours = GroupNormalization(groups=groups, axis=axis, epsilon=1e-5)
    theirs = keras.layers.GroupNormalization(groups=groups, axis=axis, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.set_weights([gamma, beta])
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trial", range(4))
def test_constant_input_gives_beta_exactly(rng, trial):
    # Odd sizes: a plain float32 mean of n copies of c is often not c.
    x = np.full((2, 5, 7, 12), rng.uniform(-100, 100), dtype="float32")
    layer = GroupNormalization(groups=4)
    layer.build(x.shape)
    beta = rng.normal(size=12).astype("float32")
    layer.set_weights([rng.normal(size=12).astype("float32"), beta])
    y = layer(x).numpy()
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, np.broadcast_to(beta, y.shape))


def test_large_mean_small_spread_stays_accurate(rng):
    """Shifted, two-pass statistics survive |mean| >> std in float32."""
    x = (1e4 + rng.normal(size=(2, 6, 6, 16))).astype("float32")
    expected = group_norm_reference(x, groups=4)
    actual = GroupNormalization(groups=4, center=False, scale=False)(x).numpy()
    # float32 can only hold x to ~1e-3 absolute at 1e4, i.e. ~1e-3 of the std.
    np.testing.assert_allclose(actual, expected, atol=2e-3)


def test_float16_large_inputs_stay_finite(rng):
    # Up to float16's largest finite value: the sum of squares would overflow
    # in float16, the float32 statistics do not.
    x = rng.uniform(-65000, 65000, size=(2, 6, 6, 8)).astype("float16")
    y = group_norm(x, groups=2)
    assert y.dtype == tf.float16
    assert np.all(np.isfinite(y.numpy()))
    expected = group_norm_reference(x.astype("float64"), groups=2)
    np.testing.assert_allclose(y.numpy().astype("float64"), expected, atol=5e-3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_match_reference(rng, dtype):
    x = _random_input(rng, (2, 5, 5, 16))
    y = group_norm(tf.constant(x, dtype=dtype), groups=4)
    assert y.dtype == tf.as_dtype(dtype)
    representable = tf.cast(tf.constant(x, dtype=dtype), tf.float64).numpy()
    expected = group_norm_reference(representable, groups=4)
    tolerance = 2e-2 if dtype == "bfloat16" else 3e-3
    np.testing.assert_allclose(tf.cast(y, tf.float64).numpy(), expected, atol=tolerance)
