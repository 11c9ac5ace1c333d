"""Model zoo beyond the norm matrix: the other ResNets and the argument
errors of ``models.build``.

32×32 inputs, batch 2, and eager training steps, as in test_models.py,
whose helpers this file reuses.
"""

import pytest
from test_models import NARROW, check_forward_and_training, random_images

from gn_keras import models


@pytest.mark.parametrize(
    "name,norm,extra",
    [
        ("resnet34", "gn", {}),
        ("resnet50", "gn+ws", {}),
        ("resnet50", "brn", {}),
        ("resnet101", "gn", {}),
        ("resnet152", "bn", {}),
        ("resnet32", "gn", NARROW),
        ("resnet44", "bn", {}),
        ("resnet56", "ln", {}),
        ("resnet110", "gn", {"groups": 8}),
        ("resnet20", "gn", {"width_multiplier": 2}),
    ],
)
def test_other_models_build_run_and_train(rng, name, norm, extra):
    model = models.build(
        name, norm=norm, num_classes=3, input_shape=(32, 32, 3), zero_init_residual=False, **extra
    )
    check_forward_and_training(model, random_images(rng, 32), 3, rng)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "resnet51"}, "name='resnet51'"),
        ({"name": "resnet18", "norm": "batch"}, "name='batch'"),
        ({"name": "resnet18", "num_classes": 0}, "num_classes=0"),
        ({"name": "resnet18", "input_shape": (32, 32)}, r"input_shape=\(32, 32\)"),
        ({"name": "resnet18", "input_shape": (32, 32, None)}, r"input_shape=\(32, 32, None\)"),
        ({"name": "resnet50_i3d", "input_shape": (32, 32, 3)}, r"\(T, H, W, C\)"),
        ({"name": "resnet18", "data_format": "NHWC"}, "data_format='NHWC'"),
        ({"name": "resnet18", "pooling": "mean"}, "pooling='mean'"),
        ({"name": "resnet18", "zero_init_residual": 1}, "zero_init_residual"),
        ({"name": "vgg16", "input_shape": (None, None, 3)}, "known spatial sizes"),
        ({"name": "resnet18", "width_multiplier": 2}, "width_multiplier"),
        ({"name": "resnet20", "width_multiplier": 0}, "width_multiplier=0"),
        ({"name": "resnet50_i3d", "temporal_padding": "reflect"}, "temporal_padding='reflect'"),
        ({"name": "resnet50", "groups": 48}, "48 groups do not divide 64 channels"),
    ],
)
def test_build_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        models.build(**kwargs)
    if kwargs["name"] == "resnet51":
        assert all(name in str(error.value) for name in models.available())


def test_default_gn_does_not_fit_narrow_cifar_stages_and_says_so():
    # GN's default 32 groups cannot split ResNet-20's 16 channels: an error
    # naming both numbers, not a silent clamp.
    with pytest.raises(ValueError, match="32 groups exceed the 16 channels"):
        models.build("resnet20", norm="gn")
    models.build("resnet20", norm="gn", groups=None, group_size=4)
    models.build("resnet20", norm="gn", width_multiplier=2)


def test_available_lists_the_issue_models():
    wanted = {
        "resnet18",
        "resnet18_narrow",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "vgg16",
        "resnet50_i3d",
        "resnet20_i3d",
        *(f"resnetv2_{depth}{stem}" for depth in (50, 101, 152) for stem in ("", "d")),
    }
    assert set(models.available()) == wanted
