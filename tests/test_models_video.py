"""ResNet-50 I3D: layout, normalization over (T, H, W), training, inflation.

Clips are 4 frames of 32×32 (batch 2). The inflation check is the I3D
"boring video" property: a clip of identical frames through the inflated
model gives the 2D model's logits.
"""

import keras
import numpy as np
import pytest
from gn_reference import group_norm_reference
from test_models import check_forward_and_training
from test_models_saving import check_keras_file_round_trip, randomize

import gn_keras.temporal_padding
from gn_keras import models

FRAMES, SIZE = 4, 32
CLIP_SHAPE = (FRAMES, SIZE, SIZE, 3)
# SlowFast's I3D-R50 (MODEL.ARCH "i3d"), written out block by block.
EXPECTED_TEMPORAL_KERNELS = {
    "conv1": 5,
    **{f"res2_block{i}_a": 3 for i in (1, 2, 3)},
    **{f"res3_block{i}_a": k for i, k in zip(range(1, 5), (3, 1, 3, 1))},
    **{f"res4_block{i}_a": k for i, k in zip(range(1, 7), (3, 1, 3, 1, 3, 1))},
    **{f"res5_block{i}_a": k for i, k in zip(range(1, 4), (1, 3, 1))},
}


def _clip(rng, batch=2):
    return rng.normal(size=(batch,) + CLIP_SHAPE).astype("float32")


def test_temporal_kernels_follow_the_slowfast_i3d_layout():
    model = models.build("resnet50_i3d", input_shape=CLIP_SHAPE)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    assert len(convs) == 53
    for conv in convs:
        unit = conv.name[: -len("_conv")]
        assert conv.kernel_size[0] == EXPECTED_TEMPORAL_KERNELS.get(unit, 1), conv.name
        assert conv.strides[0] == 1, conv.name
    shapes = {name: tuple(t.shape) for name, t in models.feature_endpoints(model).items()}
    assert shapes == {
        "C2": (None, 4, 8, 8, 256),
        "C3": (None, 2, 4, 4, 512),
        "C4": (None, 2, 2, 2, 1024),
        "C5": (None, 2, 1, 1, 2048),
    }


def test_group_norm_statistics_span_time_height_and_width(rng):
    model = models.build("resnet50_i3d", norm="gn", input_shape=CLIP_SHAPE)
    norm = model.get_layer("conv1_norm")
    gamma, beta = rng.uniform(0.5, 2, 64), rng.normal(size=64)
    norm.set_weights([gamma.astype("float32"), beta.astype("float32")])
    probe = keras.Model(model.input, [norm.input, norm.output])
    before, after = probe(_clip(rng), training=False)
    expected = group_norm_reference(np.asarray(before), gamma, beta, groups=32)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", ["gn", "bn", "wn"])
def test_i3d_builds_runs_and_trains(rng, norm):
    model = models.build(
        "resnet50_i3d", norm=norm, num_classes=4, input_shape=CLIP_SHAPE, zero_init_residual=False
    )
    check_forward_and_training(model, _clip(rng), 4, rng)


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_inflated_model_on_a_boring_clip_gives_the_2d_logits(rng, norm):
    model2d = models.build("resnet50", norm=norm, num_classes=6, input_shape=(SIZE, SIZE, 3))
    randomize(model2d, rng)
    model3d = models.build("resnet50_i3d", norm=norm, num_classes=6, input_shape=CLIP_SHAPE)
    assert models.inflate_2d_to_3d(model2d, model3d) is model3d
    images = rng.normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    boring = np.repeat(images[:, None], FRAMES, axis=1)
    logits2d = np.asarray(model2d(images, training=False))
    np.testing.assert_allclose(
        model3d(boring, training=False), logits2d, rtol=1e-4, atol=1e-4 * np.abs(logits2d).max()
    )
    kernel2d = model2d.get_layer("res2_block1_a_conv").kernel.numpy()
    kernel3d = model3d.get_layer("res2_block1_a_conv").kernel.numpy()
    np.testing.assert_allclose(kernel3d, np.stack([kernel2d / 3] * 3), rtol=1e-6)


def test_zero_temporal_padding_breaks_the_boring_clip_identity(rng):
    # Why replicate padding is the default: with SlowFast's zero padding the
    # end frames see only part of each temporal kernel.
    model2d = models.build("resnet50", num_classes=6, input_shape=(SIZE, SIZE, 3))
    randomize(model2d, rng)
    model3d = models.build(
        "resnet50_i3d", num_classes=6, input_shape=CLIP_SHAPE, temporal_padding="zeros"
    )
    models.inflate_2d_to_3d(model2d, model3d)
    images = rng.normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    boring = np.repeat(images[:, None], FRAMES, axis=1)
    logits2d = np.asarray(model2d(images, training=False))
    gap = np.abs(np.asarray(model3d(boring, training=False)) - logits2d).max()
    assert gap > 1e-2 * np.abs(logits2d).max()


def test_inflation_rejects_mismatched_models():
    model2d = models.build("resnet50", norm="gn", num_classes=6, input_shape=(SIZE, SIZE, 3))
    model3d = models.build("resnet50_i3d", norm="bn", num_classes=6, input_shape=CLIP_SHAPE)
    with pytest.raises(ValueError, match="conv1_norm.*GroupNormalization.*BatchNormalization"):
        models.inflate_2d_to_3d(model2d, model3d)
    other = models.build("resnet18", norm="bn", num_classes=6, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="same weighted layers"):
        models.inflate_2d_to_3d(other, model3d)


@pytest.mark.parametrize("norm,extra", [("wn", {}), ("gn+ws", {"temporal_padding": "zeros"})])
def test_i3d_round_trips_through_keras_file(rng, tmp_path, norm, extra):
    model = models.build("resnet50_i3d", norm=norm, num_classes=5, input_shape=CLIP_SHAPE, **extra)
    randomize(model, rng)
    check_keras_file_round_trip(model, _clip(rng), tmp_path / "i3d.keras")


# ResNet-20 I3D, the CPU-sized video model; 8 frames so res3/res4 keep 4.
SMALL_CLIP = (8, 16, 16, 3)
SMALL = {"groups": 8}  # GN on its 16-channel res2


def _small_clip(rng, batch=2):
    return rng.normal(size=(batch,) + SMALL_CLIP).astype("float32")


def test_resnet20_i3d_layout():
    model = models.build("resnet20_i3d", input_shape=SMALL_CLIP, **SMALL)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    spanning = sorted(c.name for c in convs if c.kernel_size[0] == 3)
    expected = ["conv1_conv"] + [f"res{s}_block{i}_a_conv" for s in (2, 3, 4) for i in (1, 2, 3)]
    assert spanning == sorted(expected)
    assert all(c.kernel_size[0] == 1 for c in convs if c.name not in expected)
    shapes = {name: tuple(t.shape) for name, t in models.feature_endpoints(model).items()}
    assert shapes == {
        "C2": (None, 8, 16, 16, 16),
        "C3": (None, 4, 8, 8, 32),
        "C4": (None, 4, 4, 4, 64),
    }
    model2d = models.build("resnet20", input_shape=(16, 16, 3), **SMALL)
    assert model.count_params() > model2d.count_params()


@pytest.mark.parametrize("norm", ["gn", "bn", "ln", "in", "gn+ws"])
def test_resnet20_i3d_builds_runs_and_trains(rng, norm):
    model = models.build(
        "resnet20_i3d",
        norm=norm,
        num_classes=3,
        input_shape=SMALL_CLIP,
        zero_init_residual=False,
        **SMALL,
    )
    check_forward_and_training(model, _small_clip(rng), 3, rng)


@pytest.mark.parametrize("norm,width", [("gn", 2), ("bn", 1)])
def test_inflated_resnet20_on_a_boring_clip_gives_the_2d_logits(rng, norm, width):
    shape2d = SMALL_CLIP[1:]
    kwargs = {"norm": norm, "num_classes": 5, "width_multiplier": width, **SMALL}
    model2d = models.build("resnet20", input_shape=shape2d, **kwargs)
    randomize(model2d, rng)
    model3d = models.build("resnet20_i3d", input_shape=SMALL_CLIP, **kwargs)
    models.inflate_2d_to_3d(model2d, model3d)
    images = rng.normal(size=(2,) + shape2d).astype("float32")
    boring = np.repeat(images[:, None], SMALL_CLIP[0], axis=1)
    logits2d = np.asarray(model2d(images, training=False))
    np.testing.assert_allclose(
        model3d(boring, training=False), logits2d, rtol=1e-4, atol=1e-4 * np.abs(logits2d).max()
    )


def test_resnet20_i3d_checks_width_multiplier():
    with pytest.raises(ValueError, match="width_multiplier.*got width_multiplier=0"):
        models.build("resnet20_i3d", width_multiplier=0)


def test_resnet20_i3d_round_trips_through_keras_file(rng, tmp_path):
    model = models.build("resnet20_i3d", num_classes=4, input_shape=SMALL_CLIP, **SMALL)
    randomize(model, rng)
    check_keras_file_round_trip(model, _small_clip(rng), tmp_path / "small.keras")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_video_max_pooling_equals_keras_pooling_in_float32(rng, dtype):
    # float16 has no MaxPool3D CPU kernel: the layer pools in float32, exactly.
    x = rng.normal(size=(2, 5, 7, 6, 3)).astype("float32")
    narrow = keras.ops.cast(x, dtype)
    layer = gn_keras.temporal_padding.VideoMaxPooling3D((2, 3, 3), (1, 2, 2), "valid", dtype=dtype)
    reference = keras.layers.MaxPooling3D((2, 3, 3), (1, 2, 2), "valid")
    pooled = layer(narrow)
    assert keras.backend.standardize_dtype(pooled.dtype) == dtype
    expected = reference(keras.ops.cast(narrow, "float32"))
    np.testing.assert_array_equal(keras.ops.cast(pooled, "float32"), expected)
    assert layer.get_config()["pool_size"] == (2, 3, 3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
# float16 convs on a CPU run on a slow emulated path, so the clips are tiny.
@pytest.mark.parametrize(
    "name,shape", [("resnet50_i3d", (2, 16, 16, 3)), ("resnet20_i3d", (2, 8, 8, 3))]
)
def test_every_3d_model_trains_under_mixed_precision(rng, policy, name, shape):
    # Before VideoMaxPooling3D, mixed_float16 failed on a CPU at the stem's
    # pool ("Could not find device for node MaxPool3D[T=DT_HALF]").
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = models.build(
            name, num_classes=3, input_shape=shape, zero_init_residual=False, groups=8
        )
    finally:
        keras.config.set_dtype_policy(previous)
    x = rng.normal(size=(2,) + shape).astype("float32")
    assert keras.backend.standardize_dtype(model(x).dtype) == policy.split("_")[1]
    check_forward_and_training(model, x, 3, rng)
