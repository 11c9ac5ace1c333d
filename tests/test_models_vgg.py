"""VGG-16 with every norm, and channels_first for ResNet, VGG and CIFAR ResNet.

32×32 inputs, batch 2, eager training steps (helpers from test_models.py).
"""

import numpy as np
import pytest
from test_models import check_forward_and_training, random_images

from gn_keras import models, norms


@pytest.mark.parametrize("norm", norms.available())
def test_vgg16_builds_runs_and_trains_with_every_norm(rng, norm):
    model = models.build("vgg16", norm=norm, num_classes=5, input_shape=(32, 32, 3))
    check_forward_and_training(model, random_images(rng, 32), 5, rng)


def _copy_weights_by_name(source, target):
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


@pytest.mark.parametrize(
    "name,norm", [("resnet18", "gn"), ("resnet50", "bn"), ("vgg16", "gn+ws"), ("resnet20", "wn")]
)
def test_channels_first_matches_channels_last(rng, name, norm):
    last = models.build(
        name,
        norm=norm,
        num_classes=4,
        input_shape=(32, 32, 3),
        group_size=8,
        groups=None,
        zero_init_residual=False,
    )
    first = models.build(
        name,
        norm=norm,
        num_classes=4,
        input_shape=(3, 32, 32),
        group_size=8,
        groups=None,
        zero_init_residual=False,
        data_format="channels_first",
    )
    _copy_weights_by_name(last, first)
    x = random_images(rng, 32)
    np.testing.assert_allclose(
        first(np.moveaxis(x, -1, 1), training=False), last(x, training=False), rtol=1e-4, atol=1e-4
    )
    check_forward_and_training(first, np.moveaxis(x, -1, 1), 4, rng)
