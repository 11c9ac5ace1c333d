"""The private TensorFlow/Keras details of gn_keras/_internals.py.

The canary tests fail when a TensorFlow or Keras upgrade moves one of them
(a version bump is caught here, not by users); each checks the internal
still answers what the fast path asks it, not only that it imports.  The
fallback tests hide one and check that ``import gn_keras`` still works, that
the layer warns once and runs standard TensorFlow ops, and that its values
and gradients stay right.
"""

import importlib.util
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from gn_reference import group_norm_reference
from subprocess_utils import run_python

from gn_keras import GroupNormalization, _internals, group_norm, portable, tf_fast


@pytest.fixture(autouse=True)
def _fresh_resolution():
    """Every test resolves the internals itself, and leaves them resolved anew."""
    _internals.reset()
    yield
    _internals.reset()


def test_canary_every_internal_resolves():
    _internals.load()  # raises MissingInternal naming the moved internal
    for module in _internals.KERAS_LOOP_MODULES + _internals.EXPORTER_MODULES:
        assert importlib.util.find_spec(module) is not None, module
    # The converters are optional for users, but the test extras install them.
    for module in _internals.OPTIONAL_EXPORTER_MODULES:
        assert importlib.util.find_spec(module) is not None, module


def test_canary_tape_query():
    assert not _internals.tape_could_record()
    with tf.GradientTape():
        assert _internals.tape_could_record()
    seen = []
    tf.function(lambda: seen.append(_internals.tape_could_record()) or 0)()
    assert seen == [False]


def test_canary_xla_query():
    seen = []

    def probe():
        seen.append(_internals.graph_in_xla_context())
        return tf.constant(0)

    tf.function(probe)()
    tf.function(probe, jit_compile=True)()
    assert seen == [False, True]


def test_canary_save_context_query(tmp_path):
    seen = []
    module = tf.Module()
    module.f = tf.function(
        lambda: seen.append(_internals.in_save_context()) or tf.constant(0), input_signature=[]
    )
    assert not _internals.in_save_context()
    tf.saved_model.save(module, str(tmp_path / "saved"))
    assert seen and all(seen)


def test_canary_keras_loops_and_exporters_are_seen_on_the_stack(tmp_path):
    """Keras's predict and model.export trace from the modules we look for."""
    seen = {"loop": [], "export": []}

    def probe(x):
        if not tf.executing_eagerly():
            seen["loop"].append(portable.keras_loop_on_stack())
            seen["export"].append(portable.required())
        return x

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(probe)(inputs))
    assert seen == {"loop": [False], "export": [False]}  # the functional build
    model.predict(np.zeros((2, 3), "float32"), verbose=0)
    assert seen["loop"][1:] and all(seen["loop"][1:])
    assert not any(seen["export"][1:])
    seen = {"loop": [], "export": []}
    model.export(str(tmp_path / "exported"), format="tf_saved_model", verbose=False)
    assert seen["export"] and all(seen["export"])


def _hide(monkeypatch, name="could_possibly_record"):
    """Pretend a TensorFlow upgrade removed one internal."""
    module, _ = _internals.TF_FUNCTIONS[name]
    monkeypatch.setitem(_internals.TF_FUNCTIONS, name, (module, "moved_away_in_tf_9"))


def test_a_missing_internal_is_named(monkeypatch):
    _hide(monkeypatch, "in_save_context")
    with pytest.raises(_internals.MissingInternal, match="save_context.moved_away_in_tf_9"):
        _internals.load()


@pytest.mark.usefixtures("kernels_setting")
def test_missing_internal_falls_back_once_with_right_numbers(rng, monkeypatch):
    _hide(monkeypatch)
    chosen = []
    choose = tf_fast._choose_kernels
    spy = lambda *a: chosen.append(choose(*a)) or chosen[-1]  # noqa: E731
    monkeypatch.setattr(tf_fast, "_choose_kernels", spy)
    x = rng.normal(size=(2, 5, 6, 8)) * 2 + 1
    gamma, beta = rng.normal(1, 0.5, 8), rng.normal(0, 0.5, 8)
    upstream = rng.normal(size=x.shape)
    layer = GroupNormalization(groups=4)
    layer.build(x.shape)
    layer.set_weights([gamma.astype("float32"), beta.astype("float32")])

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        sources = [x, *layer.trainable_variables]
        return y, tape.gradient(y, sources, output_gradients=tf.cast(upstream, tf.float32))

    x32 = tf.constant(x, tf.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [step(x32), tf.function(step)(x32), step(x32)]
    ours = [w for w in caught if "gn_keras" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning), caught
    assert "moved_away_in_tf_9" in str(ours[0].message)
    assert chosen and all(implementation is tf_fast.PORTABLE for implementation in chosen)

    expected = group_norm_reference(x.astype("float32"), gamma, beta, groups=4)
    reference_grads = _float64_gradients(x, gamma, beta, upstream)
    for y, grads in results:
        np.testing.assert_allclose(y.numpy(), expected, atol=2e-5)
        for ours, theirs in zip(grads, reference_grads):
            np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4 * np.abs(theirs).max())


def _float64_gradients(x, gamma, beta, upstream):
    """dx, dγ, dβ by autodiff of the keras.ops implementation in float64."""
    x, gamma, beta = (tf.constant(v) for v in (x, gamma, beta))
    original = tf_fast.supports
    tf_fast.supports = lambda x: False
    try:
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y = group_norm(x, gamma, beta, groups=4)
        return [g.numpy() for g in tape.gradient(y, [x, gamma, beta], upstream)]
    finally:
        tf_fast.supports = original


def test_import_survives_a_removed_tensorflow_module(rng, tmp_path):
    """A module that is gone (not only an attribute): import, one warning, numbers."""
    x = (rng.normal(size=(3, 4, 4, 8)) * 3 - 1).astype("float32")
    np.save(tmp_path / "x.npy", x)
    run_python(f"""
        import sys, warnings
        import numpy as np, tensorflow as tf
        sys.modules["tensorflow.python.saved_model.save_context"] = None  # import fails
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import gn_keras
            assert not caught, caught  # nothing is resolved at import
            layer = gn_keras.GroupNormalization(groups=2, center=False, scale=False)
            x = np.load({str(tmp_path / "x.npy")!r})
            ys = [layer(x), tf.function(layer)(x), layer(x)]
        ours = [w for w in caught if "gn_keras" in str(w.message)]
        assert len(ours) == 1 and "save_context" in str(ours[0].message), caught
        np.save({str(tmp_path / "y.npy")!r}, np.stack([y.numpy() for y in ys]))
    """)
    expected = group_norm_reference(x, groups=2)
    for y in np.load(tmp_path / "y.npy"):
        np.testing.assert_allclose(y, expected, atol=2e-5)
