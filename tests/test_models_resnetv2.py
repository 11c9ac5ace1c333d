"""The pre-activation ResNet-V2 family (models/resnetv2.py) against timm's own modules.

timm's ``PreActBottleneck`` and stems, with random weights, are the
reference for one block or stem at a time, at odd and even sizes (where the
paddings and ceil-mode pooling show); weights are copied with the names
spelled out here. Whole networks: parameter counts against timm's
``resnetv2_50x1_bit`` and ``resnetv2_50d_gn``, channels_first against
channels_last, one training step with GN+WS built the way gn-train builds
``--model``, and a ``.keras`` round trip (test_models_saving.py's check).
Whole-network conversions are in test_pretrained.py.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from gn_keras.models.pretrained import torch_runtime  # noqa: E402

torch_runtime.keep_triton_out()  # TensorFlow may be loaded already: see torch_runtime
torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from test_models import check_forward_and_training, random_images  # noqa: E402
from test_models_saving import check_keras_file_round_trip  # noqa: E402
from test_models_saving import randomize as randomize_keras  # noqa: E402
from test_pretrained import assert_close, randomize  # noqa: E402

from gn_keras import models, norms  # noqa: E402
from gn_keras.models import resnetv2  # noqa: E402
from gn_keras.models.common import Builder  # noqa: E402
from gn_keras.train import classify  # noqa: E402
from gn_keras.train import config as config_lib  # noqa: E402

GROUPS = 8
STD_EPSILON = 1e-6  # timm's StdConv2d default, given to ours as ws_epsilon
# timm module -> zoo unit, for one block and for the stems.
BLOCK_UNITS = {
    "norm1": "a_norm",
    "conv1": "a_conv",
    "norm2": "b_norm",
    "conv2": "b_conv",
    "norm3": "c_norm",
    "conv3": "c_conv",
    "downsample.conv": "proj_conv",
}
STEM_UNITS = {
    "conv": "conv1_conv",
    "conv1": "conv1_conv",
    "norm1": "conv1_norm",
    "conv2": "conv2_conv",
    "norm2": "conv2_norm",
    "conv3": "conv3_conv",
}


def timm_layers(norm):
    """timm's conv and norm-act classes for a zoo ``norm``."""
    layers = timm.layers
    if norm == "gn+ws":
        conv = functools.partial(layers.StdConv2d, eps=STD_EPSILON)
    else:
        conv = layers.create_conv2d
    return conv, functools.partial(layers.GroupNormAct, num_groups=GROUPS)


def copy_from_torch(module, model, units, prefix=""):
    """Every tensor of torch ``module`` into the zoo layer ``units`` names."""
    for name, value in module.state_dict().items():
        torch_module, _, kind = name.rpartition(".")
        layer = model.get_layer(prefix + units[torch_module])
        value = value.numpy()
        if value.ndim == 4:  # (O, I, kh, kw) -> (kh, kw, I, O)
            value = value.transpose(2, 3, 1, 0)
        wanted = "kernel" if value.ndim == 4 else {"weight": "gamma", "bias": "beta"}[kind]
        [variable] = [v for v in layer.weights if v.name == wanted]
        variable.assign(value)


def zoo_piece(norm, shape, build, zero_init=False):
    """A functional model around one zoo piece ``build(builder, x)``."""
    builder = Builder(norms.get(norm, groups=GROUPS), 2, "channels_last", zero_init)
    inputs = keras.Input(shape)
    return keras.Model(inputs, build(builder, inputs))


def ws_options(norm):
    return {"epsilon": STD_EPSILON} if norm == "gn+ws" else {}


def compare(module, model, x):
    with torch.no_grad():
        want = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(model(x, training=False)).transpose(0, 3, 1, 2)
    assert got.shape == want.shape
    assert_close(got, want, "output")


@pytest.mark.parametrize("norm", ["gn", "gn+ws"])
@pytest.mark.parametrize("avg_down,strides,size", [(False, 2, 9), (True, 2, 9), (True, 2, 8)])
def test_block_equals_timm_preact_bottleneck(rng, norm, avg_down, strides, size):
    conv, norm_act = timm_layers(norm)
    projection = (
        timm.models.resnetv2.DownsampleAvg if avg_down else timm.models.resnetv2.DownsampleConv
    )
    block = timm.models.resnetv2.PreActBottleneck(
        32, 64, stride=strides, conv_layer=conv, norm_layer=norm_act, proj_layer=projection
    )
    randomize(block, rng)

    def build(builder, x):
        name = "res3_block1"
        return resnetv2.preact_bottleneck(
            builder, x, 64, strides, name, True, avg_down, ws_options(norm)
        )

    model = zoo_piece(norm, (size, size, 32), build)
    copy_from_torch(block, model, BLOCK_UNITS, prefix="res3_block1_")
    compare(block, model, rng.standard_normal((2, size, size, 32)).astype(np.float32))


@pytest.mark.parametrize("kind,timm_stem", [("bit", "fixed"), ("deep", "deep")])
@pytest.mark.parametrize("size", [31, 32])
def test_stems_equal_timm_and_their_paddings_matter(rng, kind, timm_stem, size):
    conv, norm_act = timm_layers("gn+ws")
    stem = timm.models.resnetv2.create_resnetv2_stem(
        3, 32, timm_stem, conv_layer=conv, norm_layer=norm_act
    )
    randomize(stem, rng)
    model = zoo_piece(
        "gn+ws", (size, size, 3), lambda b, x: resnetv2.stem(b, x, kind, 32, ws_options("gn+ws"))
    )
    copy_from_torch(stem, model, STEM_UNITS)
    x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    compare(stem, model, x)
    # The pool sees un-normalized maps: torch's -inf padding (timm's '' and
    # 'deep' stems) and BiT's zeros ('fixed') differ, and the test sees it.
    other = "deep_fixed" if kind == "deep" else ""
    wrong = timm.models.resnetv2.create_resnetv2_stem(
        3, 32, other, conv_layer=conv, norm_layer=norm_act
    )
    wrong.load_state_dict(stem.state_dict())
    with pytest.raises(AssertionError, match="relative difference"):
        compare(wrong.eval(), model, x)


def _branch_and_block(norm, zero_init):
    def build(builder, x):
        return resnetv2.preact_bottleneck(builder, x, 64, 1, "res2_block1", True, False, {})

    model = zoo_piece(norm, (6, 6, 32), build, zero_init)
    add = model.get_layer("res2_block1_add")
    return keras.Model(model.input, [add.input[1], add.output])


@pytest.mark.parametrize("norm", ["gn", "gn+ws", "wn", "bn"])
def test_zero_init_starts_each_branch_at_zero_and_one_step_moves_it(rng, norm):
    x = rng.standard_normal((2, 6, 6, 32)).astype(np.float32)
    assert np.abs(_branch_and_block(norm, False)(x, training=False)[0]).max() > 0
    model = _branch_and_block(norm, True)
    np.testing.assert_array_equal(model(x, training=False)[0], 0.0)
    # Not frozen (a zero γ before the ReLU would be): one SGD step on a
    # random projection of the block's output moves the branch off zero.
    target = tf.constant(rng.standard_normal((2, 6, 6, 64)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True)[1] * target)
    grads = tape.gradient(loss, model.trainable_variables)
    keras.optimizers.SGD(0.01).apply(grads, model.trainable_variables)
    assert np.abs(model(x, training=False)[0]).max() > 0


@pytest.fixture(scope="module")
def bit_model():
    """resnetv2_50 with GN+WS, built as gn-train builds ``--model``."""
    config = config_lib.TrainConfig(
        model="resnetv2_50", norm="gn+ws", groups=32, zero_init_residual=False
    )
    preprocessing = {"image_size": (64, 64), "num_classes": 1000, "channels": 3}
    classify.check_model_name(config.model, config.norm)
    return classify.build_zoo_model(config, preprocessing)


@pytest.fixture(scope="module")
def deep_model():
    return models.build(
        "resnetv2_50d", norm="gn", input_shape=(64, 64, 3), zero_init_residual=False
    )


def _timm_count(name):
    network = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in network.parameters())


def test_parameter_counts_equal_timm(bit_model, deep_model):
    assert bit_model.count_params() == _timm_count("resnetv2_50x1_bit") == 25_549_352
    assert deep_model.count_params() == _timm_count("resnetv2_50d_gn") == 25_568_584
    assert not bit_model.non_trainable_weights and not deep_model.non_trainable_weights


def test_names_are_deterministic(bit_model, deep_model):
    for model, stem in ((bit_model, ["conv1_conv", "pool1"]), (deep_model, ["conv3_conv"])):
        names = {layer.name for layer in model.layers}
        expected = stem + ["res2_block1_a_norm", "res3_block1_proj_conv", "res5_block3_c_conv"]
        expected += ["C2", "C5", "final_norm", "avg_pool", "logits"]
        assert set(expected) <= names
    assert "res3_block1_proj_pool" in {layer.name for layer in deep_model.layers}
    assert list(models.feature_endpoints(deep_model)) == ["C2", "C3", "C4", "C5"]


def test_channels_first_equals_channels_last(rng, deep_model):
    first = models.build(
        "resnetv2_50d",
        norm="gn",
        input_shape=(3, 64, 64),
        zero_init_residual=False,
        data_format="channels_first",
    )
    for layer in first.layers:
        if layer.weights:
            layer.set_weights(deep_model.get_layer(layer.name).get_weights())
    x = random_images(rng, 64)
    assert_close(
        np.asarray(first(np.moveaxis(x, -1, 1), training=False)),
        np.asarray(deep_model(x, training=False)),
        "logits",
    )


def test_gn_ws_trains_one_step(rng, bit_model):
    check_forward_and_training(bit_model, random_images(rng, 64), 1000, rng)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"norm": "gn", "ws_epsilon": 1e-8}, "applies only to weight-standardized convs"),
        ({"norm": "gn+ws", "ws_epsilon": 0.0}, "`ws_epsilon` must be a positive number"),
        ({"norm": "gn", "width_multiplier": 0}, "width_multiplier=0"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        models.build("resnetv2_50", input_shape=(64, 64, 3), **options)


def test_round_trips_through_keras_file(rng, tmp_path, deep_model):
    # Last: it randomizes the shared model's weights (γ, β too).
    randomize_keras(deep_model, rng)
    check_keras_file_round_trip(deep_model, random_images(rng, 64), tmp_path / "r50d.keras")
