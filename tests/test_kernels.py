"""The optional compiled kernels (gn_keras/kernels) and when they are used.

Values are checked against the float64 NumPy reference of the paper's
equations, gradients against float64 autodiff of the keras.ops
implementation (the same ``group_norm`` with the fast path switched off).
The shapes span several of the kernel's row blocks, with an uneven last
block, which the small shapes of test_fast_path.py do not.  The rest checks
the build cache, the fallback, and that graphs that leave the process
(SavedModels, converters, ``portable_ops``) never hold the kernels' ops.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from fast_path_helpers import keras_ops_path, offset_normal, record_choices
from gn_reference import group_norm_reference
from subprocess_utils import run_python

import gn_keras
from gn_keras import group_norm, kernels

# (shape, groups): rows per block = 16384 // C, so these have 5, 6 and 2
# blocks per sample, the last one short.
BLOCK_CASES = [((2, 37, 29, 64), 8), ((1, 9, 5, 2048), 32), ((3, 20, 1024), 32)]


_input = offset_normal


@pytest.fixture
def chosen(monkeypatch):
    """Names of the implementations ``group_norm`` picks, call by call."""
    return record_choices(monkeypatch)


def _op_types(concrete_function):
    graph = concrete_function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return {n.op for n in nodes}


def test_required_kernels_are_built_and_cached(monkeypatch):
    assert kernels.mode() == "require"  # tests/conftest.py
    path = kernels.build()
    assert os.path.isfile(path) and kernels.load() is not None

    def no_compiler(command):
        raise AssertionError("a cached build must not compile again")

    monkeypatch.setattr(kernels, "_run_compiler", no_compiler)
    assert kernels.build() == path


def test_invalid_setting_names_the_variable_and_value(monkeypatch):
    monkeypatch.setenv("GN_KERAS_KERNELS", "fastest")
    with pytest.raises(ValueError, match=r"GN_KERAS_KERNELS='fastest'.*auto, off, require"):
        kernels.load()


def test_without_a_compiler_auto_falls_back_and_require_fails(rng, tmp_path):
    x = _input(rng, (2, 4, 4, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    code = f"""
        import warnings, numpy as np, gn_keras
        x = np.load({str(tmp_path / "x.npy")!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = gn_keras.group_norm(x, groups=4)
        print([str(w.message) for w in caught if "compiled kernels" in str(w.message)])
        np.save({str(tmp_path / "y.npy")!r}, np.asarray(y))
    """
    env = {"CXX": str(tmp_path / "no-such-compiler"), "GN_KERAS_CACHE_DIR": str(tmp_path / "cache")}
    printed = run_python(code, env={**env, "GN_KERAS_KERNELS": "auto"})
    assert "no working C++ compiler" in printed
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), group_norm_reference(x, groups=4), atol=2e-5
    )
    with pytest.raises(AssertionError, match="KernelBuildError: GN_KERAS_KERNELS=require"):
        run_python(code, env={**env, "GN_KERAS_KERNELS": "require"})


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("shape,groups", BLOCK_CASES + [((2, 3, 4100, 8), 2)])
@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_values_and_gradients_across_blocks(rng, chosen, shape, groups, axis, activation):
    """Both layouts' kernels (channels last, and first: rows longer than a
    segment in the last case) against float64 autodiff of keras.ops."""
    if axis == 1:  # the same values, channel axis moved first
        shape = (shape[0], shape[-1], *shape[1:-1])
    x, upstream = _input(rng, shape), rng.normal(size=shape)
    gamma, beta = rng.normal(1.0, 0.5, shape[axis]), rng.normal(0.0, 0.5, shape[axis])

    def forward_backward(x, gamma, beta, upstream, fused):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y = group_norm(x, gamma, beta, groups=groups, axis=axis,
                           activation=activation if fused else None)  # fmt: skip
            if not fused:
                y = {"relu": tf.nn.relu, "silu": lambda y: y * tf.sigmoid(y)}.get(
                    activation, tf.identity
                )(y)
        return [y, *tape.gradient(y, [x, gamma, beta], output_gradients=upstream)]

    ours = tf.function(forward_backward)(
        *(tf.constant(v, "float32") for v in (x, gamma, beta, upstream)), True
    )
    assert chosen == ["fused"]
    with keras_ops_path():
        reference = forward_backward(*(tf.constant(v) for v in (x, gamma, beta, upstream)), False)
    if activation is None:
        reference[0] = group_norm_reference(x, gamma, beta, groups, axis=axis)
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got.numpy(), np.asarray(want), atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape,groups", [BLOCK_CASES[0], ((64, 7, 7, 32), 8)])
def test_fused_relu_values_and_gradients(rng, chosen, shape, groups):
    """activation="relu": max(GN(x), 0), and dy gated where that is positive.

    The reference is the float64 keras.ops path followed by a separate ReLU;
    the values against the NumPy reference of the paper's equations.
    """
    x, upstream = _input(rng, shape), rng.normal(size=shape)
    gamma, beta = rng.normal(1.0, 0.5, shape[-1]), rng.normal(0.0, 0.5, shape[-1])

    def forward_backward(x, gamma, beta, upstream, fused):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            if fused:
                y = group_norm(x, gamma, beta, groups=groups, activation="relu")
            else:
                y = tf.nn.relu(group_norm(x, gamma, beta, groups=groups))
        return [y, *tape.gradient(y, [x, gamma, beta], output_gradients=upstream)]

    ours = tf.function(forward_backward)(
        *(tf.constant(v, "float32") for v in (x, gamma, beta, upstream)), True
    )
    assert chosen == ["fused"]
    with keras_ops_path():
        reference = forward_backward(*(tf.constant(v) for v in (x, gamma, beta, upstream)), False)
    reference[0] = np.maximum(group_norm_reference(x, gamma, beta, groups), 0.0)
    assert 0.2 < np.mean(reference[0] > 0) < 0.8  # the gate is exercised both ways
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got.numpy(), np.asarray(want), atol=2e-5 * np.abs(want).max())


def test_fused_relu_in_every_implementation_and_layer(rng, chosen):
    """The ReLU is applied by whichever implementation runs: fused, XLA, portable."""
    x = _input(rng, (2, 5, 5, 8)).astype("float32")
    expected = np.maximum(group_norm_reference(x, groups=4), 0.0)
    layer = gn_keras.GroupNormalization(groups=4, activation="relu")
    eager = layer(x)
    xla = tf.function(lambda x: _under_tape(layer, x), jit_compile=True)(tf.constant(x))
    with gn_keras.portable_ops():
        portable = tf.function(lambda x: layer(x))(tf.constant(x))
    assert chosen == ["fused", "xla", "portable"]
    for got in (eager, xla, portable):
        np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)
    with pytest.raises(ValueError, match=r"activation='gelu'"):
        gn_keras.GroupNormalization(activation="gelu")


@pytest.mark.parametrize("dtype,tolerance", [("bfloat16", 3e-2), ("float16", 3e-3)])
def test_16_bit_inputs_round_once_from_float32(rng, chosen, dtype, tolerance):
    shape, groups = BLOCK_CASES[0]
    x = tf.constant(_input(rng, shape), dtype)
    gamma, beta = (
        tf.constant(v, "float32") for v in (rng.normal(1, 0.3, 64), rng.normal(0, 0.3, 64))
    )
    y = group_norm(x, gamma, beta, groups=groups)
    assert chosen == ["fused"] and y.dtype == x.dtype
    expected = group_norm_reference(
        tf.cast(x, tf.float64).numpy(), gamma.numpy(), beta.numpy(), groups
    )
    np.testing.assert_allclose(tf.cast(y, tf.float64).numpy(), expected, atol=tolerance)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nan_stays_in_its_group(rng, dtype):
    x = _input(rng, (2, 6, 6, 16))
    x[1, 2, 3, 5] = np.nan  # sample 1, group 1 of 4
    y = tf.cast(group_norm(tf.constant(x, dtype), groups=4), tf.float32).numpy()
    poisoned = np.zeros(y.shape, bool)
    poisoned[1, :, :, 4:8] = True
    assert np.isnan(y[poisoned]).all() and np.isfinite(y[~poisoned]).all()


def test_results_are_bitwise_repeatable(rng):
    x = tf.constant(_input(rng, BLOCK_CASES[1][0]), "float32")
    first, second = (group_norm(x, groups=32).numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_empty_batch(chosen):
    x = tf.zeros([0, 4, 4, 8])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = group_norm(x, groups=4)
    assert y.shape == x.shape and tape.gradient(y, x).shape == x.shape and chosen == ["fused"]


def test_training_graphs_keras_loops_and_eager_use_the_kernels(rng, chosen):
    spec = tf.TensorSpec([None, 5, 5, 8])

    @tf.function
    def training(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = group_norm(x, groups=4)
        return tape.gradient(y, x)

    assert {"GnKerasGroupNorm", "GnKerasGroupNormGrad"} <= _op_types(
        training.get_concrete_function(spec)
    )
    group_norm(tf.ones([1, 2, 2, 8]), groups=4)  # eager
    import keras

    inputs = keras.Input((5, 5, 8))
    model = keras.Model(inputs, gn_keras.GroupNormalization(groups=4)(inputs))
    del chosen[:]  # building the model traces a symbolic call
    x = _input(rng, (3, 5, 5, 8)).astype("float32")
    np.testing.assert_allclose(
        model.predict(x, verbose=0), group_norm_reference(x, groups=4), atol=2e-5
    )
    assert chosen == ["fused"]


def test_user_inference_functions_hold_standard_ops_even_when_reused(rng, chosen):
    """TF reuses a trace: a serving function called once may be exported or
    compiled by XLA later, so it never holds the kernels."""
    serve = tf.function(
        lambda x: group_norm(x, groups=4), input_signature=[tf.TensorSpec([None, 5, 5, 8])]
    )
    x = tf.constant(_input(rng, (2, 5, 5, 8)), tf.float32)
    serve(x)
    with gn_keras.portable_ops():
        assert not any(op.startswith("GnKeras") for op in _op_types(serve.get_concrete_function()))
    doubled = tf.function(lambda x: serve(x) * 2, jit_compile=True)
    np.testing.assert_allclose(
        doubled(x).numpy(), 2 * group_norm_reference(x.numpy(), groups=4), atol=4e-5
    )
    assert set(chosen) == {"plain"}


def test_other_inputs_and_portable_graphs_use_tensorflow_ops(chosen):
    normalize = tf.function(
        lambda x, axis: _under_tape(lambda x: group_norm(x, groups=4, axis=axis), x)
    )
    cases = [
        (tf.TensorSpec([None, 5, 8, 5]), 2),  # channels neither first nor last
        (tf.TensorSpec([None, 5, 5, 8], tf.float64), -1),  # float64
    ]
    for spec, axis in cases:
        assert not any(
            op.startswith("GnKeras")
            for op in _op_types(normalize.get_concrete_function(spec, axis))
        )
    with gn_keras.portable_ops():
        portable = tf.function(lambda x: _under_tape(lambda x: group_norm(x, groups=4), x))
        concrete = portable.get_concrete_function(tf.TensorSpec([None, 5, 5, 8]))
    assert not any(op.startswith("GnKeras") for op in _op_types(concrete))

    whole_xla = tf.function(
        lambda x: _under_tape(lambda x: group_norm(x, groups=4), x), jit_compile=True
    )
    x = tf.random.normal([2, 5, 5, 8])
    np.testing.assert_allclose(
        whole_xla(x).numpy(), group_norm_reference(x.numpy(), groups=4), atol=2e-5
    )
    assert chosen == ["xla", "xla", "portable", "xla"]


def _under_tape(function, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        return function(x)


def test_saved_model_traced_in_save_context_holds_standard_ops(rng, tmp_path):
    module = tf.Module()
    module.layer = gn_keras.GroupNormalization(groups=4)
    module.layer.build((None, 5, 5, 8))
    module.serve = tf.function(
        lambda x: module.layer(x), input_signature=[tf.TensorSpec([None, 5, 5, 8])]
    )
    tf.saved_model.save(module, str(tmp_path))
    with open(tmp_path / "saved_model.pb", "rb") as saved:
        assert b"GnKeras" not in saved.read()
    x = _input(rng, (2, 5, 5, 8)).astype("float32")
    reloaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(
        reloaded.serve(x).numpy(), group_norm_reference(x, groups=4), atol=2e-5
    )


def test_unknown_spatial_sizes_and_second_order(rng, chosen):
    """Any spatial size through one trace; second order through the recomputed forward."""
    spec = tf.TensorSpec([None, None, None, 16])
    gamma, beta = (
        tf.constant(v, "float32") for v in (rng.normal(1, 0.5, 16), rng.normal(0, 0.5, 16))
    )

    @tf.function(input_signature=[spec, spec, spec])
    def second_order(x, upstream, direction):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = group_norm(x, gamma, beta, groups=4)
            dx = inner.gradient(y, x, output_gradients=upstream)
            projection = tf.reduce_sum(dx * direction)
        return y, outer.gradient(projection, x)

    for shape in [(2, 3, 5, 16), (1, 7, 2, 16)]:
        x, upstream, direction = (_input(rng, shape) for _ in range(3))
        y, ddx = second_order(*(tf.constant(v, "float32") for v in (x, upstream, direction)))
        np.testing.assert_allclose(
            y.numpy(), group_norm_reference(x, gamma.numpy(), beta.numpy(), 4), atol=2e-5
        )
        with keras_ops_path():
            _, want = second_order.python_function(
                *(tf.constant(v) for v in (x, upstream, direction))
            )
        np.testing.assert_allclose(
            ddx.numpy(), want.numpy(), atol=1e-4 * np.abs(want.numpy()).max()
        )
    assert chosen[0] == "fused"


def test_converters_given_a_keras_model_trace_standard_ops(rng):
    """tf2onnx and LiteRT trace the model themselves: they must get standard ops."""
    import keras
    import onnxruntime
    import tf2onnx
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((6, 6, 8))
    model = keras.Model(
        inputs, gn_keras.GroupNormalization(groups=4)(keras.layers.Conv2D(8, 3)(inputs))
    )
    x = rng.normal(size=(2, 6, 6, 8)).astype("float32")
    expected = model.predict(x, verbose=0)
    spec = (tf.TensorSpec([None, 6, 6, 8], tf.float32, name="x"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec)
    assert not any(node.op_type.startswith("GnKeras") for node in onnx_model.graph.node)
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString())
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, atol=1e-4)

    interpreter = Interpreter(
        model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert()
    )
    runner = interpreter.get_signature_runner()
    (lite_y,) = runner(**{next(iter(runner.get_input_details())): x}).values()
    np.testing.assert_allclose(lite_y, expected, atol=1e-4)


def test_build_key_covers_every_source_file():
    folder = os.path.dirname(kernels.SOURCE)
    on_disk = {name for name in os.listdir(folder) if name.endswith((".cc", ".h"))}
    assert {os.path.basename(path) for path in kernels.SOURCES} == on_disk


def test_16_bit_output_is_the_rounded_float32_result(rng):
    """Same float32 arithmetic, then round to nearest even, as tf.cast does."""
    x = tf.cast(tf.constant(_input(rng, BLOCK_CASES[0][0])), tf.bfloat16)
    for dtype in (tf.bfloat16, tf.float16):
        narrow = tf.cast(x, dtype)
        wide = group_norm(tf.cast(narrow, tf.float32), groups=8)
        np.testing.assert_array_equal(
            group_norm(narrow, groups=8).numpy(), tf.cast(wide, dtype).numpy()
        )


def test_thread_schedules_agree_bitwise(rng):
    """A batch of 2 (threads take whole samples, on 2 cores) against each
    sample alone (every pass shared by the threads)."""
    x = tf.constant(_input(rng, (2, 37, 29, 64)), tf.float32)
    upstream = tf.constant(rng.normal(size=x.shape), tf.float32)

    def values_and_dx(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = group_norm(x, groups=8)
        return y.numpy(), tape.gradient(y, x, output_gradients=upstream).numpy()

    together = values_and_dx(x, upstream)
    alone = [values_and_dx(x[i : i + 1], upstream[i : i + 1]) for i in range(2)]
    for index in range(2):
        np.testing.assert_array_equal(together[index], np.concatenate([a[index] for a in alone]))


def test_few_channels_and_a_far_shift_stay_accurate(rng):
    """One channel, a million positions, the group's first element 1000σ off:
    float32 block sums must stay short (at most 256 terms)."""
    x = rng.normal(size=(1, 1_000_000, 1))
    x[0, 0, 0] = 1e3
    expected = group_norm_reference(x, groups=1)
    y = group_norm(tf.constant(x, tf.float32), groups=1).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-6 * np.abs(expected).max())
