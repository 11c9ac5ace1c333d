"""Parameter counts against published numbers, and the paper's initialization.

Counts use the full-size models (1000 classes) but never run data. The
ResNet references are torchvision's published counts for the same
architectures; VGG-16 without normalization is compared with
``keras.applications.VGG16`` layer by layer.
"""

import keras
import numpy as np
import pytest

from gn_keras import models

# torchvision's resnet18 ... resnet152 (conv without bias, BN γ/β, fc).
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_resnet_trainable_counts_equal_torchvision_for_gn_and_bn(name):
    gn = models.build(name, norm="gn")
    bn = models.build(name, norm="bn")
    assert _count(gn.trainable_weights) == TORCHVISION_COUNTS[name]
    assert _count(bn.trainable_weights) == TORCHVISION_COUNTS[name]
    # Only BN carries moving statistics: one mean and one variance per γ.
    bn_gammas = [v for v in bn.weights if v.name == "gamma"]
    assert _count(bn.non_trainable_weights) == 2 * _count(bn_gammas)
    assert gn.non_trainable_weights == []


def test_vgg16_without_norm_is_keras_vgg16():
    ours = models.build("vgg16", norm="none")
    reference = keras.applications.VGG16(weights=None)
    assert ours.count_params() == reference.count_params() == 138_357_544
    shapes = [tuple(v.shape) for v in ours.weights]
    assert shapes == [tuple(v.shape) for v in reference.weights]


def _last_norm_names(model):
    """The norm that ends each residual branch (``_b`` for basic, ``_c`` for bottleneck)."""
    names = set()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Add):
            block = layer.name[: -len("_add")]
            unit = "c" if f"{block}_c_norm" in {layer.name for layer in model.layers} else "b"
            names.add(f"{block}_{unit}_norm")
    return names


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
def test_affine_init_gamma_one_except_each_block_last_and_beta_zero(name):
    model = models.build(name, norm="gn", input_shape=(32, 32, 3))
    last = _last_norm_names(model)
    assert len(last) == (16 if name == "resnet50" else 8)
    norm_layers = [layer for layer in model.layers if layer.name.endswith("_norm")]
    for layer in norm_layers:
        expected = 0.0 if layer.name in last else 1.0
        np.testing.assert_array_equal(layer.gamma, np.full(layer.gamma.shape, expected))
        np.testing.assert_array_equal(layer.beta, np.zeros(layer.beta.shape))


def _check_normal(values, stddev, what):
    """Zero mean, the given spread, and normal (not 2σ-truncated) tails."""
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    # Five standard errors of the sample mean and standard deviation.
    assert abs(values.mean()) < 5 * stddev / np.sqrt(n), what
    assert abs(values.std() / stddev - 1) < 5 / np.sqrt(2 * n), what
    if n > 100_000:
        beyond = np.mean(np.abs(values) > 2 * stddev)
        assert abs(beyond - 0.0455) < 0.005, what


def test_convs_are_he_fan_out_normal_without_bias_and_fc_is_n_0_001():
    model = models.build("resnet50", norm="gn", input_shape=(32, 32, 3), num_classes=1000)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 53
    for conv in convs:
        kernel = conv.kernel.numpy()
        fan_out = int(np.prod(kernel.shape[:-2])) * kernel.shape[-1]
        _check_normal(kernel, np.sqrt(2.0 / fan_out), conv.name)
        assert not conv.use_bias, conv.name
    fc = model.get_layer("logits")
    _check_normal(fc.kernel.numpy(), 0.01, "logits")
    np.testing.assert_array_equal(fc.bias, np.zeros(1000))


def test_convs_keep_bias_when_no_norm_follows():
    for norm in ("none", "wn"):
        model = models.build("resnet18", norm=norm, input_shape=(32, 32, 3))
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert convs and all(conv.use_bias for conv in convs)
