"""The C4 Mask R-CNN (paper Table 4): anchors, the shared res5 head, config refusals, transfer,
and one tiny gn-detect run through training, --eval_only's evaluation and the SavedModel export.

References: anchors in NumPy from their definition (sizes anchor_scale·2^l on a
stride-16 grid); the res5 head against the zoo network's own conv5 on a 224 px
image, whose C4 is exactly 14×14, with the box classifier in float64 NumPy;
transferred weights against the source model's arrays.
"""

import json

import keras
import numpy as np
import pytest
from detection_helpers import TINY

from gn_keras import models
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.layer import GroupNormalization
from gn_keras.models.detection import MaskRCNN, MaskRCNNConfig, mask_rcnn_losses, ops
from gn_keras.models.detection.config import FPN_ONLY_FIELDS
from gn_keras.train import detect
from gn_keras.train.detection import config as config_lib
from gn_keras.train.detection import transfer

C4_TINY = {k: v for k, v in TINY.items() if k not in ("fpn_channels", "box_head_fc_units")}


def c4_config(**changes):
    return MaskRCNNConfig(**{**C4_TINY, "architecture": "c4", "mask_size": 14, **changes})


def test_anchors_put_every_size_on_the_stride_16_map():
    config = c4_config(anchor_scale=8.0)
    anchors = ops.multilevel_anchors(config)
    assert list(anchors) == ["4"]
    got = np.asarray(anchors["4"]).reshape(4, 4, 15, 4)
    ratios = config.aspect_ratios
    for y in range(4):
        for x in range(4):
            cy, cx = 16 * y + 8, 16 * x + 8
            for a in range(15):
                size = 8.0 * 2 ** (2 + a // 3)  # 32, 64, ..., 512
                ratio = ratios[a % 3]
                half_h, half_w = size / np.sqrt(ratio) / 2, size * np.sqrt(ratio) / 2
                want = [cy - half_h, cx - half_w, cy + half_h, cx + half_w]
                np.testing.assert_allclose(got[y, x, a], want, rtol=1e-6, atol=1e-4)
    assert config.num_anchors == 15


@pytest.mark.parametrize(
    "norm,kind",
    [
        ("frozen_bn", FrozenBatchNormalization),
        ("gn", GroupNormalization),
        ("ln", GroupNormalization),
    ],
)
def test_res5_head_is_the_backbones_conv5_with_its_norm(norm, kind, rng):
    model = MaskRCNN(c4_config(backbone_norm=norm))
    for variable in model.weights:  # away from init (zero γ, zero biases) so errors show
        variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.2 + 0.5)
    backbone_layers = {layer.name: layer for layer in model.backbone.layers}
    res5 = [layer for layer in model.box_head.layers if layer.name.startswith("res5")]
    assert res5 and all(backbone_layers[layer.name] is layer for layer in res5)
    assert all(
        backbone_layers[layer.name] is layer
        for layer in model.mask_head.layers
        if layer.name.startswith("res5")
    )
    assert any(isinstance(layer, kind) for layer in res5)
    assert not any(layer.name.startswith("res4") for layer in model.box_head.layers)
    # The zoo network at 224 px has a 14×14 C4: its own conv5 gives the head's input to the fc.
    zoo = models.feature_extractor(
        models.build(
            "resnet18_narrow",
            norm=norm,
            groups=4,
            include_top=False,
            pooling=None,
            input_shape=(224, 224, 3),
        )
    )
    for layer in zoo.layers:
        if layer.weights:
            layer.set_weights(backbone_layers[layer.name].get_weights())
    features = zoo(rng.normal(size=(2, 224, 224, 3)).astype("float32"))
    logits, deltas = model.box_head(features["C4"])
    pooled = np.asarray(features["C5"], np.float64).mean(axis=(1, 2))
    kernel, bias = (
        np.asarray(w, np.float64) for w in model.box_head.get_layer("box_classes").weights
    )
    np.testing.assert_allclose(logits, pooled @ kernel + bias, rtol=1e-4, atol=1e-4)
    assert deltas.shape == (2, 16) and model.mask_head(features["C4"]).shape == (2, 14, 14, 3)


def test_detections_are_14x14_masks_and_training_reaches_every_variable(rng):
    model = MaskRCNN(c4_config(backbone_norm="gn"))
    images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    found = model({"images": images, "image_sizes": np.array([[64, 64], [48, 40]], np.int32)})
    assert found["masks"].shape == (2, 8, 14, 14) and found["boxes"].shape == (2, 8, 4)
    assert found["boxes"].numpy()[1, :, 2].max() <= 48 + 1e-4
    gt_boxes = np.array([[[4, 6, 40, 30], [20, 24, 60, 62]]] * 2, np.float32)
    gt_classes = np.array([[1, 2]] * 2, np.int32)
    scores, boxes = zip(
        *(
            ops.rpn_targets(model.config, model.anchors, gt_boxes[i], gt_classes[i])
            for i in range(2)
        )
    )
    batch = {
        "images": images,
        "image_sizes": np.array([[64, 64]] * 2, np.int32),
        "gt_boxes": gt_boxes,
        "gt_classes": gt_classes,
        "gt_masks": rng.uniform(size=(2, 2, 16, 16)).astype("float32") > 0.3,
        "rpn_score_targets": {"4": np.stack([s["4"] for s in scores])},
        "rpn_box_targets": {"4": np.stack([b["4"] for b in boxes])},
    }
    batch["gt_masks"] = batch["gt_masks"].astype("float32")
    import tensorflow as tf

    with tf.GradientTape() as tape:
        parts = mask_rcnn_losses(model(batch, training=True), batch)
        loss = tf.add_n([tf.reduce_mean(v) for v in parts.values()])
    gradients = tape.gradient(loss, model.trainable_variables)
    assert not [v.path for v, g in zip(model.trainable_variables, gradients) if g is None]
    assert all(np.isfinite(v).all() for v in parts.values())


@pytest.mark.parametrize("field", FPN_ONLY_FIELDS)
def test_fpn_only_fields_are_refused_by_name(field):
    value = {
        "fpn_norm": "gn",
        "box_head": "4conv1fc",
        "box_head_norm": "gn",
        "mask_head_norm": "gn",
    }.get(field, 32)
    with pytest.raises(ValueError, match=rf"`{field}` must be its default .* architecture='c4'"):
        c4_config(**{field: value}).validate()


def test_c4_sizes_and_architecture_are_checked():
    for changes, field in (
        ({"mask_size": 28}, "mask_size"),
        ({"box_roi_size": 6}, "box_roi_size"),
        ({"mask_roi_size": 13, "mask_size": 13}, "mask_roi_size"),
        ({"architecture": "c5"}, "architecture"),
    ):
        with pytest.raises(ValueError, match=f"`{field}`"):
            c4_config(**changes).validate()


def test_gn_detect_flags_drop_the_main_jobs_fpn_settings_but_refuse_explicit_ones():
    config = config_lib.make_config(architecture="c4")
    model_config = config_lib.model_config(config).validate()
    assert (model_config.fpn_norm, model_config.box_head, model_config.mask_size) == (
        "none",
        "2fc",
        14,
    )
    with pytest.raises(ValueError, match=r"--box_head_norm: .*architecture='c4'"):
        config_lib.make_config(architecture="c4", box_head_norm="bn")


@pytest.mark.parametrize(
    "norm,kind", [("bn", FrozenBatchNormalization), ("gn", GroupNormalization)]
)
def test_a_trained_keras_file_starts_the_res5_head_too(norm, kind, tmp_path, rng):
    trained = models.build(
        "resnet18_narrow", norm=norm, groups=4, num_classes=4, input_shape=(32, 32, 3)
    )
    for variable in trained.weights:
        values = (
            rng.uniform(0.5, 1.5, variable.shape)
            if variable.name in ("gamma", "moving_variance")
            else rng.normal(size=variable.shape) * 0.1
        )
        variable.assign(values.astype("float32"))
    trained.save(tmp_path / "trained.keras")
    prep = {"image_size": [32, 32], "channels": 3, "mean": [1.0, 2, 3], "std": [4.0, 5, 6]}
    json.dump({**prep, "num_classes": 4}, open(tmp_path / "preprocessing.json", "w"))
    config = config_lib.make_config(
        architecture="c4",
        trained_model=str(tmp_path / "trained.keras"),
        image_size=(64, 64),
        short_side=64,
        max_side=64,
        groups=4,
    )
    start = transfer.backbone_start(config)
    model = MaskRCNN(start.model_config, backbone=start.backbone_fn(start.model_config))
    res5 = [
        layer for layer in model.box_head.layers if layer.name.startswith("res5") and layer.weights
    ]
    assert len(res5) == 10 and all(
        isinstance(model.box_head.get_layer(n), kind)
        for n in ("res5_block1_a_norm", "res5_block2_b_norm")
    )
    for head in (model.box_head, model.mask_head, model.backbone):
        for layer in head.layers:
            if layer.weights and layer.name.startswith(("conv1", "res")):
                for mine, theirs in zip(
                    layer.weights, trained.get_layer(layer.name).weights, strict=True
                ):
                    np.testing.assert_array_equal(mine, theirs)


def test_keras_applications_conv5_becomes_the_bn_star_res5_head(tmp_path, rng):
    network = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    for variable in network.weights:
        if variable.name in ("gamma", "moving_variance"):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        else:
            variable.assign((rng.normal(size=variable.shape) * 0.05).astype("float32"))
    path = str(tmp_path / "r50.weights.h5")
    network.save_weights(path)
    config = config_lib.make_config(
        architecture="c4",
        backbone="resnet50",
        trained_model=f"keras.applications:ResNet50:{path}",
        image_size=(64, 64),
        short_side=64,
        max_side=64,
    )
    start = transfer.backbone_start(config)
    model = MaskRCNN(start.model_config, backbone=start.backbone_fn(start.model_config))
    conv5 = [layer for layer in model.mask_head.layers if layer.name.startswith("conv5")]
    assert len([layer for layer in conv5 if layer.weights]) == 3 * 6 + 2  # 3 blocks + projection
    assert isinstance(model.box_head.get_layer("conv5_block3_3_bn"), FrozenBatchNormalization)
    for layer in conv5:
        for mine, theirs in zip(layer.weights, network.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(mine, theirs)


@pytest.fixture(scope="module")
def c4_run(tmp_path_factory):
    """A tiny gn-detect --architecture=c4 run in process: 1 epoch of 3 steps, export verified."""
    model_dir = str(tmp_path_factory.mktemp("c4") / "run")
    config = config_lib.make_config(
        architecture="c4",
        model_dir=model_dir,
        shapes_train_images=6,
        shapes_val_images=3,
        epochs=1,
        steps_per_epoch=3,
        lr_schedule="constant",
        warmup_epochs=0.0,
        rois_per_image=16,
        masks_per_image=4,
    )
    return config, detect.train(config)


def test_gn_detect_c4_trains_evaluates_and_exports(c4_run):
    config, results = c4_run
    final = results["epochs"][-1]["val"]
    assert {"bbox_AP", "segm_AP"} <= set(final)
    loaded = keras.saving.load_model(f"{config.model_dir}/last.keras", compile=False)
    assert loaded.config.architecture == "c4"
    # --eval_only's path restores the last checkpoint and gives the final epoch's figures.
    metrics, epoch, _ = detect.evaluate(config)
    assert epoch is not None
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-6)
    # The export was reloaded and checked against Keras by the run; its masks are 14×14.
    import tensorflow as tf

    serving = tf.saved_model.load(f"{config.model_dir}/saved_model").signatures["serving_default"]
    out = serving(images=tf.zeros([1, 50, 70, 3], tf.uint8) + 90)
    assert out["masks"].shape[2:] == (14, 14)
