"""The Mask R-CNN model: Table 5 configs, names, saving, losses, training.

Tiny models (ResNet-18 at quarter width, 64×64 inputs, 16-channel FPN) keep
each test to seconds. Losses are checked against float64 NumPy written here.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from detection_helpers import TINY, tiny_config

from gn_keras import GroupNormalization, models
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.models.detection import MaskRCNN, losses, mask_rcnn_losses, ops

# Paper Table 5: (backbone, box head) norms with a 4conv1fc head; GN heads include the mask head.
TABLE5_ROWS = [("frozen_bn", "none"), ("frozen_bn", "gn"), ("gn", "gn")]


def norm_types(model):
    return {type(layer) for layer in model.layers}


@pytest.mark.parametrize("backbone_norm,head_norm", TABLE5_ROWS)
def test_table5_rows_put_each_norm_in_its_part(backbone_norm, head_norm):
    config = tiny_config(
        backbone_norm=backbone_norm,
        box_head="4conv1fc",
        box_head_norm=head_norm,
        mask_head_norm=head_norm,
    )
    model = MaskRCNN(config)
    backbone_kind = FrozenBatchNormalization if backbone_norm == "frozen_bn" else GroupNormalization
    assert backbone_kind in norm_types(model.backbone)
    for head in (model.box_head, model.mask_head):
        assert (GroupNormalization in norm_types(head)) == (head_norm == "gn")
    assert not any(isinstance(layer, GroupNormalization) for layer in model.fpn.layers)
    assert len([layer for layer in model.box_head.layers if "conv" in layer.name]) == 4


def test_two_fc_head_has_two_hidden_fc_layers_and_no_convs():
    model = MaskRCNN(tiny_config(backbone_norm="gn", box_head="2fc"))
    names = [layer.name for layer in model.box_head.layers]
    assert "box_fc1" in names and "box_fc2" in names
    assert not any(name.startswith("box_conv") for name in names)


def test_layer_names_are_deterministic_and_config_round_trips():
    config = tiny_config(backbone_norm="gn", fpn_norm="gn")
    first, second = MaskRCNN(config), MaskRCNN(config)
    assert [v.path for v in first.weights] == [v.path for v in second.weights]
    rebuilt = MaskRCNN.from_config(first.get_config())
    assert rebuilt.config == config


def test_keras_file_round_trip_gives_equal_detections(rng, tmp_path):
    model = MaskRCNN(tiny_config(backbone_norm="gn", box_head="4conv1fc", box_head_norm="gn"))
    for variable in model.trainable_variables:
        variable.assign(variable + rng.normal(0, 0.01, variable.shape).astype("float32"))
    images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    model.save(tmp_path / "mask_rcnn.keras")
    restored = keras.saving.load_model(tmp_path / "mask_rcnn.keras")
    want, got = model(images), restored(images)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5)


def test_detections_have_valid_shapes_and_ranges(rng):
    model = MaskRCNN(tiny_config(backbone_norm="gn"))
    images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    found = model({"images": images, "image_sizes": np.array([[64, 64], [48, 40]], np.int32)})
    assert found["boxes"].shape == (2, 8, 4) and found["masks"].shape == (2, 8, 28, 28)
    boxes = found["boxes"].numpy()
    assert boxes[1, :, 2].max() <= 48 + 1e-4 and boxes[1, :, 3].max() <= 40 + 1e-4
    masks = found["masks"].numpy()
    assert masks.min() >= 0 and masks.max() <= 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(config="resnet50"), "argument `config`"),
        (dict(config=dict(TINY, backbone="resnet9")), "field `backbone`"),
        (dict(config=dict(TINY, box_head_norm="group")), "field `box_head_norm`"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskRCNN(**kwargs)


def test_a_backbone_without_endpoints_is_refused():
    plain = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="argument `backbone`"):
        MaskRCNN(tiny_config(), backbone=plain)


def test_a_given_backbone_is_used():
    network = models.build(
        "resnet18_narrow",
        norm="gn",
        groups=4,
        include_top=False,
        pooling=None,
        input_shape=(64, 64, 3),
    )
    backbone = models.feature_extractor(network, ("C2", "C3", "C4", "C5"))
    model = MaskRCNN(tiny_config(), backbone=backbone)
    assert model.backbone is backbone


def sigmoid_bce(labels, logits):
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def smooth_l1(x, beta):
    return np.where(np.abs(x) < beta, 0.5 * x**2 / beta, np.abs(x) - 0.5 * beta)


def test_rpn_losses_match_numpy(rng):
    levels = {"2": (4, 4), "3": (2, 2)}
    scores = {k: rng.normal(size=(2, h, w, 3)) for k, (h, w) in levels.items()}
    boxes = {k: rng.normal(size=(2, h, w, 12)) for k, (h, w) in levels.items()}
    labels = {k: rng.integers(-1, 2, (2, h, w, 3)).astype(float) for k, (h, w) in levels.items()}
    targets = {k: rng.normal(size=(2, h, w, 12)) for k, (h, w) in levels.items()}
    score_loss, box_loss = losses.rpn_losses(
        *(
            {k: tf.constant(v, tf.float32) for k, v in d.items()}
            for d in (scores, boxes, labels, targets)
        )
    )
    for image in range(2):
        s = np.concatenate([scores[k][image].ravel() for k in levels])
        t = np.concatenate([labels[k][image].ravel() for k in levels])
        d = np.concatenate([boxes[k][image].reshape(-1, 4) for k in levels])
        g = np.concatenate([targets[k][image].reshape(-1, 4) for k in levels])
        sampled = t >= 0
        np.testing.assert_allclose(
            score_loss[image], sigmoid_bce(t[sampled], s[sampled]).mean(), rtol=1e-5
        )
        l1 = smooth_l1(d - g, 1 / 9).sum(axis=1)
        np.testing.assert_allclose(box_loss[image], l1[t == 1].sum() / sampled.sum(), rtol=1e-5)


def test_roi_and_mask_losses_match_numpy(rng):
    logits = rng.normal(size=(2, 6, 4))
    deltas = rng.normal(size=(2, 6, 16))
    classes = rng.integers(0, 4, (2, 6))
    targets = rng.normal(size=(2, 6, 4))
    class_loss, box_loss = losses.roi_losses(
        tf.constant(logits, tf.float32),
        tf.constant(deltas, tf.float32),
        tf.constant(classes),
        tf.constant(targets, tf.float32),
    )
    mask_logits = rng.normal(size=(2, 5, 7, 7))
    mask_classes = rng.integers(0, 3, (2, 5))
    mask_targets = rng.integers(0, 2, (2, 5, 7, 7)).astype(float)
    mask = losses.mask_loss(
        tf.constant(mask_logits, tf.float32),
        tf.constant(mask_classes),
        tf.constant(mask_targets, tf.float32),
    )
    for i in range(2):
        log_p = logits[i] - np.log(np.exp(logits[i]).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(
            class_loss[i], -log_p[np.arange(6), classes[i]].mean(), rtol=1e-5
        )
        own = deltas[i].reshape(6, 4, 4)[np.arange(6), classes[i]]
        l1 = smooth_l1(own - targets[i], 1.0).sum(axis=1)
        np.testing.assert_allclose(box_loss[i], l1[classes[i] > 0].sum() / 6, rtol=1e-5)
        fg = mask_classes[i] > 0
        per_roi = sigmoid_bce(mask_targets[i], mask_logits[i]).mean(axis=(1, 2))
        expected = per_roi[fg].sum() / max(fg.sum(), 1)
        np.testing.assert_allclose(mask[i], expected, rtol=1e-5)


def synthetic_batch(model, rng):
    """Two images with square objects and exact box-cropped masks."""
    config = model.config
    gt_boxes = -np.ones((2, 3, 4), np.float32)
    gt_classes = -np.ones((2, 3), np.int32)
    images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32) * 0.1
    for image, count in ((0, 2), (1, 1)):
        for row in range(count):
            y, x = rng.integers(2, 30, 2)
            side = int(rng.integers(16, 30))
            gt_boxes[image, row] = [y, x, y + side, x + side]
            gt_classes[image, row] = row + 1
            images[image, y : y + side, x : x + side, row] += 2.0
    score_targets, box_targets = {}, {}
    for image in range(2):
        real = gt_classes[image] > 0
        scores, boxes = ops.rpn_targets(
            config, model.anchors, gt_boxes[image][real], gt_classes[image][real]
        )
        for level in scores:
            score_targets.setdefault(level, []).append(scores[level])
            box_targets.setdefault(level, []).append(boxes[level])
    return {
        "images": tf.constant(images),
        "image_sizes": tf.constant([[64, 64], [64, 64]]),
        "gt_boxes": tf.constant(gt_boxes),
        "gt_classes": tf.constant(gt_classes),
        "gt_masks": tf.ones((2, 3, 16, 16)),
        "rpn_score_targets": {k: tf.stack(v) for k, v in score_targets.items()},
        "rpn_box_targets": {k: tf.stack(v) for k, v in box_targets.items()},
    }


def test_training_steps_reach_every_variable_and_lower_the_loss(rng):
    # Table 5's middle row: BN* backbone, GN heads.
    model = MaskRCNN(
        tiny_config(
            backbone_norm="frozen_bn", box_head="4conv1fc", box_head_norm="gn", mask_head_norm="gn"
        )
    )
    batch = synthetic_batch(model, rng)
    optimizer = keras.optimizers.SGD(0.02, momentum=0.9)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            parts = mask_rcnn_losses(model(batch, training=True), batch)
            loss = tf.add_n([tf.reduce_mean(v) for v in parts.values()])
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss, [g is None for g in gradients]

    first, missing = step()
    assert not any(missing)
    for _ in range(15):
        last, _ = step()
    assert np.isfinite(last) and last < 0.8 * first


def test_mixed_bfloat16_keeps_boxes_and_losses_in_float32(rng):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = MaskRCNN(tiny_config(backbone_norm="gn", box_head="4conv1fc", box_head_norm="gn"))
        batch = synthetic_batch(model, rng)
        outputs = model(batch, training=True)  # eager: graph mode is tested above
        parts = mask_rcnn_losses(outputs, batch)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.box_head.get_layer("box_conv1").compute_dtype == "bfloat16"
    assert outputs["roi_box_targets"].dtype == tf.float32
    assert all(np.all(np.isfinite(v)) for v in parts.values())
