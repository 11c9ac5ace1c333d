"""GroupNormalization across processes, backends, devices and file formats."""

import importlib.util

import keras
import numpy as np
import pytest
from gn_reference import group_norm_reference
from subprocess_utils import run_python

from gn_keras import GroupNormalization


def _small_model():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = GroupNormalization(groups=4, name="gn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


def _randomize(model, rng):
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])


def test_keras_file_loads_in_fresh_process_with_safe_mode(rng, tmp_path):
    model = _small_model()
    _randomize(model, rng)
    x = rng.normal(size=(3, 7, 9, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    model.save(tmp_path / "model.keras")
    run_python(f"""
        import numpy as np, keras
        import gn_keras  # registers the layer; no custom_objects below
        model = keras.saving.load_model({str(tmp_path / "model.keras")!r}, safe_mode=True)
        assert type(model.get_layer("gn")).__name__ == "GroupNormalization"
        np.save({str(tmp_path / "y.npy")!r}, model(np.load({str(tmp_path / "x.npy")!r})).numpy())
    """)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_saved_model_export_keeps_dynamic_batch(rng, tmp_path):
    model = _small_model()
    _randomize(model, rng)
    traced = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    model(traced)
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    other = rng.normal(size=(5, 6, 6, 3)).astype("float32")
    np.save(tmp_path / "x.npy", other)
    run_python(f"""
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(tmp_path / "sm")!r})
        spec = loaded.signatures["serving_default"].structured_input_signature[1]
        assert list(spec.values())[0].shape[0] is None, spec
        served = loaded.serve(np.load({str(tmp_path / "x.npy")!r}))
        np.save({str(tmp_path / "y.npy")!r}, served.numpy())
    """)
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), model(other).numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("backend,module", [("jax", "jax"), ("torch", "torch")])
def test_other_keras_backends_match_reference(rng, tmp_path, backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(
            f"Keras backend {backend!r} needs the {module!r} package, which is not installed"
        )
    x = rng.normal(size=(2, 5, 7, 12)) * 2 + 1
    gamma, beta = rng.normal(size=12), rng.normal(size=12)
    # 4 channels per group: the one-step sample still has 4 valid values per
    # group. With 2, their spread could shrink towards 0 (p≈7e-4 per run that
    # |a − b| came within ~1e-2), and float32 on JAX then exceeds 1e-5.
    seq = rng.normal(size=(3, 6, 8))
    mask = np.arange(6)[None] < np.array([[6], [3], [1]])
    # One group of 16.8 M values, far from zero-mean: its statistics must not
    # drift with the group's size (tests/test_large_groups.py for TensorFlow).
    big = (rng.uniform(size=(1, 1024, 2048, 8)) + rng.uniform(50, 100)).astype("float32")
    arrays = dict(x=x, gamma=gamma, beta=beta, seq=seq, mask=mask, big=big)
    for name, value in arrays.items():
        np.save(tmp_path / f"{name}.npy", value)
    out = run_python(
        f"""
        import numpy as np, keras
        from gn_keras import GroupNormalization, group_norm
        assert keras.backend.backend() == {backend!r}
        load = lambda name: np.load({str(tmp_path)!r} + "/" + name + ".npy")
        layer = GroupNormalization(groups=3)
        layer.build((None, 5, 7, 12))
        layer.set_weights([load("gamma").astype("float32"), load("beta").astype("float32")])
        y = keras.ops.convert_to_numpy(layer(load("x").astype("float32")))
        np.save({str(tmp_path / "y.npy")!r}, y)
        masked = group_norm(load("seq"), groups=2, mask=load("mask"))
        np.save({str(tmp_path / "ym.npy")!r}, keras.ops.convert_to_numpy(masked))
        silu = GroupNormalization(groups=3, activation="swish")
        silu.build((None, 5, 7, 12))
        silu.set_weights(layer.get_weights())
        y = keras.ops.convert_to_numpy(silu(load("x").astype("float32")))
        np.save({str(tmp_path / "ys.npy")!r}, y)
        big = load("big")
        for axis, values in ((-1, big), (1, np.moveaxis(big, -1, 1).copy())):
            y = keras.ops.convert_to_numpy(group_norm(values, groups=1, axis=axis))
            np.save({str(tmp_path)!r} + f"/big{{axis}}.npy", np.moveaxis(y, axis, -1))
        print("backend", keras.backend.backend())
    """,
        env={"KERAS_BACKEND": backend},
    )
    assert f"backend {backend}" in out
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), group_norm_reference(x, gamma, beta, 3), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "ym.npy"),
        group_norm_reference(seq, groups=2, mask=mask),
        rtol=1e-5,
        atol=1e-5,
    )
    normalized = group_norm_reference(x, gamma, beta, 3)
    silu = normalized / (1 + np.exp(-normalized))
    np.testing.assert_allclose(np.load(tmp_path / "ys.npy"), silu, rtol=1e-5, atol=1e-5)
    expected = group_norm_reference(big, groups=1)
    for axis in (-1, 1):
        error = np.abs(np.load(tmp_path / f"big{axis}.npy") - expected).max()
        assert error < 1e-6, f"{backend}, axis={axis}: max error {error:.3g} on one large group"


def test_mirrored_strategy_matches_one_device(rng, tmp_path):
    x = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    run_python(f"""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        two_cpus = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two_cpus)
        from gn_keras import GroupNormalization
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((6, 6, 3))
            h = GroupNormalization(groups=4)(keras.layers.Conv2D(8, 3, padding="same")(inputs))
            model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
        x = np.load({str(tmp_path / "x.npy")!r})
        batches = tf.data.Dataset.from_tensor_slices(x).batch(4)
        dataset = strategy.experimental_distribute_dataset(batches)

        @tf.function
        def replica_step(batch):
            with tf.GradientTape() as tape:
                y = model(batch)
                loss = tf.reduce_sum(y * y)
            return y, tape.gradient(loss, model.trainable_variables)

        y, grads = strategy.run(replica_step, args=(next(iter(dataset)),))
        assert len(strategy.experimental_local_results(y)) == 2
        local = strategy.experimental_local_results(y)
        np.save({str(tmp_path / "y_mirrored.npy")!r}, np.concatenate([t.numpy() for t in local]))
        summed = [strategy.reduce("SUM", g, axis=None).numpy() for g in grads]
        np.save({str(tmp_path / "y_single.npy")!r}, model(x).numpy())
        with tf.GradientTape() as tape:
            single = model(x)
            loss = tf.reduce_sum(single * single)
        single_grads = tape.gradient(loss, model.trainable_variables)
        for a, b in zip(summed, single_grads):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)
    """)
    np.testing.assert_allclose(
        np.load(tmp_path / "y_mirrored.npy"),
        np.load(tmp_path / "y_single.npy"),
        rtol=1e-6,
        atol=1e-6,
    )
