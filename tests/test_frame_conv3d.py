"""gn_keras's Conv3D: Keras's Conv3D as 2D convolutions over frames.

The suite runs with oneDNN off (tests/conftest.py), where the layer takes
its frame path; each case is compared, values and gradients, with
``keras.layers.Conv3D`` holding the same weights, and with a float64 NumPy
sum over the kernel's taps for one case.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import gn_keras
from gn_keras import _platform, frame_conv3d
from gn_keras.frame_conv3d import Conv3D

CASES = [
    # kernel, strides, padding
    ((1, 1, 1), (1, 1, 1), "same"),
    ((3, 1, 1), (1, 1, 1), "valid"),
    ((3, 3, 3), (1, 2, 2), "same"),
    ((1, 3, 3), (1, 2, 2), "valid"),
    ((2, 3, 3), (1, 1, 1), "same"),
    ((5, 7, 7), (1, 2, 2), "valid"),
    ((3, 3, 3), (2, 1, 1), "same"),  # temporal stride: Keras's own path
]


def test_the_frame_path_is_taken_on_a_cpu_without_onednn():
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0" or tf.config.list_logical_devices("GPU"):
        pytest.skip("only meaningful on a CPU with oneDNN off")
    assert _platform.tf_cpu_without_onednn()
    assert frame_conv3d._frame_conv_applies(Conv3D(4, 3))
    assert not frame_conv3d._frame_conv_applies(Conv3D(4, 3, strides=(2, 1, 1)))


@pytest.mark.parametrize("kernel,strides,padding", CASES)
def test_values_and_gradients_equal_keras_conv3d(rng, kernel, strides, padding):
    x = tf.constant(rng.normal(size=(2, 6, 9, 9, 3)).astype("float32"))
    ours = Conv3D(4, kernel, strides, padding=padding, use_bias=True)
    theirs = keras.layers.Conv3D(4, kernel, strides, padding=padding, use_bias=True)
    ours.build(x.shape)
    theirs.build(x.shape)
    ours.set_weights([rng.normal(size=w.shape).astype("float32") for w in ours.get_weights()])
    theirs.set_weights(ours.get_weights())
    upstream = None
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            if upstream is None:
                upstream = tf.constant(rng.normal(size=y.shape).astype("float32"))
            loss = tf.reduce_sum(y * upstream)
        results.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_a_temporal_kernel_equals_a_float64_sum_of_frame_products(rng):
    """Output frame t is the sum over taps τ of frame t+τ times kernel[τ] (1×1 spatial)."""
    x = rng.normal(size=(1, 5, 4, 4, 3))
    kernel = rng.normal(size=(3, 1, 1, 3, 2))
    got = frame_conv3d.conv3d_as_frame_convs(
        tf.constant(x, "float32"), tf.constant(kernel, "float32"), (1, 1), "valid"
    )
    want = sum(
        np.einsum("nthwc,cf->nthwf", x[:, tap : tap + 3], kernel[tap, 0, 0]) for tap in range(3)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_and_saving(rng, tmp_path):
    x = rng.normal(size=(2, 4, 8, 8, 3)).astype("float32")
    inputs = keras.Input((None, 8, 8, 3))
    model = keras.Model(
        inputs, Conv3D(4, (3, 3, 3), padding="same", dtype="mixed_bfloat16")(inputs)
    )
    reference = keras.layers.Conv3D(4, (3, 3, 3), padding="same", dtype="mixed_bfloat16")
    reference.build(x.shape)
    reference.set_weights(model.layers[-1].get_weights())
    got = np.asarray(tf.cast(model(x), "float32"))
    np.testing.assert_allclose(
        got, np.asarray(tf.cast(reference(x), "float32")), rtol=0.05, atol=0.05
    )
    path = str(tmp_path / "conv.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[-1]) is Conv3D
    np.testing.assert_array_equal(np.asarray(tf.cast(loaded(x), "float32")), got)


def test_a_graph_traced_for_export_keeps_conv3d(rng):
    """Exports run elsewhere (a GPU, a oneDNN CPU), where Conv3D itself is the fast op."""
    inputs = keras.Input((4, 8, 8, 3))
    model = keras.Model(inputs, Conv3D(4, (3, 3, 3), padding="same")(inputs))
    x = rng.normal(size=(2, 4, 8, 8, 3)).astype("float32")
    eager = model(x)
    with gn_keras.portable_ops():
        concrete = tf.function(model).get_concrete_function(tf.TensorSpec((None, 4, 8, 8, 3)))
    graph = concrete.graph.as_graph_def()
    ops = {node.op for node in graph.node}
    ops |= {node.op for function in graph.library.function for node in function.node_def}
    assert "Conv3D" in ops and "Conv2D" not in ops
    np.testing.assert_allclose(concrete(tf.constant(x)), eager, rtol=1e-5, atol=1e-5)
