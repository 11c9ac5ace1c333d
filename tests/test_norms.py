"""The normalization family: each kind against a float64 NumPy reference.

Covers ``gn_keras.norms`` (every kind's layer and conv), Batch Renorm as the
paper configures it (checked against Ioffe's algorithm), BN*, the
weight-standardized and weight-normalized convs, the γ/β naming rule, and
the argument errors.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from gn_reference import group_norm_reference
from subprocess_utils import run_python

from gn_keras import frame_conv3d, norms
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.temporal_padding import TemporalReplicatePadding
from gn_keras.weight_convs import WNConv2D, WNConv3D, WSConv2D, WSConv3D

EPS = 1e-5


def _features(rng, shape):
    """Per-channel offsets and spreads, so every statistic matters."""
    channels = shape[-1]
    return (
        rng.normal(size=shape) * rng.uniform(0.5, 3.0, channels) + rng.uniform(-3, 3, channels)
    ).astype("float32")


def _random_affine(layer, rng):
    channels = layer.gamma.shape[0]
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(rng.normal(size=channels).astype("float32"))
    return layer.gamma.numpy().astype(np.float64), layer.beta.numpy().astype(np.float64)


def _bn_reference(x, mean, variance, gamma, beta, epsilon=EPS):
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


# --- feature normalizations ------------------------------------------------


@pytest.mark.parametrize(
    "kind,groups", [("gn", 4), ("ln", 1), ("in", -1), ("gn+ws", 4), ("keras_gn", 4)]
)
@pytest.mark.parametrize("axis", [-1, 1])
def test_group_kinds_match_reference(rng, kind, groups, axis):
    factory = norms.get(kind, groups=4)
    x = _features(rng, (3, 5, 6, 8))
    if axis == 1:
        x = np.moveaxis(x, -1, 1)
    layer = factory(axis=axis, name="norm")
    layer.build(x.shape)
    gamma, beta = _random_affine(layer, rng)
    expected = group_norm_reference(x, gamma, beta, groups=groups, axis=axis, epsilon=EPS)
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-4, atol=1e-4)


def _silu(v):
    return v / (1.0 + np.exp(-v))


@pytest.mark.parametrize("kind,groups", [("gn", 4), ("ln", 1), ("in", -1), ("none", None)])
@pytest.mark.parametrize("activation", ["relu", "silu", "swish"])
def test_normalize_activation_fuses_for_group_kinds(rng, kind, groups, activation):
    """One fused GN layer for the GN kinds; a norm and an activation layer otherwise."""
    factory = norms.get(kind, groups=4)
    inputs = keras.Input((5, 6, 8))
    if activation == "relu":
        outputs = factory.normalize_relu(inputs, name="norm", relu_name="act")
    else:
        outputs = factory.normalize_activation(inputs, activation, name="norm",
                                               activation_layer_name="act")  # fmt: skip
    model = keras.Model(inputs, outputs)
    names = [layer.name for layer in model.layers[1:]]
    assert names == (["norm"] if groups else ["norm", "act"])
    if groups:
        stored = "relu" if activation == "relu" else "silu"
        assert model.get_layer("norm").get_config()["activation"] == stored
    x = _features(rng, (3, 5, 6, 8))
    expected = x.astype(np.float64)
    if groups:
        gamma, beta = _random_affine(model.get_layer("norm"), rng)
        expected = group_norm_reference(x, gamma, beta, groups=groups, epsilon=EPS)
    expected = np.maximum(expected, 0) if activation == "relu" else _silu(expected)
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-4)


def test_normalize_activation_refuses_none_and_unknown_names():
    factory = norms.get("gn", groups=4)
    inputs = keras.Input((5, 6, 8))
    for activation in (None, "gelu"):
        with pytest.raises(ValueError, match=rf"activation={activation!r}"):
            factory.normalize_activation(inputs, activation, "norm", "act")


@pytest.mark.parametrize("kind", ["bn", "sync_bn"])
def test_batch_norm_kinds_use_batch_then_moving_statistics(rng, kind):
    factory = norms.get(kind, momentum=0.8)
    layer = factory(axis=-1, name="bn")
    x = _features(rng, (6, 3, 3, 4))
    layer.build(x.shape)
    gamma, beta = _random_affine(layer, rng)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    np.testing.assert_allclose(
        layer(x, training=True), _bn_reference(x64, mean, var, gamma, beta), rtol=1e-4, atol=1e-4
    )
    moving_mean, moving_var = 0.2 * mean, 0.8 + 0.2 * var
    np.testing.assert_allclose(layer.moving_mean, moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, moving_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        layer(x, training=False),
        _bn_reference(x64, moving_mean, moving_var, gamma, beta),
        rtol=1e-4,
        atol=1e-4,
    )
    assert layer.synchronized == (kind == "sync_bn")
    assert layer.epsilon == EPS


def test_bn_statistics_are_per_replica_and_sync_bn_spans_replicas(rng, tmp_path):
    # The paper's BN: "mean and variance ... computed within each GPU".
    x = _features(rng, (8, 3, 3, 4))
    np.save(tmp_path / "x.npy", x)
    run_python(f"""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        two_cpus = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two_cpus)
        from gn_keras import norms
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        x = np.load({str(tmp_path / "x.npy")!r})
        batches = tf.data.Dataset.from_tensor_slices(x).batch(8)
        batch = next(iter(strategy.experimental_distribute_dataset(batches)))
        for kind in ("bn", "sync_bn"):
            with strategy.scope():
                layer = norms.get(kind)(axis=-1, name=kind)
                layer.build(x.shape)
            y = strategy.run(tf.function(lambda b: layer(b, training=True)), args=(batch,))
            parts = [t.numpy() for t in strategy.experimental_local_results(y)]
            assert len(parts) == 2
            np.save({str(tmp_path)!r} + f"/{{kind}}.npy", np.concatenate(parts))
    """)
    x64 = x.astype(np.float64)

    def normalized(part):
        return (part - part.mean(axis=(0, 1, 2))) / np.sqrt(part.var(axis=(0, 1, 2)) + EPS)

    per_replica = np.concatenate([normalized(x64[:4]), normalized(x64[4:])])
    np.testing.assert_allclose(np.load(tmp_path / "bn.npy"), per_replica, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.load(tmp_path / "sync_bn.npy"), normalized(x64), rtol=1e-4, atol=1e-4
    )


def _batch_renorm_reference(batches, gamma, beta, momentum, rmax=1.5, dmax=0.5, epsilon=EPS):
    """Ioffe (2017), Algorithm 1, in float64.

    Returns the outputs per step, the final μ and σ, and the set of clip
    bounds that were hit ("rmin", "rmax", "dmax").
    """
    mu, sigma = np.zeros(gamma.shape), np.ones(gamma.shape)
    outputs, clipped = [], set()
    for x in batches:
        batch_mean = x.mean(axis=0)
        batch_std = np.sqrt(x.var(axis=0) + epsilon)
        r_raw, d_raw = batch_std / sigma, (batch_mean - mu) / sigma
        clipped |= {
            name
            for name, hit in (
                ("rmin", r_raw < 1 / rmax),
                ("rmax", r_raw > rmax),
                ("dmax", np.abs(d_raw) > dmax),
            )
            if hit.any()
        }
        r, d = np.clip(r_raw, 1 / rmax, rmax), np.clip(d_raw, -dmax, dmax)
        outputs.append(gamma * ((x - batch_mean) / batch_std * r + d) + beta)
        mu = mu + (1 - momentum) * (batch_mean - mu)
        sigma = sigma + (1 - momentum) * (batch_std - sigma)
    return outputs, mu, sigma, clipped


def test_batch_renorm_follows_ioffe_with_paper_clipping(rng):
    momentum, channels = 0.7, 6
    layer = norms.get("brn", momentum=momentum)(axis=-1, name="brn")
    layer.build((None, channels))
    gamma, beta = _random_affine(layer, rng)
    # Spreads far above and below 1 and means far from 0 drive r to both
    # clip bounds and d to its bound, and leave others inside them.
    spread = np.array([0.05, 0.2, 0.9, 1.1, 3.0, 6.0])
    offset = np.array([2.0, -0.1, 0.2, -3.0, 0.0, 1.0])
    batches = [
        rng.normal(size=(8, channels)) * spread * rng.uniform(0.7, 1.4, channels)
        + offset * rng.uniform(0.5, 1.5, channels)
        for _ in range(3)
    ]
    expected, mu, sigma, clipped = _batch_renorm_reference(batches, gamma, beta, momentum)
    assert clipped == {"rmin", "rmax", "dmax"}
    for x, want in zip(batches, expected):
        np.testing.assert_allclose(
            layer(x.astype("float32"), training=True), want, rtol=1e-4, atol=1e-4
        )
    probe = rng.normal(size=(5, channels))
    np.testing.assert_allclose(
        layer(probe.astype("float32"), training=False),
        gamma * (probe - mu) / sigma + beta,
        rtol=1e-4,
        atol=1e-4,
    )


def test_frozen_bn_is_the_affine_of_the_moving_statistics(rng):
    layer = norms.get("frozen_bn")(axis=1, name="frozen")
    x = np.moveaxis(_features(rng, (4, 3, 5, 6)), -1, 1)
    layer.build(x.shape)
    gamma, beta = (rng.uniform(0.5, 2, 6), rng.normal(size=6))
    mean, var = rng.normal(size=6), rng.uniform(0.2, 3, 6)
    layer.set_weights([a.astype("float32") for a in (gamma, beta, mean, var)])
    shape = (1, 6, 1, 1)
    expected = _bn_reference(
        x.astype(np.float64), *(a.reshape(shape) for a in (mean, var, gamma, beta))
    )
    for training in (True, False):
        np.testing.assert_allclose(layer(x, training=training), expected, rtol=1e-5, atol=1e-5)
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 4


def test_identity_kinds_leave_features_unchanged(rng):
    x = _features(rng, (2, 3, 3, 5))
    for kind in ("wn", "none"):
        factory = norms.get(kind)
        assert not factory.normalizes_features
        np.testing.assert_array_equal(factory(axis=-1, zero_init=True, name="id")(x), x)


@pytest.mark.parametrize(
    "kind", ["bn", "sync_bn", "frozen_bn", "brn", "gn", "ln", "in", "gn+ws", "keras_gn"]
)
def test_zero_init_gives_zero_output(rng, kind):
    layer = norms.get(kind, groups=2)(axis=-1, zero_init=True, name="last")
    x = _features(rng, (2, 3, 3, 4))
    for training in (True, False):
        np.testing.assert_array_equal(layer(x, training=training), np.zeros_like(x))


# --- convolutions the kinds pair with ----------------------------------------


def test_each_kind_pairs_with_its_conv_and_bias_rule():
    expected = {"gn+ws": (WSConv2D, WSConv3D), "wn": (WNConv2D, WNConv3D)}
    for kind in norms.available():
        factory = norms.get(kind)
        conv2d, conv3d = expected.get(kind, (keras.layers.Conv2D, frame_conv3d.Conv3D))
        assert factory.conv_class(2) is conv2d and factory.conv_class(3) is conv3d
        conv = factory.conv(2, 4, 3, name="c")
        assert type(conv) is conv2d
        assert conv.use_bias == (kind in ("wn", "none"))


def _reference_conv(x, kernel, bias=None):
    """Keras's plain Conv2D, 'valid', given a precomputed kernel."""
    conv = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], use_bias=bias is not None)
    conv.build(x.shape)
    conv.set_weights(
        [kernel.astype("float32")] + ([bias.astype("float32")] if bias is not None else [])
    )
    return conv(x)


def test_weight_standardized_conv_matches_reference(rng):
    x = _features(rng, (2, 7, 7, 3))
    conv = norms.get("gn+ws").conv(2, 5, 3, name="ws")
    conv.build(x.shape)
    kernel = conv.kernel.numpy().astype(np.float64) * 3 + 0.5
    conv.kernel.assign(kernel.astype("float32"))
    mean = kernel.mean(axis=(0, 1, 2))
    std = np.sqrt(kernel.var(axis=(0, 1, 2)) + 1e-10)
    standardized = (kernel - mean) / std
    np.testing.assert_allclose(conv(x), _reference_conv(x, standardized), rtol=1e-4, atol=1e-4)


def test_weight_normalized_conv_matches_reference(rng):
    x = _features(rng, (2, 6, 6, 4))
    conv = norms.get("wn").conv(2, 3, 3, name="wn")
    conv.build(x.shape)
    v = conv.kernel.numpy().astype(np.float64)
    norms_v = np.sqrt((v**2).sum(axis=(0, 1, 2)))
    # A fresh layer applies its initial (He) kernel unchanged: g = ‖v‖.
    np.testing.assert_allclose(conv.gain, norms_v, rtol=1e-5)
    gain, bias = rng.uniform(0.2, 2.0, 3), rng.normal(size=3)
    conv.gain.assign(gain.astype("float32"))
    conv.bias.assign(bias.astype("float32"))
    np.testing.assert_allclose(
        conv(x), _reference_conv(x, gain * v / norms_v, bias), rtol=1e-4, atol=1e-4
    )
    zero = norms.get("wn").conv(2, 3, 3, zero_init=True, name="wn0")
    np.testing.assert_array_equal(zero(x), np.zeros((2, 4, 4, 3)))


def test_weight_convs_train_and_the_gradient_reaches_the_stored_kernel(rng):
    x = _features(rng, (2, 4, 5, 5, 2))
    for conv in (WSConv3D(3, 3, padding="same"), WNConv3D(3, 3, padding="same")):
        conv.build(x.shape)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv(x) ** 2)
        gradients = tape.gradient(loss, conv.trainable_variables)
        assert all(
            g is not None and np.isfinite(g).all() and np.abs(g).max() > 0 for g in gradients
        )


def test_temporal_replicate_padding_matches_numpy_edge_padding(rng):
    clip = _features(rng, (2, 4, 3, 3, 2))
    padded = TemporalReplicatePadding(2)(clip)
    np.testing.assert_array_equal(
        padded, np.pad(clip, [(0, 0), (2, 2), (0, 0), (0, 0), (0, 0)], mode="edge")
    )
    first = np.moveaxis(clip, -1, 1)
    padded = TemporalReplicatePadding(1, "channels_first")(first)
    np.testing.assert_array_equal(
        padded, np.pad(first, [(0, 0), (0, 0), (1, 1), (0, 0), (0, 0)], mode="edge")
    )


# --- naming rule and configs --------------------------------------------------


def test_is_norm_variable_picks_exactly_the_norm_gammas_and_betas():
    inputs = keras.Input((6, 6, 8))
    x = inputs
    for i, kind in enumerate(norms.available()):
        factory = norms.get(kind, groups=4)
        x = factory.conv(2, 8, 3, padding="same", name=f"conv{i}")(x)
        x = factory(axis=-1, name=f"norm{i}")(x)
    x = keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, x)
    norm_layers = [layer for layer in model.layers if layer.name.startswith("norm")]
    expected = {
        id(getattr(layer, name))
        for layer in norm_layers
        for name in ("gamma", "beta")
        if getattr(layer, name, None) is not None
    }
    flagged = {id(v) for v in model.weights if norms.is_norm_variable(v)}
    assert flagged == expected and len(expected) == 2 * 9  # all but wn and none


@pytest.mark.parametrize("kind", norms.available())
def test_layers_round_trip_through_config(rng, kind):
    factory = norms.get(kind, groups=2)
    x = _features(rng, (2, 3, 3, 4))
    layer = factory(axis=-1, zero_init=True, name="n")
    conv = factory.conv(2, 4, 1, zero_init=True, name="c")
    for original in (layer, conv):
        original(x)
        restored = keras.layers.deserialize(keras.layers.serialize(original))
        if not restored.built:
            restored.build(x.shape)
        restored.set_weights(original.get_weights())
        np.testing.assert_array_equal(restored(x), original(x))
        assert restored.get_config() == original.get_config()


def test_available_lists_every_kind_of_the_issue():
    wanted = {
        "bn",
        "sync_bn",
        "frozen_bn",
        "brn",
        "gn",
        "ln",
        "in",
        "wn",
        "gn+ws",
        "none",
        "keras_gn",
    }
    assert set(norms.available()) == wanted


# --- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "batchnorm"}, "name='batchnorm'"),
        ({"name": "gn", "epsilon": 0}, "epsilon=0"),
        ({"name": "bn", "momentum": 1.0}, "momentum=1.0"),
        ({"name": "gn", "groups": 0}, "groups=0"),
        ({"name": "gn", "group_size": -2}, "group_size=-2"),
        ({"name": "keras_gn", "group_size": 8}, "group_size=8"),
    ],
)
def test_get_rejects_bad_arguments(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        norms.get(name, **kwargs)
    if name == "batchnorm":
        assert all(kind in str(error.value) for kind in norms.available())


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="epsilon=-1"):
        FrozenBatchNormalization(epsilon=-1)
    with pytest.raises(ValueError, match="padding=-1"):
        TemporalReplicatePadding(-1)
    with pytest.raises(ValueError, match="epsilon=0"):
        WSConv2D(4, 3, epsilon=0)
    with pytest.raises(ValueError, match="rank=1"):
        norms.get("gn").conv_class(1)
