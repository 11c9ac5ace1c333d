"""Model zoo: every model and norm builds, runs and trains; the paper's init.

Small inputs throughout (32×32 or 64×64, batch 2). Training steps are eager
``GradientTape`` steps, so no graph is traced per model. The other models,
VGG-16 and channels_first are in test_models_zoo.py, parameter counts and
initialization in test_models_params.py, saving in test_models_saving.py,
video and inflation in test_models_video.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gn_keras import models, norms, transfer

ALL_NORMS = norms.available()
# Kinds whose γ (or WN's gain) can start the residual branch at exactly 0.
ZERO_START_NORMS = tuple(kind for kind in ALL_NORMS if kind != "none")
NARROW = {"groups": 8}  # GN (ours and Keras's) on 16-channel CIFAR stages


def train_step(model, x, labels, learning_rate=0.1):
    """One eager SGD step on the softmax loss; returns the loss."""
    optimizer = keras.optimizers.SGD(learning_rate)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(gradients, model.trainable_variables)
    return float(loss)


def check_forward_and_training(model, x, num_classes, rng):
    """Logits are finite; one step gives a finite loss and moves every weight."""
    logits = model(x, training=False)
    assert logits.shape == (x.shape[0], num_classes)
    assert np.isfinite(logits).all()
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss = train_step(model, x, rng.integers(0, num_classes, x.shape[0]))
    assert np.isfinite(loss)
    frozen = [
        v.path
        for v, old in zip(model.trainable_variables, before)
        if np.array_equal(v.numpy(), old)
    ]
    assert frozen == []


def random_images(rng, size, batch=2, channels_first=False):
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    return np.moveaxis(x, -1, 1) if channels_first else x


# 64×64 keeps res5 at 2×2, so IN still has spatial statistics there.
@pytest.mark.parametrize("norm", ALL_NORMS)
@pytest.mark.parametrize("name,size,extra", [("resnet18", 64, {}), ("resnet20", 32, NARROW)])
def test_every_norm_builds_runs_and_trains(rng, name, size, extra, norm):
    model = models.build(
        name,
        norm=norm,
        num_classes=5,
        input_shape=(size, size, 3),
        zero_init_residual=False,
        **extra,
    )
    check_forward_and_training(model, random_images(rng, size), 5, rng)


def _residual_branches(model):
    """Each block's residual-branch output: the second input of its Add."""
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    return keras.Model(model.input, [layer.input[1] for layer in adds])


@pytest.mark.parametrize("norm", ZERO_START_NORMS)
def test_zero_init_makes_every_residual_branch_exactly_zero(rng, norm):
    model = models.build("resnet18", norm=norm, num_classes=4, input_shape=(32, 32, 3), groups=16)
    branches = _residual_branches(model)
    x = random_images(rng, 32)
    for training in (False, True):
        outputs = branches(x, training=training)
        assert len(outputs) == 8
        for output in outputs:
            np.testing.assert_array_equal(output, np.zeros_like(output))


@pytest.mark.parametrize("name,extra", [("resnet50", {}), ("resnet20", NARROW)])
def test_zero_init_in_bottleneck_and_cifar_blocks_and_the_switch(rng, name, extra):
    x = random_images(rng, 32)
    for zero_init in (True, False):
        model = models.build(
            name, num_classes=4, input_shape=(32, 32, 3), zero_init_residual=zero_init, **extra
        )
        peak = max(np.abs(b).max() for b in _residual_branches(model)(x, training=False))
        assert (peak == 0) == zero_init


def test_names_are_deterministic_and_shared_across_norms():
    def names(norm):
        return [
            layer.name
            for layer in models.build("resnet18", norm=norm, input_shape=(32, 32, 3)).layers
        ]

    model_names = names("gn")
    assert model_names == names("gn") == names("bn")
    for expected in (
        "conv1_conv",
        "conv1_norm",
        "pool1",
        "res2_block1_a_conv",
        "res3_block1_proj_norm",
        "res5_block2_b_norm",
        "C2",
        "C5",
        "avg_pool",
        "logits",
    ):
        assert expected in model_names


def test_feature_endpoints_give_the_stage_outputs(rng):
    model = models.build("resnet50", norm="gn", input_shape=(64, 64, 3))
    endpoints = models.feature_endpoints(model)
    assert list(endpoints) == ["C2", "C3", "C4", "C5"]
    extractor = models.feature_extractor(model, ("C3", "C5"))
    x = random_images(rng, 64)
    features = extractor(x)
    assert features["C3"].shape == (2, 8, 8, 512) and features["C5"].shape == (2, 2, 2, 2048)
    # C5 is the map the head pools: averaged and fed to the fc, it gives the logits.
    pooled = np.asarray(features["C5"]).mean(axis=(1, 2))
    np.testing.assert_allclose(
        model.get_layer("logits")(pooled), model(x, training=False), rtol=1e-5, atol=1e-6
    )
    vgg = models.build(
        "vgg16", norm="none", input_shape=(32, 32, 3), include_top=False, pooling=None
    )
    assert list(models.feature_endpoints(vgg)) == ["C1", "C2", "C3", "C4", "C5"]
    cifar = models.build("resnet20", input_shape=(32, 32, 3), **NARROW)
    assert list(models.feature_endpoints(cifar)) == ["C2", "C3", "C4"]


def test_zoo_and_transfer_read_the_same_c_k_marks():
    """One reader of the C<k> names: ordered by k, one spelling per k."""
    x = inputs = keras.Input((4,))
    for name in ("C2", "C10", "C02", "C3", "Cx", "C9", "conv1_relu"):
        x = keras.layers.Identity(name=name)(x)
    model = keras.Model(inputs, x)
    marks = {name: id(tensor) for name, tensor in models.feature_endpoints(model).items()}
    assert marks == {name: id(model.get_layer(name).output) for name in ("C2", "C3", "C9", "C10")}
    assert list(marks) == ["C2", "C3", "C9", "C10"]
    # The exporter's stages: the same marks, plus the stem's last layer as C1.
    stages = {name: id(tensor) for name, tensor in transfer.stage_endpoints(model).items()}
    assert list(stages) == ["C1", "C2", "C3", "C9", "C10"]
    assert stages == {**marks, "C1": id(model.get_layer("conv1_relu").output)}
    vgg = models.build(
        "vgg16", norm="none", input_shape=(32, 32, 3), include_top=False, pooling=None
    )
    assert {k: id(v) for k, v in transfer.stage_endpoints(vgg).items()} == {
        k: id(v) for k, v in models.feature_endpoints(vgg).items()
    }


@pytest.mark.parametrize(
    "pooling,shape", [("avg", (2, 512)), ("max", (2, 512)), (None, (2, 2, 2, 512))]
)
def test_include_top_false_pools_or_returns_the_map(rng, pooling, shape):
    model = models.build("resnet18", input_shape=(64, 64, 3), include_top=False, pooling=pooling)
    assert model(random_images(rng, 64)).shape == shape
