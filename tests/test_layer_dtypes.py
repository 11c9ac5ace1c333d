"""GroupNormalization's dtypes under every policy and backend (issue 15).

* Inputs are taken as they come: a float32 input under a mixed policy is not
  rounded to 16 bits before the float32 statistics.
* 16-bit inputs get float32 statistics on every backend (torch dtypes never
  equal strings, so the code compares standardized names).
* float64 stays float64 on every backend, checked at float64 tolerance.
* γ/β are float32 under every policy but float64.

The TensorFlow checks run on the compiled kernels and on TensorFlow ops
(``kernels_setting``); JAX and PyTorch run in a fresh process each, with
``JAX_ENABLE_X64=1`` so that JAX has a float64 at all.
"""

import importlib.util

import keras
import numpy as np
import pytest
import tensorflow as tf
from gn_reference import group_norm_reference
from subprocess_utils import run_python

from gn_keras import GroupNormalization

# Output tolerance of a result rounded once to the compute dtype (|y| < ~6).
ROUNDING = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 2e-5, "float64": 1e-12}


def _affine(rng, channels):
    return rng.normal(1.0, 0.5, channels), rng.normal(0.0, 0.5, channels)


def _layer(policy, shape, groups, gamma=None, beta=None, **kwargs):
    layer = GroupNormalization(groups=groups, dtype=policy, **kwargs)
    layer.build(shape)
    if gamma is not None:
        layer.set_weights([gamma, beta])
    return layer


def _as_float64(y):
    return keras.ops.convert_to_numpy(keras.ops.cast(y, "float64"))


def _predict(layer, x):
    """The layer inside a model, through Keras's predict loop (the kernels run there)."""
    inputs = keras.Input(x.shape[1:], dtype=str(x.dtype))
    return keras.Model(inputs, layer(inputs)).predict(x, verbose=0)


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("through", ["call", "predict"])
def test_float32_input_beyond_float16_range_under_mixed_float16(rng, through):
    run = (lambda layer, x: layer(x)) if through == "call" else _predict
    constant = np.full((2, 4, 8), 70000.0, "float32")
    y = run(_layer("mixed_float16", constant.shape, 2), constant)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_array_equal(_as_float64(y), 0.0)  # β exactly, not NaN

    x = (7e4 + 300 * rng.normal(size=(2, 6, 5, 8))).astype("float32")
    gamma, beta = _affine(rng, 8)
    layer = _layer("mixed_float16", x.shape, 4, gamma, beta)
    expected = group_norm_reference(x, gamma.astype("float32"), beta.astype("float32"), 4)
    np.testing.assert_allclose(_as_float64(run(layer, x)), expected, atol=ROUNDING["float16"])


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_float32_input_under_mixed_policy_keeps_float32_statistics(rng, policy):
    # Mean 1e3, std 0.1: rounding the input to 16 bits first was off by up to 5.1.
    x = (1e3 + 0.1 * rng.normal(size=(2, 7, 5, 16))).astype("float32")
    gamma, beta = _affine(rng, 16)
    layer = _layer(policy, x.shape, 4, gamma, beta)
    y = layer(x)
    compute = policy.split("_")[1]
    assert keras.backend.standardize_dtype(y.dtype) == compute
    expected = group_norm_reference(x, gamma.astype("float32"), beta.astype("float32"), 4)
    np.testing.assert_allclose(_as_float64(y), expected, atol=ROUNDING[compute])


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_input_statistics_are_float32(rng, dtype):
    # The torch repro: σ ≈ 300 would overflow a float16 sum of squares.
    x = tf.constant(300 * rng.normal(size=(2, 16, 8)), dtype)
    for policy, compute in ((f"mixed_{dtype}", dtype), ("float32", "float32")):
        y = _layer(policy, x.shape, 4, center=False, scale=False)(x)
        assert keras.backend.standardize_dtype(y.dtype) == compute
        expected = group_norm_reference(_as_float64(x), groups=4)
        np.testing.assert_allclose(_as_float64(y), expected, atol=ROUNDING[compute])


@pytest.mark.parametrize(
    "policy,affine",
    [
        ("float32", "float32"),
        ("mixed_float16", "float32"),
        ("mixed_bfloat16", "float32"),
        ("float16", "float32"),
        ("bfloat16", "float32"),
        ("float64", "float64"),
    ],
)
def test_gamma_beta_dtype_under_each_policy(rng, policy, affine):
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    layer = GroupNormalization(groups=2, dtype=policy)
    y = layer(x)
    assert [w.dtype for w in layer.weights] == [affine, affine]
    assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype


def test_float64_policy_is_exact(rng):
    x = rng.normal(size=(3, 5, 6, 12)) * 3 + 2
    gamma, beta = _affine(rng, 12)
    y = _layer("float64", x.shape, 4, gamma, beta)(x)
    assert y.dtype == tf.float64
    np.testing.assert_allclose(y.numpy(), group_norm_reference(x, gamma, beta, 4), atol=1e-12)


# Runs the checks above, float64 and masks on one Keras backend in a fresh
# process and saves what it got; the test compares it with the reference.
_BACKEND_SCRIPT = """
import numpy as np, keras
from keras import ops
from gn_keras import GroupNormalization, group_norm
assert keras.backend.backend() == {backend!r}
data = dict(np.load({data!r}))
out = {{}}
f64 = lambda y: ops.convert_to_numpy(ops.cast(y, "float64"))
name = lambda y: keras.backend.standardize_dtype(y.dtype)

def layer(policy, shape, groups, gamma=None, beta=None, **kwargs):
    result = GroupNormalization(groups=groups, dtype=policy, **kwargs)
    result.build(shape)
    if gamma is not None:
        result.set_weights([gamma, beta])
    return result

y = layer("mixed_float16", (2, 4, 8), 2)(np.full((2, 4, 8), 70000.0, "float32"))
out["constant"], out["constant_dtype"] = f64(y), name(y)
for policy in ("mixed_float16", "mixed_bfloat16"):
    x = data["far_" + policy]
    y = layer(policy, x.shape, 4, data["gamma16"], data["beta16"])(x)
    out["far_" + policy], out["far_dtype_" + policy] = f64(y), name(y)
x16 = ops.convert_to_tensor(data["x16"], "float16")
y = layer("mixed_float16", x16.shape, 4, center=False, scale=False)(x16)
out["x16"], out["x16_dtype"] = f64(y), name(y)
out["dgamma"], out["dbeta"] = bfloat16_gradients(data)

y = group_norm(data["x64"], data["gamma64"], data["beta64"], groups=4)
out["x64"], out["x64_dtype"] = ops.convert_to_numpy(y), name(y)
y = group_norm(data["seq64"], groups=2, mask=data["mask"], axis=1)
out["seq64"], out["seq64_dtype"] = ops.convert_to_numpy(y), name(y)
y = layer("float64", data["x64"].shape, 4, data["gamma64"], data["beta64"])(data["x64"])
out["layer64"], out["layer64_dtype"] = ops.convert_to_numpy(y), name(y)

masked = layer("float32", (1, 5, 4), 2, center=False, scale=False)
x, mask = data["x_mask"], data["mask_row"]
out["mask_squeezed"] = f64(masked(x, mask=mask[..., None]))
out["mask_plain"] = f64(masked(x, mask=mask))
try:
    masked(x, mask=mask[:, :4])
except ValueError as error:
    out["mask_error"] = str(error)
np.savez({result!r}, **out)
"""

_GRADIENTS = {
    "tensorflow": """
import tensorflow as tf
def bfloat16_gradients(data):
    x = tf.constant(data["xb"], tf.bfloat16)
    gn = layer("mixed_bfloat16", x.shape, 5, data["gammab"], data["betab"])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(gn(x), tf.float32) * data["upstream"])
    grads = tape.gradient(loss, gn.trainable_variables)
    return [g.numpy().astype("float64") for g in grads]
""",
    "jax": """
import jax
def bfloat16_gradients(data):
    x = ops.convert_to_tensor(data["xb"], "bfloat16")
    gn = layer("mixed_bfloat16", x.shape, 5, data["gammab"], data["betab"])
    def loss(trainable):
        y, _ = gn.stateless_call(trainable, [], x)
        return ops.sum(ops.cast(y, "float32") * data["upstream"])
    grads = jax.grad(loss)([v.value for v in gn.trainable_variables])
    return [np.asarray(g, "float64") for g in grads]
""",
    "torch": """
import torch
def bfloat16_gradients(data):
    x = ops.convert_to_tensor(data["xb"], "bfloat16")
    gn = layer("mixed_bfloat16", x.shape, 5, data["gammab"], data["betab"])
    upstream = ops.convert_to_tensor(data["upstream"], "float32")
    loss = ops.sum(ops.cast(gn(x), "float32") * upstream)
    grads = torch.autograd.grad(loss, [v.value for v in gn.trainable_variables])
    return [g.detach().double().numpy() for g in grads]
""",
}


def _backend_inputs(rng):
    data = {
        "x16": (300 * rng.normal(size=(2, 16, 8))).astype("float16"),
        "x64": rng.normal(size=(3, 5, 6, 12)) * 3 + 2,
        "seq64": rng.normal(size=(3, 8, 6)) * 2 - 1,
        "mask": np.arange(6)[None] < np.array([[6], [3], [1]]),
        "x_mask": rng.normal(size=(1, 5, 4)).astype("float32"),
        "mask_row": np.array([[1, 1, 1, 0, 0]], bool),
        # bfloat16-exact inputs and upstream gradients: only the statistics round.
        "xb": _bfloat16_exact(30 * rng.normal(size=(2, 6, 7, 10)) + 5),
        "upstream": rng.integers(-4, 5, size=(2, 6, 7, 10)).astype("float32") / 4,
    }
    data["gamma64"], data["beta64"] = _affine(rng, 12)
    gamma, beta = _affine(rng, 8)
    data["gamma16"], data["beta16"] = gamma.astype("float32"), beta.astype("float32")
    gamma, beta = _affine(rng, 10)
    data["gammab"], data["betab"] = gamma.astype("float32"), beta.astype("float32")
    for policy in ("mixed_float16", "mixed_bfloat16"):
        data["far_" + policy] = (1e3 + 0.1 * rng.normal(size=(2, 7, 5, 8))).astype("float32")
    return data


def _bfloat16_exact(values):
    return tf.cast(tf.constant(values, tf.bfloat16), tf.float32).numpy()


def _check_backend_results(out, data):
    assert out["constant_dtype"] == "float16"
    np.testing.assert_array_equal(out["constant"], 0.0)
    for policy in ("mixed_float16", "mixed_bfloat16"):
        compute = policy.split("_")[1]
        assert out["far_dtype_" + policy] == compute
        expected = group_norm_reference(
            data["far_" + policy], data["gamma16"], data["beta16"], groups=4
        )
        np.testing.assert_allclose(out["far_" + policy], expected, atol=ROUNDING[compute])
    assert out["x16_dtype"] == "float16"
    expected = group_norm_reference(data["x16"], groups=4)
    np.testing.assert_allclose(out["x16"], expected, atol=ROUNDING["float16"])

    normalized = group_norm_reference(data["xb"], groups=5)
    dgamma = (data["upstream"] * normalized).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(out["dgamma"], dgamma, atol=1e-4 * np.abs(dgamma).max())
    np.testing.assert_allclose(out["dbeta"], data["upstream"].sum(axis=(0, 1, 2)), atol=1e-4)

    expected = group_norm_reference(data["x64"], data["gamma64"], data["beta64"], groups=4)
    for key in ("x64", "layer64"):
        assert out[key + "_dtype"] == "float64"
        np.testing.assert_allclose(out[key], expected, rtol=1e-12, atol=1e-12)
    assert out["seq64_dtype"] == "float64"
    expected = group_norm_reference(data["seq64"], groups=2, axis=1, mask=data["mask"])
    np.testing.assert_allclose(out["seq64"], expected, rtol=1e-12, atol=1e-12)

    np.testing.assert_array_equal(out["mask_squeezed"], out["mask_plain"])
    expected = group_norm_reference(data["x_mask"], groups=2, mask=data["mask_row"])
    np.testing.assert_allclose(out["mask_plain"], expected, atol=2e-5)
    assert "(1, 4)" in str(out["mask_error"]) and "(1, 5, 4)" in str(out["mask_error"])


@pytest.mark.parametrize(
    "backend,kernels",
    [("tensorflow", "require"), ("tensorflow", "off"), ("jax", "off"), ("torch", "off")],
)
def test_every_backend_dtypes_float64_and_masks(rng, tmp_path, backend, kernels):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"Keras backend {backend!r} needs the {backend!r} package")
    data = _backend_inputs(rng)
    np.savez(tmp_path / "data.npz", **data)
    script = _GRADIENTS[backend] + _BACKEND_SCRIPT.format(
        backend=backend, data=str(tmp_path / "data.npz"), result=str(tmp_path / "out.npz")
    )
    env = {"KERAS_BACKEND": backend, "JAX_ENABLE_X64": "1", "GN_KERAS_KERNELS": kernels}
    run_python(script, env=env)
    _check_backend_results(dict(np.load(tmp_path / "out.npz")), data)
