"""GroupNormalization inside Keras: masks, mixed precision, graphs, config."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from gn_reference import group_norm_reference

from gn_keras import GroupNormalization, group_norm


@pytest.fixture
def policy():
    """Set a global dtype policy for one test and always restore float32."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def _lengths_mask(rng, batch, steps):
    lengths = rng.integers(2, steps + 1, size=batch)
    return np.arange(steps)[None, :] < lengths[:, None]


@pytest.mark.parametrize("axis", [-1, 1])
def test_functional_mask_leaves_padding_out_of_statistics(rng, axis):
    mask = _lengths_mask(rng, 4, 9)
    shape = (4, 9, 8) if axis == -1 else (4, 8, 9)
    x = rng.normal(size=shape) * 2 + 1
    gamma, beta = rng.normal(size=8), rng.normal(size=8)
    actual = group_norm(x, gamma, beta, groups=4, axis=axis, mask=mask).numpy()
    expected = group_norm_reference(x, gamma, beta, groups=4, axis=axis, mask=mask)
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("batch", [1, 3])
def test_mask_with_a_size_1_channel_axis_is_squeezed(rng, axis, batch):
    """tf-keras style masks keep the channel axis with size 1: (N, T, 1) for channels_last."""
    mask = _lengths_mask(rng, batch, 5)
    shape = (batch, 5, 4) if axis == -1 else (batch, 4, 5)
    x = (rng.normal(size=shape) * 2 + 1).astype("float32")
    layer = GroupNormalization(groups=2, axis=axis, center=False, scale=False)
    with_channel = mask[:, None, :] if axis == 1 else mask[..., None]
    expected = group_norm_reference(x, groups=2, axis=axis, mask=mask)
    np.testing.assert_allclose(layer(x, mask=with_channel).numpy(), expected, atol=2e-5)
    np.testing.assert_allclose(layer(x, mask=mask).numpy(), expected, atol=2e-5)


@pytest.mark.parametrize(
    "mask_shape",
    [(1, 4), (1, 5, 2), (1, 5, 4), (2, 5), (1, 5, 1, 1), (1,)],
)
def test_mask_of_any_other_shape_names_both_shapes(rng, mask_shape):
    x = rng.normal(size=(1, 5, 4)).astype("float32")
    mask = rng.integers(0, 2, size=mask_shape).astype(bool)
    layer = GroupNormalization(groups=2)
    with pytest.raises(
        ValueError, match=r"mask of shape .* the input of shape \(1, 5, 4\)"
    ) as error:
        layer(x, mask=mask)
    assert str(mask_shape) in str(error.value) and "(1, 5)" in str(error.value)
    with pytest.raises(ValueError, match=r"group_norm: mask of shape"):
        group_norm(x, groups=2, mask=mask)


def test_mask_shape_is_checked_in_graphs_with_unknown_sizes(rng):
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    mask = _lengths_mask(rng, 2, 6)
    normalize = tf.function(lambda x, m: group_norm(x, groups=2, mask=m))
    spec = tf.TensorSpec([None, None, 4])
    traced = normalize.get_concrete_function(spec, tf.TensorSpec([None, None, 1], tf.bool))
    expected = group_norm_reference(x, groups=2, mask=mask)
    np.testing.assert_allclose(traced(x, mask[..., None]).numpy(), expected, atol=2e-5)
    with pytest.raises(ValueError, match=r"mask of shape \(None, None, 2\)"):
        normalize.get_concrete_function(spec, tf.TensorSpec([None, None, 2], tf.bool))


def test_keras_mask_from_masking_layer(rng):
    """Padded steps (value 0 after Masking) don't change the valid steps."""
    steps, channels = 7, 12
    inputs = keras.Input((None, channels))
    masked = keras.layers.Masking(mask_value=0.0)(inputs)
    model = keras.Model(inputs, GroupNormalization(groups=3)(masked))
    lengths = [7, 4, 2]
    padded = np.zeros((3, steps, channels), dtype="float32")
    for i, length in enumerate(lengths):
        padded[i, :length] = rng.normal(size=(length, channels)) * 3 - 2
    outputs = model(padded).numpy()
    for i, length in enumerate(lengths):
        alone = group_norm_reference(padded[i : i + 1, :length], groups=3)
        np.testing.assert_allclose(outputs[i : i + 1, :length], alone, rtol=1e-5, atol=1e-5)


def test_layer_propagates_mask(rng):
    inputs = keras.Input((None, 8))
    masked = keras.layers.Masking(mask_value=0.0)(inputs)
    normalized = GroupNormalization(groups=2)(masked)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(normalized))
    x = np.concatenate([rng.normal(size=(2, 3, 8)), np.zeros((2, 4, 8))], axis=1).astype("float32")
    # Pooling honours the propagated mask: it averages only the first 3 steps.
    expected = group_norm_reference(x[:, :3], groups=2).mean(axis=1)
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name,compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")]
)
def test_mixed_precision_policy(rng, policy, name, compute):
    policy(name)
    layer = GroupNormalization(groups=4)
    x = (rng.normal(size=(2, 6, 6, 16)) * 100).astype("float32")
    y = layer(x)
    assert layer.gamma.dtype == "float32" and layer.beta.dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == compute
    assert layer.compute_dtype == compute
    cast_input = tf.cast(tf.cast(x, compute), tf.float64).numpy()
    tolerance = 2e-2 if compute == "bfloat16" else 3e-3
    np.testing.assert_allclose(
        tf.cast(y, tf.float64).numpy(), group_norm_reference(cast_input, groups=4), atol=tolerance
    )


def test_mixed_float16_extreme_inputs_train(rng, policy):
    policy("mixed_float16")
    layer = GroupNormalization(groups=2)
    x = tf.constant(rng.uniform(-65000, 65000, size=(2, 4, 4, 8)), dtype=tf.float16)
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * rng.normal(size=y.shape))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert np.all(np.isfinite(y.numpy()))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_dynamic_shapes_in_tf_function(rng, jit_compile):
    layer = GroupNormalization(groups=4)
    layer.build((None, None, None, 8))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 8])], jit_compile=jit_compile)
    def normalize(x):
        return layer(x)

    for shape in [(1, 3, 5, 8), (3, 7, 2, 8)]:
        x = rng.normal(size=shape).astype("float32") + 2
        np.testing.assert_allclose(
            normalize(x).numpy(), group_norm_reference(x, groups=4), rtol=1e-5, atol=1e-5
        )


def test_jit_compiled_training_step_matches_eager(rng):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = GroupNormalization(groups=4)(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    data = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    labels = rng.integers(0, 2, size=4)

    reference = keras.Model(inputs, outputs)
    initial = reference.get_weights()
    results = {}
    for jit in (False, True):
        model = keras.models.clone_model(reference)
        model.set_weights(initial)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            jit_compile=jit,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        loss = model.train_on_batch(data, labels)
        results[jit] = (loss, model.get_weights())
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5)
    for compiled, eager in zip(results[True][1], results[False][1]):
        np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)


def test_config_round_trip_keeps_every_argument():
    layer = GroupNormalization(
        groups=None,
        group_size=4,
        axis=1,
        epsilon=3e-4,
        center=False,
        scale=True,
        beta_initializer="ones",
        gamma_initializer=keras.initializers.Constant(0.5),
        beta_regularizer="l2",
        gamma_regularizer=keras.regularizers.L1(0.01),
        beta_constraint="non_neg",
        gamma_constraint=keras.constraints.MaxNorm(2.0),
        activation="relu",
        name="gn_custom",
    )
    config = layer.get_config()
    clone = GroupNormalization.from_config(config)
    assert clone.get_config() == config
    for key, value in {
        "groups": None,
        "group_size": 4,
        "axis": 1,
        "epsilon": 3e-4,
        "center": False,
        "scale": True,
        "activation": "relu",
        "name": "gn_custom",
    }.items():
        assert config[key] == value, key
    assert isinstance(clone.gamma_regularizer, keras.regularizers.L1)
    assert isinstance(clone.gamma_constraint, keras.constraints.MaxNorm)
    assert isinstance(clone.gamma_initializer, keras.initializers.Constant)


def test_default_groups_round_trip_as_32():
    config = GroupNormalization().get_config()
    assert config["groups"] == 32 and config["group_size"] is None
    assert GroupNormalization.from_config(config).get_config() == config


def test_group_size_decides_group_count_per_layer(rng):
    small, large = GroupNormalization(group_size=4), GroupNormalization(group_size=4)
    small(rng.normal(size=(1, 3, 3, 8)))
    large(rng.normal(size=(1, 3, 3, 32)))
    assert (small.resolved_groups, large.resolved_groups) == (2, 8)
