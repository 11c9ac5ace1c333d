"""VGG-16 with every norm (channels_first is in test_models_layout.py).

32×32 inputs, batch 2, eager training steps (helpers from test_models.py).
"""

import pytest
from test_models import check_forward_and_training, random_images

from gn_keras import models, norms


@pytest.mark.parametrize("norm", norms.available())
def test_vgg16_builds_runs_and_trains_with_every_norm(rng, norm):
    model = models.build("vgg16", norm=norm, num_classes=5, input_shape=(32, 32, 3))
    check_forward_and_training(model, random_images(rng, 32), 5, rng)
