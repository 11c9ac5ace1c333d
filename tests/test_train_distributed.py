"""MirroredStrategy over 2 logical CPUs: the loop's step matches one device.

Logical devices must be configured before TensorFlow starts, so each test
runs in a fresh interpreter (``tests/subprocess_utils.py``) and writes its
numbers to ``.npz`` files that are checked here against NumPy float64.
"""

import os

import numpy as np
from subprocess_utils import run_python
from test_train_optimizer import softmax_cross_entropy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"PYTHONPATH": REPO}

TWO_CPUS = """
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def test_mirrored_gn_step_equals_one_device_step_with_the_same_global_batch(rng, tmp_path):
    seed, out = int(rng.integers(1 << 30)), str(tmp_path / "steps.npz")
    run_python(
        TWO_CPUS
        + f"""
from gn_keras import GroupNormalization
from gn_keras.train import config as config_lib, data, optimizer as optimizer_lib, steps
from gn_keras.train.classification import ClassificationTask

def build():
    keras.utils.set_random_seed({seed})
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = GroupNormalization(groups=4, name="gn")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))

saved = {{}}
for name, strategy, per_replica in (
        ("one", tf.distribute.OneDeviceStrategy("/cpu:0"), 8),
        ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 4)):
    config = config_lib.make_config(image_size=8, batch_size_per_replica=per_replica,
                                    seed={seed % 1000}, base_lr=0.2, lr_reference_batch=8,
                                    weight_decay=1e-3, lr_schedule="constant", warmup_epochs=0)
    pipeline = data.InputPipeline(data.make_source(config), config)
    with strategy.scope():
        model = build()
        optimizer = optimizer_lib.make_optimizer(config, optimizer_lib.make_schedule(config, 8, 10))
        optimizer.build(model.trainable_variables)
    runner = steps.StepRunner(strategy, model, optimizer, task=ClassificationTask(num_classes=10),
                              global_batch_size=8,
                              weight_decay=1e-3, decayed_variables=model.trainable_variables)
    if name == "one":
        images, labels = next(iter(pipeline.train_dataset_fn(0)(tf.distribute.InputContext())))
        saved["images"], saved["labels"] = images.numpy(), labels.numpy()
        saved["logits"] = model(images, training=True).numpy()
        saved["initial"] = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    iterator = iter(strategy.distribute_datasets_from_function(pipeline.train_dataset_fn(0)))
    saved[name + "_replicas"] = strategy.num_replicas_in_sync
    saved[name + "_loss"] = float(runner.train_step(iterator))
    saved[name + "_top1"] = 1.0 - float(runner.train_metrics["top1_error"].result())
    saved[name + "_weights"] = np.concatenate(
        [v.numpy().ravel() for v in model.trainable_variables])
np.savez({out!r}, **saved)
""",
        env=ENV,
    )
    saved = np.load(out)
    assert (saved["one_replicas"], saved["mirrored_replicas"]) == (1, 2)
    initial = saved["initial"].astype(np.float64)
    expected = softmax_cross_entropy(saved["logits"], saved["labels"]) + 0.5e-3 * np.sum(initial**2)
    np.testing.assert_allclose(saved["one_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(saved["mirrored_loss"], expected, rtol=1e-5)
    accuracy = np.mean(saved["logits"].argmax(1) == saved["labels"])
    np.testing.assert_allclose([saved["one_top1"], saved["mirrored_top1"]], accuracy)
    # Same global gradient → same update on every replica and on one device.
    assert np.abs(saved["one_weights"] - initial).max() > 1e-3
    np.testing.assert_allclose(
        saved["mirrored_weights"], saved["one_weights"], rtol=1e-5, atol=1e-6
    )


def test_bn_statistics_are_per_replica_unless_synchronized(rng, tmp_path):
    # The two replicas get batches from very different distributions.
    x = np.concatenate(
        [rng.normal(-3.0, 0.5, size=(4, 5, 5, 3)), rng.normal(4.0, 2.0, size=(4, 5, 5, 3))]
    ).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = str(tmp_path / "bn.npz")
    run_python(
        TWO_CPUS
        + f"""
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x = np.load({str(tmp_path / "x.npy")!r})
saved = {{}}
for name, synchronized in (("bn", False), ("sync_bn", True)):
    with strategy.scope():
        inputs = keras.Input((5, 5, 3))
        norm = keras.layers.BatchNormalization(epsilon=1e-5, synchronized=synchronized)
        model = keras.Model(inputs, norm(inputs))
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x).batch(8))

    @tf.function
    def forward(batch):
        return strategy.run(lambda images: model(images, training=True), args=(batch,))

    outputs = strategy.experimental_local_results(forward(next(iter(batches))))
    saved[name] = np.concatenate([o.numpy() for o in outputs])
np.savez({out!r}, **saved)
""",
        env=ENV,
    )
    saved = np.load(out)

    def normalize(block):
        block = block.astype(np.float64)
        mean, var = block.mean((0, 1, 2)), block.var((0, 1, 2))
        return (block - mean) / np.sqrt(var + 1e-5)

    per_replica = np.concatenate([normalize(x[:4]), normalize(x[4:])])
    global_batch = normalize(x)
    np.testing.assert_allclose(saved["bn"], per_replica, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(saved["sync_bn"], global_batch, rtol=1e-4, atol=1e-4)
    assert np.abs(per_replica - global_batch).max() > 0.5
