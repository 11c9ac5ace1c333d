"""GroupNormalization(activation="silu"): GN then SiLU, fused where it can be.

Values are checked against the float64 NumPy reference of the paper's
equations followed by ``v·sigmoid(v)``; gradients against float64 autodiff
of the keras.ops implementation (the fast path switched off) followed by a
separate SiLU.  Every implementation is covered: the compiled kernels
(channels-last 4-D and 5-D, float32 and 16-bit), XLA, the plain and portable
TensorFlow ops, and the keras.ops path that masks (and other backends) take.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from fast_path_helpers import keras_ops_path, offset_normal, record_choices
from gn_reference import group_norm_reference

import gn_keras
from gn_keras import group_norm


def _silu(v):
    return v / (1.0 + np.exp(-v))


_input = offset_normal


@pytest.fixture
def chosen(monkeypatch):
    """Names of the implementations ``group_norm`` picks, call by call."""
    return record_choices(monkeypatch)


def _forward_backward(x, gamma, beta, upstream, groups, fused):
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        if fused:
            y = group_norm(x, gamma, beta, groups=groups, activation="silu")
        else:
            y = group_norm(x, gamma, beta, groups=groups)
            y = y * tf.sigmoid(y)
    return [y, *tape.gradient(y, [x, gamma, beta], output_gradients=upstream)]


@pytest.mark.parametrize(
    "shape,groups",
    [((2, 37, 29, 64), 8), ((64, 7, 7, 32), 8), ((2, 3, 6, 5, 16), 4), ((3, 20, 1024), 32)],
)
def test_fused_silu_values_and_gradients(rng, chosen, shape, groups):
    """SiLU(GN(x)) and its gradient, dy·(s + v·s·(1 − s)) with s = sigmoid(v)."""
    x, upstream = _input(rng, shape), rng.normal(size=shape)
    gamma, beta = rng.normal(1.0, 0.5, shape[-1]), rng.normal(0.0, 0.5, shape[-1])
    ours = tf.function(_forward_backward)(
        *(tf.constant(v, "float32") for v in (x, gamma, beta, upstream)), groups, True
    )
    assert chosen == ["fused"]
    with keras_ops_path():
        reference = _forward_backward(
            *(tf.constant(v) for v in (x, gamma, beta, upstream)), groups, False
        )
    reference[0] = _silu(group_norm_reference(x, gamma, beta, groups))
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got.numpy(), np.asarray(want), atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("dtype,tolerance", [("bfloat16", 3e-2), ("float16", 3e-3)])
def test_fused_silu_on_16_bit_inputs(rng, chosen, dtype, tolerance):
    shape, groups = (2, 9, 7, 32), 8
    x = tf.constant(_input(rng, shape), dtype)
    upstream = tf.constant(rng.normal(size=shape), dtype)
    gamma, beta = (tf.constant(rng.normal(m, 0.3, 32), "float32") for m in (1.0, 0.0))
    ours = _forward_backward(x, gamma, beta, upstream, groups, True)
    assert chosen == ["fused"] and ours[0].dtype == x.dtype and ours[1].dtype == x.dtype
    wide = [tf.cast(v, tf.float64) for v in (x, gamma, beta, upstream)]
    with keras_ops_path():
        reference = _forward_backward(*wide, groups, False)
    for got, want in zip(ours, reference):
        got, want = tf.cast(got, tf.float64).numpy(), want.numpy()
        np.testing.assert_allclose(got, want, atol=tolerance * np.abs(want).max())


def test_silu_in_every_implementation(rng, chosen):
    """Fused, XLA, plain and portable TensorFlow ops, and keras.ops, all apply SiLU."""
    x = _input(rng, (2, 5, 5, 8)).astype("float32")
    expected = _silu(group_norm_reference(x, groups=4))
    layer = gn_keras.GroupNormalization(groups=4, activation="silu")

    def under_tape(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            return layer(x)

    eager = layer(x)
    xla = tf.function(under_tape, jit_compile=True)(tf.constant(x))
    plain = tf.function(lambda x: layer(x))(tf.constant(x))
    with gn_keras.portable_ops():
        portable = tf.function(lambda x: layer(x))(tf.constant(x))
    assert chosen == ["fused", "xla", "plain", "portable"]
    with keras_ops_path():
        keras_ops = layer(x)
    for got in (eager, xla, plain, portable, keras_ops):
        np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)


@pytest.mark.parametrize("activation", ["silu", "swish"])
def test_swish_is_stored_as_silu_and_round_trips(rng, tmp_path, activation):
    layer = gn_keras.GroupNormalization(groups=4, activation=activation, name="gn")
    config = layer.get_config()
    assert config["activation"] == "silu"
    assert gn_keras.GroupNormalization.from_config(config).get_config() == config
    inputs = keras.Input((5, 5, 8))
    model = keras.Model(inputs, layer(inputs))
    x = _input(rng, (2, 5, 5, 8)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("gn").activation == "silu"
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_group_norm_function_takes_silu_with_a_mask(rng):
    """Masks take the keras.ops path: statistics over the valid steps, then SiLU."""
    x = rng.normal(size=(3, 9, 8)) * 2 + 1
    mask = np.arange(9)[None, :] < np.array([[9], [5], [2]])
    gamma, beta = rng.normal(size=8), rng.normal(size=8)
    got = group_norm(x, gamma, beta, groups=4, mask=mask, activation="swish").numpy()
    expected = _silu(group_norm_reference(x, gamma, beta, groups=4, mask=mask))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_saved_model_export_applies_silu_with_standard_ops(rng, tmp_path):
    inputs = keras.Input((5, 5, 8))
    model = keras.Model(inputs, gn_keras.GroupNormalization(groups=4, activation="silu")(inputs))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    with open(tmp_path / "sm" / "saved_model.pb", "rb") as saved:
        assert b"GnKeras" not in saved.read()
    x = _input(rng, (3, 5, 5, 8)).astype("float32")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    served = loaded.serve(x).numpy()
    np.testing.assert_allclose(served, _silu(group_norm_reference(x, groups=4)), atol=2e-5)
