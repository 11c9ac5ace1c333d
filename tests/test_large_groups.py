"""Statistics that stay exact on large groups, on every TensorFlow path.

The VAE decoders of diffusion models normalize groups of millions of
values.  A float32 sum over such a group, taken in one run, drifts by up to
1e-3 of the group's mean (more with oneDNN's matmul), so every path sums in
bounded chunks (gn_keras.functional.chunking, gn_keras.tf_sums) or in the
compiled kernels' blocks.  Each path here normalizes one group of 16.8 M
values whose mean is far from zero, and is compared with the float64
reference of the paper's equations: its error must stay at float32's
resolution of the output, as on a small group.  The Keras JAX and PyTorch
backends are checked in test_layer_runtime.py.
"""

import numpy as np
import pytest
import tensorflow as tf
from fast_path_helpers import keras_ops_path, record_choices
from gn_reference import group_norm_reference

import gn_keras
from gn_keras import group_norm

# One group of 1024·2048·8 = 16.8 M values (64 MB in float32).
SHAPE = (1, 1024, 2048, 8)
# Outputs are O(1): float32 rounds them by 1.2e-7; a sum that drifts with
# the group's size misses by 1e-5 to 1e-2 here.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def big_group():
    """x (uniform on [offset, offset + 1), float32) and its float64 GN, channels last."""
    rng = np.random.default_rng()
    offset = rng.uniform(50.0, 100.0)
    x = (rng.uniform(0.0, 1.0, size=SHAPE) + offset).astype(np.float32)
    return x, group_norm_reference(x, groups=1)


def _laid_out(big_group, axis):
    x, expected = big_group
    if axis == 1:
        return np.moveaxis(x, -1, 1).copy(), np.moveaxis(expected, -1, 1)
    return x, expected


@pytest.fixture
def chosen(monkeypatch):
    """Names of the implementations ``group_norm`` picks, call by call."""
    return record_choices(monkeypatch)


def _under_tape(function):
    def recorded(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            return function(x)

    return recorded


def _run(path, x, axis):
    normalize = lambda x: group_norm(x, groups=1, axis=axis)  # noqa: E731
    if path == "fused":
        return normalize(x)
    # (autograph=False: converting the library's Python takes longer than the run.)
    if path == "plain":
        return tf.function(normalize, autograph=False)(x)
    if path == "xla":
        return tf.function(_under_tape(normalize), jit_compile=True, autograph=False)(x)
    if path == "portable":
        with gn_keras.portable_ops():
            return tf.function(_under_tape(normalize), autograph=False)(x)
    with keras_ops_path():  # what masks and other backends run
        return normalize(x)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("path", ["fused", "plain", "xla", "portable", "keras_ops"])
def test_one_group_of_16_million_values(big_group, chosen, path, axis):
    x, expected = _laid_out(big_group, axis)
    got = np.asarray(_run(path, tf.constant(x), axis))
    assert chosen == ([] if path == "keras_ops" else [path])
    error = np.abs(got - expected).max()
    assert error < TOLERANCE, f"{path}, axis={axis}: max error {error:.3g}"


def test_closed_form_gradient_on_a_large_group(big_group, chosen):
    """The backward's sums too (Σ dy and Σ dy·x̂ over the group): kernel and XLA.

    The float64 reference is dx = (dy − mean(dy) − x̂·mean(dy·x̂))/σ, for
    γ = 1; dy is far from zero-mean, so a drifting sum would show.
    """
    x, xhat = big_group
    upstream = np.random.default_rng().uniform(1.0, 2.0, size=SHAPE)
    sigma = np.sqrt(np.var(x.astype(np.float64)) + 1e-5)
    expected = (upstream - upstream.mean() - xhat * (upstream * xhat).mean()) / sigma
    normalize = lambda t: group_norm(t, groups=1)  # noqa: E731
    xla = tf.function(_under_tape(normalize), jit_compile=True, autograph=False)
    for function in (normalize, xla):
        constant = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(constant)
            y = function(constant)
        dx = tape.gradient(y, constant, output_gradients=tf.constant(upstream, tf.float32))
        error = np.abs(dx.numpy() - expected).max()
        assert error < 4 * TOLERANCE * np.abs(expected).max(), error
    assert chosen == ["fused", "xla"]
