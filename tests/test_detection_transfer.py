"""Where a gn-detect backbone starts: a gn-train run, a .keras file, keras.applications.

Each check compares the built backbone's weights with the trained model's
own (by layer name, or in order for keras.applications), its norm layers'
kinds, and the one-line errors for a mismatch in depth, norm or endpoints.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gn_keras import models
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.layer import GroupNormalization
from gn_keras.train import classify
from gn_keras.train import config as classify_config
from gn_keras.train.detection import config as config_lib
from gn_keras.train.detection import transfer

TINY = dict(image_size=(64, 64), short_side=64, max_side=64, fpn_channels=16, groups=4)


def detection_config(**changes):
    return config_lib.make_config(**{**TINY, **changes})


def _randomized(model, rng):
    for variable in model.weights:  # away from init, so a missed copy shows
        values = rng.normal(size=variable.shape) * 0.1
        if variable.name in ("gamma", "moving_variance"):
            values = rng.uniform(0.5, 1.5, variable.shape)
        variable.assign(values.astype("float32"))
    return model


@pytest.fixture(scope="module")
def gn_train_dir(tmp_path_factory):
    """A tiny real gn-train run of a GN resnet18_narrow (G=4) on synthetic 32×32 images."""
    model_dir = str(tmp_path_factory.mktemp("gn_train") / "run")
    config = classify_config.make_config(
        model="resnet18_narrow",
        groups=4,
        dataset="synthetic",
        num_classes=4,
        image_size=32,
        epochs=1,
        steps_per_epoch=2,
        eval_steps=1,
        batch_size_per_replica=4,
        model_dir=model_dir,
    )
    classify.train(config)
    return model_dir


def _weights_by_layer(model):
    return {
        layer.name: [np.asarray(w) for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }


def test_a_gn_train_run_starts_the_gn_backbone(gn_train_dir):
    start = transfer.backbone_start(detection_config(trained_model=gn_train_dir))
    assert start.model_config.backbone_norm == "gn"
    assert start.report["freeze_at"] == 2 and start.report["trained_norm"] == "gn"
    preprocessing = json.load(open(os.path.join(gn_train_dir, "preprocessing.json")))
    assert list(start.input_config.mean) == pytest.approx(preprocessing["mean"])
    backbone = start.backbone_fn(start.model_config)
    trained = keras.saving.load_model(os.path.join(gn_train_dir, "best.keras"), compile=False)
    theirs = _weights_by_layer(trained)
    ours = _weights_by_layer(backbone)
    assert len(ours) == start.report["copied_layers"] > 20
    for name, values in ours.items():
        for mine, original in zip(values, theirs[name], strict=True):
            np.testing.assert_array_equal(mine, original)
    assert any(isinstance(layer, GroupNormalization) for layer in backbone.layers)
    frozen = [layer.name for layer in backbone.layers if layer.weights and not layer.trainable]
    assert "conv1_conv" in frozen and any(n.startswith("res2") for n in frozen)
    assert not any(n.startswith("res3") for n in frozen)


def test_a_bn_keras_file_becomes_bn_star(tmp_path, rng):
    bn = _randomized(
        models.build("resnet18_narrow", norm="bn", num_classes=4, input_shape=(32, 32, 3)), rng
    )
    bn.save(tmp_path / "bn.keras")
    prep = {"image_size": [32, 32], "channels": 3, "mean": [1.0, 2, 3], "std": [4.0, 5, 6]}
    json.dump({**prep, "num_classes": 4}, open(tmp_path / "preprocessing.json", "w"))
    start = transfer.backbone_start(
        detection_config(trained_model=str(tmp_path / "bn.keras"), freeze_at=0)
    )
    assert start.model_config.backbone_norm == "frozen_bn"
    backbone = start.backbone_fn(start.model_config)
    frozen = [layer for layer in backbone.layers if isinstance(layer, FrozenBatchNormalization)]
    assert frozen and not any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in backbone.layers
    )
    # BN* computes what the trained BN computes at inference, on a fresh input.
    images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    cut = keras.Model(bn.input, bn.get_layer("C5").output)
    expected = models.feature_extractor(
        models.build(
            "resnet18_narrow", norm="bn", include_top=False, pooling=None, input_shape=(64, 64, 3)
        )
    )
    for layer in expected.layers:
        if layer.weights:
            layer.set_weights(cut.get_layer(layer.name).get_weights())
    np.testing.assert_allclose(
        backbone(images)["C5"], expected(images, training=False)["C5"], rtol=1e-4, atol=1e-4
    )
    assert all(layer.trainable for layer in backbone.layers if layer.weights)  # freeze_at=0


def test_mismatches_are_one_line_errors_naming_both(gn_train_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--trained_model=.*--backbone=resnet34"):
        transfer.backbone_start(detection_config(trained_model=gn_train_dir, backbone="resnet34"))
    with pytest.raises(ValueError, match=r"normalizes with gn but --backbone_norm=frozen_bn"):
        transfer.backbone_start(
            detection_config(trained_model=gn_train_dir, backbone_norm="frozen_bn")
        )
    with pytest.raises(ValueError, match=r"groups.*--groups"):
        transfer.backbone_start(detection_config(trained_model=gn_train_dir, groups=8))
    cifar = models.build("resnet20", num_classes=4, input_shape=(16, 16, 3), groups=8)
    cifar.save(tmp_path / "cifar.keras")
    json.dump(
        {"image_size": [16, 16], "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3},
        open(tmp_path / "preprocessing.json", "w"),
    )
    with pytest.raises(ValueError, match=r"cifar.keras lacks the endpoints \['C5'\]"):
        transfer.backbone_start(detection_config(trained_model=str(tmp_path / "cifar.keras")))
    for error in (
        r"'ResNet51' is not one of",
        r"is a resnet50 but --backbone=resnet18_narrow",
    ):
        name = "ResNet51" if "51" in error else "ResNet50"
        with pytest.raises(ValueError, match=error):
            transfer.backbone_start(detection_config(trained_model=f"keras.applications:{name}"))


def test_keras_applications_resnet50_from_a_weights_file(tmp_path, rng):
    network = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    for variable in network.weights[:6]:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    path = str(tmp_path / "r50.weights.h5")
    network.save_weights(path)
    start = transfer.backbone_start(
        detection_config(trained_model=f"keras.applications:ResNet50:{path}", backbone="resnet50")
    )
    assert start.model_config.backbone_norm == "frozen_bn"
    assert start.input_config.std == (1.0, 1.0, 1.0)
    backbone = start.backbone_fn(start.model_config)
    assert sorted(backbone.output) == ["C2", "C3", "C4", "C5"]
    # RGB through our backbone equals the original on BGR minus the caffe mean.
    images = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    ours = backbone(images - np.array(start.input_config.mean, "float32"))["C2"]
    original = keras.Model(network.input, network.get_layer("conv2_block3_out").output)
    theirs = original(keras.applications.resnet50.preprocess_input(images.copy()), training=False)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    assert tf.reduce_any(tf.not_equal(ours, 0))


def test_a_given_backbone_survives_the_keras_file(tmp_path, rng):
    """A backbone not rebuilt from the config (here BN* under a GN config) is saved with it."""
    from detection_helpers import tiny_config

    from gn_keras.models.detection import MaskRCNN, fpn

    model_config = tiny_config(backbone_norm="gn")
    backbone = _randomized(fpn.build_backbone(model_config.replace(backbone_norm="frozen_bn")), rng)
    model = MaskRCNN(model_config, backbone=backbone)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert any(isinstance(layer, FrozenBatchNormalization) for layer in loaded.backbone.layers)
    images = rng.normal(size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.pyramid(images)["2"], model.pyramid(images)["2"], rtol=1e-5, atol=1e-5
    )
