"""``gn_keras.convert``: BN → BN* freezing and norm swapping on any functional model.

References: the BN model's own inference outputs (freezing must not change
them), Keras's ``ResNet50`` application (swapping must give a model that
trains), and the plain convs' outputs (a WN/WS swap keeps or standardizes
the same kernel).
"""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from gn_reference import group_norm_reference
from test_models import train_step

from gn_keras import convert, models, norms
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.layer import GroupNormalization
from gn_keras.weight_convs import WNConv2D, WSConv2D, standardize_kernel


def _images(rng, batch=4, size=32):
    return rng.normal(size=(batch, size, size, 3)).astype("float32")


def _trained_bn_model(rng):
    """A zoo BN model after a few steps, so γ, β and the statistics are not at init."""
    model = models.build("resnet18", norm="bn", num_classes=5, input_shape=(32, 32, 3))
    for _ in range(3):
        train_step(model, _images(rng), rng.integers(0, 5, 4), learning_rate=0.05)
    return model


def _keras_resnet50():
    return keras.applications.ResNet50(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
    )


def test_freeze_keeps_inference_outputs_and_statistics_stay_put(rng):
    model = _trained_bn_model(rng)
    frozen = convert.freeze_batchnorm(model)
    x = _images(rng)
    np.testing.assert_array_equal(frozen(x, training=False), model(x, training=False))
    # In training mode BN* still applies the moving statistics.
    np.testing.assert_array_equal(frozen(x, training=True), model(x, training=False))
    frozen_layers = [
        layer for layer in frozen.layers if isinstance(layer, FrozenBatchNormalization)
    ]
    assert len(frozen_layers) == 20
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in frozen.layers)
    statistics = [v.numpy().copy() for layer in frozen_layers for v in layer.weights]
    convs_before = frozen.get_layer("conv1_conv").kernel.numpy().copy()
    loss = train_step(frozen, x, rng.integers(0, 5, 4))
    assert np.isfinite(loss)
    after = [v.numpy() for layer in frozen_layers for v in layer.weights]
    assert all(np.array_equal(a, b) for a, b in zip(statistics, after))
    assert not np.array_equal(frozen.get_layer("conv1_conv").kernel.numpy(), convs_before)


def test_freeze_and_swap_work_on_a_sequential_model(rng):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, use_bias=False, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
        ]
    )
    x = _images(rng)[:, :8, :8]
    for _ in range(3):
        model(x, training=True)  # moves BN's moving statistics away from their start
    frozen = convert.freeze_batchnorm(model)
    assert isinstance(frozen.get_layer("bn"), FrozenBatchNormalization)
    np.testing.assert_allclose(frozen(x), model(x, training=False), rtol=1e-5, atol=1e-5)
    swapped = convert.swap_norm(model, "gn", groups=2)
    assert isinstance(swapped.get_layer("bn"), GroupNormalization)
    np.testing.assert_array_equal(swapped.get_layer("conv").kernel, model.get_layer("conv").kernel)
    features = np.asarray(model.get_layer("conv")(x), "float64")
    want = np.maximum(group_norm_reference(features, groups=2, epsilon=1e-5), 0)
    np.testing.assert_allclose(swapped(x), want, rtol=1e-4, atol=1e-4)


def test_freeze_works_on_keras_applications_resnet50(rng):
    model = _keras_resnet50()
    model.compile(
        keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = _images(rng)
    model.fit(x, rng.integers(0, 10, 4), epochs=2, verbose=0)
    frozen = convert.freeze_batchnorm(model)
    np.testing.assert_array_equal(frozen(x, training=False), model(x, training=False))
    assert [layer.name for layer in frozen.layers] == [layer.name for layer in model.layers]
    epsilons = {
        layer.epsilon for layer in frozen.layers if isinstance(layer, FrozenBatchNormalization)
    }
    assert epsilons == {model.get_layer("conv1_bn").epsilon}


def test_freeze_leaves_group_norm_alone_and_warns_without_bn(rng, caplog):
    model = models.build("resnet18", norm="gn", num_classes=5, input_shape=(32, 32, 3))
    for variable in model.weights:
        variable.assign(variable + rng.normal(size=variable.shape).astype("float32") * 0.05)
    with caplog.at_level(logging.WARNING, logger="gn_keras.convert"):
        copy = convert.freeze_batchnorm(model)
    assert "no BatchNormalization" in caplog.text
    assert copy is not model
    assert [type(layer) for layer in copy.layers] == [type(layer) for layer in model.layers]
    x = _images(rng)
    np.testing.assert_array_equal(copy(x, training=True), model(x, training=True))


def test_swap_keras_resnet50_to_gn_trains_one_step(rng):
    model = _keras_resnet50()
    swapped = convert.swap_norm(model, "gn", groups=32)
    gns = [layer for layer in swapped.layers if isinstance(layer, GroupNormalization)]
    assert len(gns) == 53
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in swapped.layers)
    # Convs and the classifier keep their weights.
    for name in ("conv1_conv", "conv4_block3_2_conv", "predictions"):
        for new, old in zip(swapped.get_layer(name).weights, model.get_layer(name).weights):
            np.testing.assert_array_equal(new, old)
    x = _images(rng)
    before = [v.numpy().copy() for v in swapped.trainable_variables]
    loss = train_step(swapped, x, rng.integers(0, 10, 4))
    assert np.isfinite(loss)
    unchanged = [
        v.path
        for v, old in zip(swapped.trainable_variables, before)
        if np.array_equal(v.numpy(), old)
    ]
    assert unchanged == []


def test_swap_keeps_affine_weights_unless_told_not_to(rng):
    model = _trained_bn_model(rng)
    kept = convert.swap_norm(model, "gn", groups=16)
    fresh = convert.swap_norm(model, "gn", groups=16, keep_norm_weights=False)
    old_gamma = model.get_layer("res3_block1_a_norm").gamma.numpy()
    np.testing.assert_array_equal(kept.get_layer("res3_block1_a_norm").gamma, old_gamma)
    np.testing.assert_array_equal(
        fresh.get_layer("res3_block1_a_norm").gamma, np.ones_like(old_gamma)
    )
    # BN -> BN* via swap carries the moving statistics: the same as freezing.
    x = _images(rng)
    np.testing.assert_array_equal(
        convert.swap_norm(model, "frozen_bn")(x, training=True), model(x, training=False)
    )


def test_swap_keeps_a_fused_relu_or_refuses_to_drop_it(rng):
    """A GN with activation='relu' stays a ReLU'd GN; a kind without it is refused."""
    inputs = keras.Input((6, 6, 8))
    fused = GroupNormalization(groups=4, activation="relu", name="norm")(inputs)
    model = keras.Model(inputs, fused)
    x = rng.normal(1.0, 2.0, size=(2, 6, 6, 8)).astype("float32")
    swapped = convert.swap_norm(model, "ln")
    assert swapped.get_layer("norm").get_config()["activation"] == "relu"
    expected = np.maximum(group_norm_reference(x, groups=1), 0.0)
    np.testing.assert_allclose(swapped(x), expected, atol=1e-4)
    with pytest.raises(ValueError, match=r"'norm' is a GroupNormalization with a fused ReLU"):
        convert.swap_norm(model, "bn")


def test_swap_to_weight_convs_keeps_or_standardizes_the_kernels(rng):
    model = _keras_resnet50()
    x = _images(rng, batch=2)
    probe = keras.Model(model.input, model.get_layer("conv2_block1_1_conv").output)
    inputs = keras.Model(model.input, model.get_layer("conv2_block1_1_conv").input)(x)
    plain = probe(x)

    with_wn = convert.swap_norm(model, "wn")
    assert isinstance(with_wn.get_layer("conv1_conv"), WNConv2D)
    assert isinstance(with_wn.get_layer("conv1_bn"), keras.layers.Identity)
    wn_conv = with_wn.get_layer("conv2_block1_1_conv")
    np.testing.assert_allclose(wn_conv(inputs), plain, rtol=1e-4, atol=1e-5)

    with_ws = convert.swap_norm(model, "gn+ws", groups=32)
    ws_conv = with_ws.get_layer("conv2_block1_1_conv")
    assert isinstance(ws_conv, WSConv2D)
    kernel = model.get_layer("conv2_block1_1_conv").kernel.numpy().astype(np.float64)
    standardized = (kernel - kernel.mean(axis=(0, 1, 2))) / np.sqrt(
        kernel.var(axis=(0, 1, 2)) + 1e-10
    )
    np.testing.assert_allclose(
        standardize_kernel(ws_conv.kernel), standardized, rtol=1e-4, atol=1e-5
    )

    back = convert.swap_norm(with_wn, "bn")
    assert type(back.get_layer("conv1_conv")) is keras.layers.Conv2D
    np.testing.assert_allclose(
        back.get_layer("conv2_block1_1_conv")(inputs), plain, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("kind", norms.available())
def test_swap_reaches_nested_models_and_layer_norm(rng, kind):
    inner_input = keras.Input((8, 8, 4))
    inner = keras.layers.Conv2D(8, 3, padding="same", name="inner_conv")(inner_input)
    inner = keras.layers.BatchNormalization(name="inner_bn")(inner)
    block = keras.Model(inner_input, inner, name="block")
    outer_input = keras.Input((8, 8, 4))
    y = keras.layers.LayerNormalization(name="outer_ln")(block(outer_input))
    y = keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(y))
    model = keras.Model(outer_input, y)
    swapped = convert.swap_norm(model, kind, groups=4)
    expected = type(norms.get(kind, groups=4)(axis=-1, name="probe"))
    assert type(swapped.get_layer("block").get_layer("inner_bn")) is expected
    assert type(swapped.get_layer("outer_ln")) is expected
    x = rng.normal(size=(2, 8, 8, 4)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(swapped(x, training=True) ** 2)
    gradients = tape.gradient(loss, swapped.trainable_variables)
    assert np.isfinite(loss) and all(g is not None for g in gradients)


def test_bad_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="argument `model`"):
        convert.freeze_batchnorm("resnet50")
    with pytest.raises(ValueError, match="name='gn32'"):
        convert.swap_norm(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), "gn32")
