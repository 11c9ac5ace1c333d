"""The TensorFlow fast path (gn_keras/tf_fast.py) against independent references.

Values are checked against the float64 NumPy reference; first and second
derivatives against autodiff of the keras.ops implementation in float64
(the same ``group_norm`` with the fast path switched off).  Every check runs
eagerly and inside ``tf.function`` with static shapes.  The checks marked
with the ``kernels_setting`` fixture (tests/conftest.py) run twice: on the compiled kernels of
gn_keras/kernels (float32/16-bit channels-last inputs), and with them
switched off, on TensorFlow ops (plain eagerly and in inference graphs,
XLA-compiled clusters in training graphs).  float64 inputs and other
channel axes always take the TensorFlow ops.
"""

import contextlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from gn_reference import group_norm_reference
from subprocess_utils import run_python

from gn_keras import GroupNormalization, group_norm, tf_fast

# (shape, axis, groups): ranks 2-5, channels last, first and in the middle.
CASES = [
    ((3, 12), -1, 4),
    ((2, 5, 7, 16), -1, 4),
    ((2, 16, 5, 7), 1, 8),
    ((2, 5, 12, 3), 2, 3),
    ((1, 3, 5, 4, 8), -1, 8),
]
# Forward values: eager (plain ops), an inference graph (plain ops) and a
# training graph traced under a recording tape (XLA-marked kernels).
VALUE_MODES = ["eager", "inference_graph", "training_graph"]
# Gradients always trace under a tape: eager, or a (training) graph.
MODES = ["eager", "graph"]


def _input(rng, shape):
    return rng.normal(size=shape) * rng.uniform(0.5, 3.0) + rng.uniform(-4, 4)


def _affine(rng, channels, affine):
    if not affine:
        return None, None
    return rng.normal(1.0, 0.5, channels), rng.normal(0.0, 0.5, channels)


def _run(mode, function, *args):
    if mode == "eager":
        return function(*args)
    if mode == "training_graph":
        return tf.function(lambda *a: _under_tape(function, *a))(*args)
    return tf.function(function)(*args)


def _under_tape(function, *args):
    with tf.GradientTape():
        return function(*args)


def _xla_compiled_calls(concrete_function):
    """Functions the graph calls with ``jit_compile=True``."""
    library = concrete_function.graph.as_graph_def().library.function
    return [
        f.signature.name
        for f in library
        if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b
    ]


@pytest.fixture
def keras_ops_path(monkeypatch):
    """A context that sends ``group_norm`` down the keras.ops reference path."""

    @contextlib.contextmanager
    def context():
        with monkeypatch.context() as patch:
            patch.setattr(tf_fast, "supports", lambda x: False)
            yield

    return context


def _gradients(function, x, gamma, beta, upstream, mode):
    """dx, dγ, dβ of sum(function(x, γ, β) · upstream)."""

    def compute(x, gamma, beta):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y = function(x, gamma, beta)
        return tape.gradient(y, [x, gamma, beta], output_gradients=upstream)

    return [g.numpy() for g in _run(mode, compute, x, gamma, beta)]


def test_dispatch_uses_fast_path_only_without_mask(rng, monkeypatch):
    calls = []
    original = tf_fast.group_norm
    monkeypatch.setattr(tf_fast, "group_norm", lambda *a: calls.append(a) or original(*a))
    x = _input(rng, (2, 6, 4)).astype("float32")
    group_norm(x, groups=2)
    assert len(calls) == 1
    group_norm(x, groups=2, mask=np.ones((2, 6), bool))
    assert len(calls) == 1


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("mode", VALUE_MODES)
@pytest.mark.parametrize("shape,axis,groups", CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_forward_matches_float64_reference(rng, mode, shape, axis, groups, affine):
    x = _input(rng, shape)
    gamma, beta = _affine(rng, shape[axis], affine)
    for dtype, tolerance in (("float64", 1e-12), ("float32", 2e-5)):
        # The reference of the values the dtype holds: rounding the input to
        # float32 is not the kernel's error, and with 3 values per group and
        # a small spread it alone exceeded 2e-5 (p≈5e-5 per case).
        values = [None if v is None else v.astype(dtype) for v in (x, gamma, beta)]
        expected = group_norm_reference(*values, groups, axis)
        args = [tf.constant(v) for v in values if v is not None]
        y = _run(mode, lambda x, *ab: group_norm(x, *ab, groups=groups, axis=axis), *args)
        assert y.dtype == dtype and y.shape == shape
        np.testing.assert_allclose(y.numpy(), expected, rtol=tolerance, atol=tolerance)


def test_only_training_graphs_with_static_sizes_call_xla(rng, monkeypatch):
    monkeypatch.setenv("GN_KERAS_KERNELS", "off")  # the compiled kernels take precedence
    training = tf.function(lambda x: _under_tape(lambda x: group_norm(x, groups=4), x))
    inference = tf.function(lambda x: group_norm(x, groups=4))
    static, dynamic = tf.TensorSpec([None, 5, 5, 8]), tf.TensorSpec([None, None, None, 8])
    assert len(_xla_compiled_calls(training.get_concrete_function(static))) == 1
    assert _xla_compiled_calls(training.get_concrete_function(dynamic)) == []
    assert _xla_compiled_calls(inference.get_concrete_function(static)) == []
    dynamic = training.get_concrete_function(dynamic)
    # The unmarked graph handles any size and agrees with the reference.
    x = _input(rng, (3, 4, 9, 8)).astype("float32")
    np.testing.assert_allclose(
        dynamic(tf.constant(x)).numpy(), group_norm_reference(x, groups=4), rtol=2e-5, atol=2e-5
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,axis,groups", CASES)
def test_closed_form_gradients_match_keras_ops_autodiff(
    rng, keras_ops_path, mode, shape, axis, groups
):
    x = tf.constant(_input(rng, shape))
    gamma, beta = (tf.constant(v) for v in _affine(rng, shape[axis], True))
    upstream = tf.constant(rng.normal(size=shape))
    normalize = lambda x, g, b: group_norm(x, g, b, groups=groups, axis=axis)  # noqa: E731
    fast = _gradients(normalize, x, gamma, beta, upstream, mode)
    with keras_ops_path():
        reference = _gradients(normalize, x, gamma, beta, upstream, "eager")
    for ours, theirs in zip(fast, reference):
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_without_gamma_beta(rng, keras_ops_path, mode):
    x = tf.constant(_input(rng, (2, 6, 5, 12)))
    upstream = tf.constant(rng.normal(size=x.shape))

    def dx(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = group_norm(x, groups=3)
        return tape.gradient(y, x, output_gradients=upstream)

    fast = _run(mode, dx, x)
    with keras_ops_path():
        reference = dx(x)
    np.testing.assert_allclose(fast.numpy(), reference.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("mode", MODES)
def test_float32_gradients_match_float64(rng, keras_ops_path, mode):
    shape, axis, groups = (2, 7, 6, 32), -1, 8
    x, upstream = _input(rng, shape), rng.normal(size=shape)
    gamma, beta = _affine(rng, 32, True)
    normalize = lambda x, g, b: group_norm(x, g, b, groups=groups, axis=axis)  # noqa: E731
    fast = _gradients(
        normalize, *(tf.constant(v, "float32") for v in (x, gamma, beta, upstream)), mode
    )
    with keras_ops_path():
        reference = _gradients(
            normalize, *(tf.constant(v) for v in (x, gamma, beta, upstream)), "eager"
        )
    for ours, theirs in zip(fast, reference):
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, atol=2e-5 * scale)


def _second_order(x, gamma, beta, upstream, direction, groups, axis):
    """Gradient of <dx, direction> with respect to x, γ and upstream."""
    with tf.GradientTape() as outer:
        outer.watch([x, gamma, upstream])
        with tf.GradientTape() as inner:
            inner.watch([x, gamma, beta])
            y = group_norm(x, gamma, beta, groups=groups, axis=axis)
        dx, dgamma, _ = inner.gradient(y, [x, gamma, beta], output_gradients=upstream)
        projection = tf.reduce_sum(dx * direction) + tf.reduce_sum(dgamma * direction[0, 0, 0])
    return outer.gradient(projection, [x, gamma, upstream])


@pytest.mark.parametrize("mode", MODES)
def test_second_order_gradients_match_keras_ops_autodiff(rng, keras_ops_path, mode):
    shape, axis, groups = (2, 4, 3, 6), -1, 3
    x, upstream, direction = (tf.constant(rng.normal(size=shape) + 2) for _ in range(3))
    gamma, beta = (tf.constant(v) for v in _affine(rng, 6, True))
    args = (x, gamma, beta, upstream, direction)
    fast = _run(mode, lambda *a: _second_order(*a, groups, axis), *args)
    with keras_ops_path():
        reference = _second_order(*args, groups, axis)
    for ours, theirs in zip(fast, reference):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-8, atol=1e-9)


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("mode", VALUE_MODES)
def test_mean_1e4_std_1_in_float32(rng, mode):
    """(x − shift) − δ centring keeps float32 accurate far beyond |μ|·eps."""
    x = (1e4 + rng.normal(size=(2, 6, 6, 16))).astype("float32")
    gamma, beta = _affine(rng, 16, True)
    expected = group_norm_reference(x, gamma, beta, groups=4)
    y = _run(
        mode,
        lambda x: group_norm(x, gamma.astype("float32"), beta.astype("float32"), groups=4),
        tf.constant(x),
    )
    # The keras.ops reference is limited to ~1e-3 here by rounding μ itself.
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("mode", VALUE_MODES)
def test_constant_input_gives_beta_exactly(rng, mode):
    x = np.full((2, 5, 7, 12), rng.uniform(-100, 100), dtype="float32")
    gamma, beta = (v.astype("float32") for v in _affine(rng, 12, True))
    y = _run(mode, lambda x: group_norm(x, gamma, beta, groups=4), tf.constant(x))
    np.testing.assert_array_equal(y.numpy(), np.broadcast_to(beta, x.shape))


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_graph_statistics_in_float32(rng, dtype):
    x = tf.constant(_input(rng, (2, 6, 5, 16)), dtype)
    gamma = tf.constant(rng.normal(1, 0.3, 16), "float32")
    beta = tf.constant(rng.normal(0, 0.3, 16), "float32")
    upstream = tf.constant(rng.normal(size=x.shape), dtype)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y = group_norm(x, gamma, beta, groups=4)
        return y, tape.gradient(y, [x, gamma, beta], output_gradients=upstream)

    y, (dx, dgamma, dbeta) = step(x)
    assert (y.dtype, dx.dtype, dgamma.dtype, dbeta.dtype) == (
        x.dtype,
        x.dtype,
        tf.float32,
        tf.float32,
    )
    representable = tf.cast(x, tf.float64).numpy()
    expected = group_norm_reference(representable, gamma.numpy(), beta.numpy(), groups=4)
    tolerance = 3e-2 if dtype == "bfloat16" else 3e-3
    np.testing.assert_allclose(tf.cast(y, tf.float64).numpy(), expected, atol=tolerance)
    np.testing.assert_allclose(
        dbeta.numpy(),
        tf.reduce_sum(tf.cast(upstream, tf.float32), [0, 1, 2]).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def _small_model(policy="float32"):
    keras.utils.set_random_seed(7)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", dtype=policy)(inputs)
    h = GroupNormalization(groups=4, dtype=policy)(h)
    h = keras.layers.Activation("relu", dtype=policy)(h)
    outputs = keras.layers.Dense(5, dtype=policy)(
        keras.layers.GlobalAveragePooling2D(dtype=policy)(h)
    )
    return keras.Model(inputs, outputs)


def _fit(x, labels, jit_compile, policy="float32"):
    model = _small_model(policy)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        jit_compile=jit_compile,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, labels, batch_size=4, epochs=2, shuffle=False, verbose=0)
    return history.history["loss"], model.get_weights()


@pytest.mark.usefixtures("kernels_setting")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_matches_keras_ops_path(rng, keras_ops_path, jit_compile):
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 5, size=8)
    loss, weights = _fit(x, labels, jit_compile)
    with keras_ops_path():
        reference_loss, reference_weights = _fit(x, labels, jit_compile=False)
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-5)
    for ours, theirs in zip(weights, reference_weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("kernels_setting")
def test_mixed_bfloat16_fit_keeps_float32_gamma(rng):
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    loss, weights = _fit(x, rng.integers(0, 5, size=8), jit_compile=False, policy="mixed_bfloat16")
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0] * 1.5
    assert weights[2].dtype == np.float32 and np.all(np.isfinite(weights[2]))


def _non_standard_parts(saved_model_pb):
    """XLA-only ops, XLA-marked ops, XLA-compiled functions and gn_keras's
    compiled-kernel ops in a SavedModel."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(saved_model_pb.read_bytes())
    found = []
    for graph in (meta.graph_def for meta in saved.meta_graphs):
        nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        found += [
            n.op
            for n in nodes
            if n.op.startswith(("Xla", "_Xla", "GnKeras")) or "_XlaCompile" in n.attr
        ]
        found += [f.signature.name for f in graph.library.function if "_XlaMustCompile" in f.attr]
    return found


@pytest.mark.usefixtures("kernels_setting")
def test_exports_reload_and_convert_with_standard_ops(rng, tmp_path):
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    model = _small_model()
    model.compile()
    x = rng.normal(size=(3, 8, 8, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.serve(x[:2]).numpy(), expected[:2], rtol=1e-5, atol=1e-5)
    assert _non_standard_parts(tmp_path / "saved" / "saved_model.pb") == []

    model.export(str(tmp_path / "model.onnx"), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    onnx_y = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(onnx_y, expected, rtol=1e-4, atol=1e-5)

    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    interpreter = Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner()
    (lite_y,) = runner(**{next(iter(runner.get_input_details())): x}).values()
    np.testing.assert_allclose(lite_y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("kernels_setting")
def test_mirrored_strategy_fit_matches_one_device(rng, tmp_path):
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 5, size=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "labels.npy", labels)
    output = tmp_path / "weights.npz"
    run_python(
        f"""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        two_cpus = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two_cpus)
        import test_fast_path as t
        x, labels = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "labels.npy")!r})
        with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
            loss, weights = t._fit(x, labels, jit_compile=False)
        np.savez({str(output)!r}, *weights)
    """,
        cwd=str(tmp_path),
        env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))},
    )
    _, single = _fit(x, labels, jit_compile=False)
    mirrored = np.load(output)
    for i, weights in enumerate(single):
        np.testing.assert_allclose(mirrored[f"arr_{i}"], weights, rtol=1e-4, atol=1e-5)
