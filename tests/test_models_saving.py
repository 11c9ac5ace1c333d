"""Every zoo model saves to ``.keras`` and loads back in safe mode, unchanged.

Each model is paired with a different norm so that every custom layer
(GN, BN*, WS and WN convs, time padding) goes through the file format. The
weights are randomized first, so γ=0 starts cannot hide a lost variable.
"""

import keras
import numpy as np
import pytest

from gn_keras import models, norms

CASES = [
    ("resnet18", "gn+ws"),
    ("resnet18_narrow", "gn"),
    ("resnet34", "frozen_bn"),
    ("resnet50", "gn"),
    ("resnet101", "brn"),
    ("resnet152", "keras_gn"),
    ("resnet20", "wn"),
    ("resnet32", "ln"),
    ("resnet44", "in"),
    ("resnet56", "sync_bn"),
    ("resnet110", "none"),
    ("vgg16", "bn"),
]


def randomize(model, rng):
    """Weights far from init (γ ≠ 1 or 0, β ≠ 0, BN statistics ≠ 0/1)."""
    for variable in model.weights:
        values = rng.normal(size=variable.shape) * 0.1
        if variable.name in ("gamma", "moving_variance", "gain"):
            values = rng.uniform(0.5, 1.5, variable.shape)
        variable.assign(values.astype("float32"))


def test_cases_cover_every_image_model_and_norm():
    # The I3D models are saved in test_models_video.py, ResNet-V2 in test_models_resnetv2.py.
    resnetv2 = {name for name in models.available() if name.startswith("resnetv2_")}
    elsewhere = {"resnet50_i3d", "resnet20_i3d"} | resnetv2
    assert {case[0] for case in CASES} | elsewhere == set(models.available())
    assert {case[1] for case in CASES} == set(norms.available())


def check_keras_file_round_trip(model, x, path):
    """Save, load in safe mode, and compare layers and outputs."""
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in model.layers]
    # Training mode too (batch statistics), unless dropout makes it random.
    has_dropout = any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    for training in (False,) if has_dropout else (False, True):
        np.testing.assert_array_equal(restored(x, training=training), model(x, training=training))


@pytest.mark.parametrize("name,norm", CASES)
def test_model_round_trips_through_keras_file(rng, tmp_path, name, norm):
    model = models.build(name, norm=norm, num_classes=5, input_shape=(32, 32, 3), groups=8)
    randomize(model, rng)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    check_keras_file_round_trip(model, x, tmp_path / f"{name}.keras")
