"""gn-video's ``--trained_model``: a 2D model's weights inflated into the I3D model.

References: the 2D model itself (a clip of identical frames must give its
pooled features, for GN and for BN in both modes, BN's batch statistics now
over (N, T, H, W)) and NumPy (each 3D kernel is the 2D kernel repeated over
time and divided by the temporal size).  A 2D model of another norm, depth,
GN grouping or input is one line naming both.
"""

import os

import keras
import numpy as np
import pytest

from gn_keras import models
from gn_keras._checks import FlagError
from gn_keras.train import classify
from gn_keras.train import config as classify_config
from gn_keras.train.video import config as config_lib
from gn_keras.train.video import transfer

FRAMES, SIZE = 4, 16
PREPROCESSING = {"clip_shape": [FRAMES, SIZE, SIZE], "channels": 3, "num_classes": 4}


def _video_config(tmp_path, trained_model, **changes):
    return config_lib.make_config(
        trained_model=str(trained_model), model_dir=str(tmp_path / "video"), **changes
    )


def _pooled(model):
    return keras.Model(model.inputs, model.get_layer("avg_pool").output)


def _clip_of(image):
    return np.repeat(image[:, None], FRAMES, axis=1)


def _randomized(model, rng):
    """Weights away from their init (BN statistics too), so that every layer matters."""
    for variable in model.weights:
        values = rng.normal(size=variable.shape) * 0.1
        if variable.name in ("gamma", "moving_variance"):
            values = rng.uniform(0.5, 1.5, variable.shape)
        variable.assign(values.astype("float32"))
    return model


def _saved_2d(tmp_path, rng, name="resnet20", norm="gn", channels=3, groups=8):
    model = models.build(
        name, norm=norm, num_classes=7, input_shape=(SIZE, SIZE, channels), groups=groups
    )
    path = str(tmp_path / f"{model.name}_{channels}.keras")
    _randomized(model, rng).save(path)
    return path


def test_transfer_in_from_a_tiny_gn_train_run(tmp_path, rng):
    classify.train(
        classify_config.make_config(
            dataset="synthetic",
            num_classes=3,
            image_size=SIZE,
            batch_size_per_replica=8,
            epochs=1,
            steps_per_epoch=2,
            eval_steps=1,
            model_dir=str(tmp_path / "train2d"),
        )
    )
    config = _video_config(tmp_path, tmp_path / "train2d")
    model3d = transfer.make_builder(config)(config, PREPROCESSING)
    model2d = keras.saving.load_model(str(tmp_path / "train2d" / "best.keras"), compile=False)

    kernel2d = model2d.get_layer("res3_block1_a_conv").kernel.numpy()
    kernel3d = model3d.get_layer("res3_block1_a_conv").kernel.numpy()
    np.testing.assert_allclose(kernel3d, np.repeat(kernel2d[None], 3, 0) / 3, rtol=1e-6)
    images = rng.normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(
        _pooled(model3d)(_clip_of(images)), _pooled(model2d)(images), rtol=1e-4, atol=1e-5
    )
    assert model3d.output.shape[-1] == 4  # the video classes: a fresh head


@pytest.mark.parametrize("training", [False, True])
def test_bn_statistics_extend_over_time(tmp_path, rng, training):
    path = _saved_2d(tmp_path, rng, norm="bn")
    config = _video_config(tmp_path, path, norm="bn")
    model3d = transfer.make_builder(config)(config, PREPROCESSING)
    model2d = keras.saving.load_model(path, compile=False)
    images = rng.normal(size=(3, SIZE, SIZE, 3)).astype("float32")
    got = _pooled(model3d)(_clip_of(images), training=training)
    want = _pooled(model2d)(images, training=training)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "built, changes, pattern",
    [
        ({"norm": "bn"}, {}, r"is a resnet20_bn model but .*needs a 2D resnet20_gn"),
        (
            {"name": "resnet32", "groups": 8},
            {},
            r"is a resnet32_gn model but .*needs a 2D resnet20_gn",
        ),
        ({"groups": 4}, {}, r"GN groups=4.*--groups=8"),
        ({"channels": 1}, {}, r"\(resnet20_gn\) does not fit --model=resnet20_i3d"),
    ],
)
def test_a_mismatched_2d_model_is_one_line_naming_both(tmp_path, rng, built, changes, pattern):
    path = _saved_2d(tmp_path, rng, **built)
    config = _video_config(tmp_path, path, **changes)
    with pytest.raises(FlagError, match=pattern) as raised:
        transfer.make_builder(config)(config, PREPROCESSING)
    assert "\n" not in str(raised.value)


def test_a_missing_trained_model_fails_before_anything_is_built(tmp_path):
    config = _video_config(tmp_path, tmp_path / "nothing")
    with pytest.raises(ValueError, match="nothing: no such file"):
        transfer.make_builder(config)
    assert not os.path.exists(tmp_path / "video")
