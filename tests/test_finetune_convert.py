"""BN → BN* and BN → GN for fine-tuning, on our models and on keras.applications.

``freeze_batchnorm`` must reproduce Keras's own BN inference exactly and keep
its statistics fixed through a training step, while GN layers pass through
untouched; ``swap_norm`` must turn a model we did not build
(``keras.applications.ResNet50``) into a GN model that trains.
"""

import json

import keras
import numpy as np
import tensorflow as tf

from gn_keras import GroupNormalization, convert, load, transfer
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.train import config as config_lib
from gn_keras.train import finetune

SIZE = 8


def _mixed_model(rng):
    """BN and GN in one network, with non-trivial BN statistics."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="res2_conv")(x)
    x = GroupNormalization(groups=4, name="res2_gn")(x)
    x = keras.layers.ReLU(name="C2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    bn = model.get_layer("conv1_bn")
    bn.moving_mean.assign(rng.uniform(-1, 1, 8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.2, 3.0, 8).astype("float32"))
    return model


def test_freeze_batchnorm_keeps_outputs_and_statistics(rng):
    model = _mixed_model(rng)
    frozen = convert.freeze_batchnorm(model)
    assert isinstance(frozen.get_layer("conv1_bn"), FrozenBatchNormalization)
    assert isinstance(frozen.get_layer("res2_gn"), GroupNormalization)
    for before, after in zip(
        model.get_layer("res2_gn").weights, frozen.get_layer("res2_gn").weights
    ):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    x = rng.normal(size=(4, SIZE, SIZE, 3)).astype("float32")
    reference = model(x, training=False).numpy()  # Keras's own BN inference
    np.testing.assert_array_equal(frozen(x, training=False).numpy(), reference)
    # BN* performs no batch normalization in training mode either (§4.2).
    np.testing.assert_array_equal(frozen(x, training=True).numpy(), reference)

    statistics = [w.numpy().copy() for w in frozen.get_layer("conv1_bn").weights]
    kernel = frozen.get_layer("res2_conv").kernel.numpy().copy()
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            rng.integers(0, 5, 4), frozen(x, training=True)
        )
    variables = frozen.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    for before, after in zip(statistics, frozen.get_layer("conv1_bn").weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert not np.array_equal(kernel, frozen.get_layer("res2_conv").kernel.numpy())


def test_finetune_builder_freezes_bn_keeps_gn_and_replaces_head(rng, tmp_path):
    model = _mixed_model(rng)
    model.save(tmp_path / "best.keras")
    preprocessing = {
        "image_size": [SIZE, SIZE],
        "channels": 3,
        "mean": [120.0] * 3,
        "std": [60.0] * 3,
        "data_format": "channels_last",
        "num_classes": 2,
        "class_names": None,
    }
    (tmp_path / "preprocessing.json").write_text(json.dumps(preprocessing))
    report = {}
    options = finetune.FinetuneOptions(str(tmp_path), freeze_at=1, freeze_bn=True)
    config = config_lib.make_config(dataset="synthetic", image_size=SIZE, model_dir=str(tmp_path))
    tuned = finetune.make_builder(options, report)(config, preprocessing)
    assert report["frozen_batchnorm_layers"] == 1
    assert report["frozen_layers"] == ["conv1_conv"]  # BN* has nothing to freeze
    assert tuned.output.shape == (None, 2)
    assert not tuned.get_layer("conv1_conv").trainable
    assert isinstance(tuned.get_layer("res2_gn"), GroupNormalization)
    x = rng.normal(size=(3, SIZE, SIZE, 3)).astype("float32")
    backbone = keras.Model(model.input, model.get_layer("pool").output)
    tuned_backbone = keras.Model(tuned.input, tuned.get_layer("pool").output)
    np.testing.assert_array_equal(
        tuned_backbone(x, training=True).numpy(), backbone(x, training=False).numpy()
    )
    assert load.load_preprocessing(tmp_path)["num_classes"] == 2


def test_keras_resnet50_endpoints_and_swap_norm_to_gn_that_trains(rng):
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    resnet = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=3)
    # What export's features signature and --freeze_at read from it.
    head, pooled, ends_in_softmax = transfer.find_head(resnet)
    assert head.name == "predictions" and ends_in_softmax and pooled.shape == (None, 2048)
    endpoints = transfer.stage_endpoints(resnet)
    for key, name in (
        ("C1", "pool1_pool"),
        ("C2", "conv2_block3_out"),
        ("C3", "conv3_block4_out"),
        ("C4", "conv4_block6_out"),
        ("C5", "conv5_block3_out"),
    ):
        assert endpoints[key] is resnet.get_layer(name).output
    batchnorms = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in resnet.layers)
    gn = convert.swap_norm(resnet, "gn", groups=32)
    kinds = [type(layer) for layer in gn.layers]
    assert keras.layers.BatchNormalization not in kinds
    assert kinds.count(GroupNormalization) == batchnorms == 53
    assert gn.get_layer("conv1_bn").resolved_groups == 32

    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    labels = np.array([0, 2])
    loss_fn = keras.losses.SparseCategoricalCrossentropy()  # ResNet50 ends in softmax
    # Small enough that one step along the gradient must lower the loss on
    # the same batch (a fresh ResNet-50 without zero-init γ is steep).
    optimizer = keras.optimizers.SGD(1e-4)
    gamma = gn.get_layer("conv5_block3_3_bn").gamma
    before = gamma.numpy().copy()
    losses = []
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, gn(x, training=True))
        gradients = tape.gradient(loss, gn.trainable_variables)
        assert all(g is not None for g in gradients)
        optimizer.apply_gradients(zip(gradients, gn.trainable_variables))
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[1] < losses[0]
    assert np.any(gamma.numpy() != before)
