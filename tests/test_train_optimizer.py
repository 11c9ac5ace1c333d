"""Learning-rate schedules and the coupled L2 step, against NumPy float64 references."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from gn_keras import GroupNormalization
from gn_keras.train import config as config_lib
from gn_keras.train import optimizer as optimizer_lib
from gn_keras.train import steps as steps_lib
from gn_keras.train.classification import ClassificationTask


def schedule_values(config, global_batch, steps_per_epoch):
    schedule = optimizer_lib.make_schedule(config, global_batch, steps_per_epoch)
    total = config.epochs * steps_per_epoch
    return np.array([float(schedule(step)) for step in range(total)])


def test_step_schedule_with_warmup_matches_reference():
    config = config_lib.make_config(
        epochs=10,
        lr_schedule="step",
        lr_boundaries=(3, 6.5),
        lr_decay_factor=0.1,
        warmup_epochs=2,
        base_lr=0.1,
        lr_reference_batch=32,
    )
    steps_per_epoch, global_batch = 4, 64
    got = schedule_values(config, global_batch, steps_per_epoch)
    peak = 0.1 * 64 / 32
    expected = []
    for step in range(40):
        drops = sum(step >= b * steps_per_epoch for b in (3, 6.5))
        warm = min(1.0, (step + 1) / (2 * steps_per_epoch))
        expected.append(peak * 0.1**drops * warm)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The first step of epoch 3 already runs at the decayed rate.
    assert got[12] == pytest.approx(peak * 0.1) and got[11] == pytest.approx(peak)


def test_cosine_and_constant_schedules_match_reference():
    config = config_lib.make_config(
        epochs=5, lr_schedule="cosine", warmup_epochs=1, base_lr=0.4, lr_reference_batch=256
    )
    got = schedule_values(config, 128, 6)
    peak, total = 0.2, 30
    expected = [
        peak * 0.5 * (1 + math.cos(math.pi * s / total)) * min(1.0, (s + 1) / 6)
        for s in range(total)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    constant = config_lib.make_config(
        epochs=3, lr_schedule="constant", warmup_epochs=0, base_lr=0.05, lr_reference_batch=10
    )
    np.testing.assert_allclose(schedule_values(constant, 20, 3), 0.1, rtol=1e-6)


def test_warmup_schedule_round_trips_through_keras_serialization():
    config = config_lib.make_config(lr_schedule="step", warmup_epochs=1, epochs=4)
    schedule = optimizer_lib.make_schedule(config, 64, 10)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    for step in (0, 5, 9, 10, 39):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))


def tiny_gn_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(4, 1, name="conv")(inputs)
    x = GroupNormalization(
        groups=2, gamma_initializer="random_normal", beta_initializer="random_normal", name="gn"
    )(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def cross_entropy_gradients(model, x, y):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )
    return [g.numpy().astype(np.float64) for g in tape.gradient(loss, model.trainable_variables)]


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy in float64 (the reference for the loop's loss)."""
    return -log_softmax(logits)[np.arange(len(labels)), labels].mean()


@pytest.mark.parametrize("decay_norm_params", [True, False])
def test_coupled_l2_goes_through_momentum(rng, decay_norm_params):
    """Two SGD steps: v ← m·v − lr·(g + wd·w), w ← w + v (Caffe2's coupled decay).

    Decoupled (AdamW-style) decay would differ at the second step by
    m·lr·wd·w₀, which is far above the tolerance here.
    """
    x = rng.normal(size=(6, 4, 4, 2)).astype("float32")
    y = rng.integers(0, 3, size=6)
    lr, momentum, wd = 0.1, 0.9, 0.05
    config = config_lib.make_config(
        base_lr=lr,
        lr_reference_batch=6,
        momentum=momentum,
        weight_decay=wd,
        lr_schedule="constant",
        warmup_epochs=0,
        decay_norm_params=decay_norm_params,
    )
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = tiny_gn_model(int(rng.integers(1 << 30)))
        optimizer = optimizer_lib.make_optimizer(config, optimizer_lib.make_schedule(config, 6, 10))
        optimizer.build(model.trainable_variables)
    decayed = optimizer_lib.decayed_variables(model, decay_norm_params)
    runner = steps_lib.StepRunner(
        strategy,
        model,
        optimizer,
        task=ClassificationTask(num_classes=3),
        global_batch_size=6,
        weight_decay=wd,
        decayed_variables=decayed,
    )
    iterator = iter(
        strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat())
    )
    is_decayed = [any(v is d for d in decayed) for v in model.trainable_variables]
    assert sum(is_decayed) == (len(is_decayed) if decay_norm_params else len(is_decayed) - 2)

    weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    velocity = [np.zeros_like(w) for w in weights]
    for _ in range(2):
        gradients = cross_entropy_gradients(model, x, y)
        penalty = 0.5 * wd * sum(np.sum(w**2) for w, d in zip(weights, is_decayed) if d)
        expected_loss = softmax_cross_entropy(model(x, training=True).numpy(), y) + penalty
        loss = float(runner.train_step(iterator))
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        for i, (w, g) in enumerate(zip(weights, gradients)):
            velocity[i] = momentum * velocity[i] - lr * (g + (wd * w if is_decayed[i] else 0.0))
            weights[i] = w + velocity[i]
        for w, variable in zip(weights, model.trainable_variables):
            np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-6)


def test_mixed_float16_uses_loss_scaling_and_still_steps_correctly(rng):
    x = rng.normal(size=(4, 4, 4, 2)).astype("float32")
    y = rng.integers(0, 3, size=4)
    seed = int(rng.integers(1 << 30))
    final = {}
    for policy in ("float32", "mixed_float16"):
        config = config_lib.make_config(
            base_lr=0.1,
            lr_reference_batch=4,
            weight_decay=0.0,
            lr_schedule="constant",
            warmup_epochs=0,
            mixed_precision=policy,
        )
        keras.mixed_precision.set_global_policy(policy)
        try:
            strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
            with strategy.scope():
                model = tiny_gn_model(seed)
                optimizer = optimizer_lib.make_optimizer(
                    config, optimizer_lib.make_schedule(config, 4, 10)
                )
                optimizer.build(model.trainable_variables)
            runner = steps_lib.StepRunner(
                strategy,
                model,
                optimizer,
                task=ClassificationTask(num_classes=3),
                global_batch_size=4,
            )
            runner.train_step(
                iter(
                    strategy.experimental_distribute_dataset(
                        tf.data.Dataset.from_tensors((x, y)).repeat()
                    )
                )
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (policy != "float32")
        final[policy] = [v.numpy() for v in model.trainable_variables]
    for full, half in zip(final["float32"], final["mixed_float16"]):
        np.testing.assert_allclose(half, full, rtol=2e-2, atol=2e-3)


def test_label_smoothed_cross_entropy_matches_reference(rng):
    x = rng.normal(size=(5, 4, 4, 2)).astype("float32")
    y = rng.integers(0, 3, size=5)
    smoothing = 0.2
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = tiny_gn_model(int(rng.integers(1 << 30)))
        optimizer = keras.optimizers.SGD(0.0)
        optimizer.build(model.trainable_variables)
    runner = steps_lib.StepRunner(
        strategy,
        model,
        optimizer,
        task=ClassificationTask(num_classes=3, label_smoothing=smoothing),
        global_batch_size=5,
    )
    logits = model(x, training=True).numpy()
    loss = float(
        runner.train_step(
            iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y))))
        )
    )
    log_probs = log_softmax(logits)
    targets = np.full((5, 3), smoothing / 3) + (1 - smoothing) * np.eye(3)[y]
    assert loss == pytest.approx(-(targets * log_probs).sum(1).mean(), rel=1e-5)
    assert runner.train_results()["loss"] == pytest.approx(loss, rel=1e-5)
