"""Mask R-CNN's box machinery against NumPy references written here.

IoU, the (10, 10, 5, 5) box coder, anchors, RoIAlign (bilinear at bin
centres), RPN and RoI sampling rules, mask targets (against pycocotools
rasterizing the polygon in the RoI's frame) and test-time per-class NMS.
"""

import numpy as np
import pytest
import tensorflow as tf
from official.vision.ops import box_ops
from pycocotools import mask as mask_utils

from gn_keras.models.detection import MaskRCNNConfig, ops

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def random_boxes(rng, count, size=64.0):
    corners = rng.uniform(0, size, (count, 2, 2))
    low, high = corners.min(axis=1), corners.max(axis=1) + 1.0
    return np.concatenate([low, high], axis=1)  # ymin, xmin, ymax, xmax


def numpy_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a.astype(np.float64)):
        for j, q in enumerate(b.astype(np.float64)):
            h = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            w = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = h * w
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union
    return out


def numpy_encode(boxes, anchors, weights):
    def centre_size(b):
        h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return b[:, 0] + h / 2, b[:, 1] + w / 2, h, w

    y, x, h, w = centre_size(boxes.astype(np.float64))
    ya, xa, ha, wa = centre_size(anchors.astype(np.float64))
    wy, wx, wh, ww = weights
    return np.stack(
        [wy * (y - ya) / ha, wx * (x - xa) / wa, wh * np.log(h / ha), ww * np.log(w / wa)], axis=1
    )


def test_iou_matches_numpy(rng):
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    got = box_ops.bbox_overlap(tf.constant(a[None], tf.float32), tf.constant(b[None], tf.float32))
    np.testing.assert_allclose(got[0].numpy(), numpy_iou(a, b), atol=1e-5)


def test_box_coder_encodes_like_numpy_and_decodes_back(rng):
    config = MaskRCNNConfig()
    boxes, rois = random_boxes(rng, 20), random_boxes(rng, 20)
    encoded = ops.box_targets(config, tf.constant(rois, tf.float32), tf.constant(boxes, tf.float32))
    np.testing.assert_allclose(
        encoded.numpy(), numpy_encode(boxes, rois, WEIGHTS), rtol=1e-4, atol=1e-4
    )
    decoded = ops.decode(config, encoded, tf.constant(rois, tf.float32))
    np.testing.assert_allclose(decoded.numpy(), boxes, atol=1e-3)


def test_anchors_are_detectron_sizes_and_ratios():
    config = MaskRCNNConfig(image_size=(64, 96))
    anchors = ops.multilevel_anchors(config)
    for level in range(2, 7):
        stride = 2**level
        got = anchors[str(level)].numpy().reshape(-1, 4).astype(np.float64)
        rows, cols = int(np.ceil(64 / stride)), int(np.ceil(96 / stride))
        expected = []
        for r in range(rows):
            for c in range(cols):
                # Centres at the middle of each stride cell (image size over cells).
                cy, cx = (r + 0.5) * 64 / rows, (c + 0.5) * 96 / cols
                for ratio in (0.5, 1.0, 2.0):  # width / height
                    side = 8 * stride  # 32 at P2 .. 512 at P6
                    w, h = side * np.sqrt(ratio), side / np.sqrt(ratio)
                    expected.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
        np.testing.assert_allclose(got, np.array(expected), rtol=1e-5, atol=1e-3)


def numpy_roi_align(feature, box, size):
    """Bilinear sample at each bin centre of ``box`` (feature-map coords)."""
    height, width = feature.shape[:2]
    y0, x0, y1, x1 = box
    out = np.zeros((size, size, feature.shape[2]))
    for i in range(size):
        for j in range(size):
            y = y0 + (i + 0.5) * (y1 - y0) / size
            x = x0 + (j + 0.5) * (x1 - x0) / size
            top, left = int(np.floor(y)), int(np.floor(x))
            bottom, right = min(top + 1, height - 1), min(left + 1, width - 1)
            dy, dx = y - top, x - left
            out[i, j] = (
                feature[top, left] * (1 - dy) * (1 - dx)
                + feature[top, right] * (1 - dy) * dx
                + feature[bottom, left] * dy * (1 - dx)
                + feature[bottom, right] * dy * dx
            )
    return out


def test_roi_align_matches_numpy_bilinear_on_the_right_level(rng):
    image = 256
    features = {
        str(level): rng.normal(size=(1, image // 2**level, image // 2**level, 3)).astype(np.float32)
        for level in range(2, 7)
    }
    # Sides chosen to land on P2 (~40 px), P3 (~90), P4 (~180) and P5 (~250).
    sides = [40.0, 90.0, 180.0, 250.0]
    boxes = []
    for side in sides:
        y, x = rng.uniform(0, image - side - 1, 2)
        boxes.append([y, x, y + side * rng.uniform(0.8, 1.0), x + side])
    boxes = np.array(boxes)
    got = ops.roi_align(
        {k: tf.constant(v) for k, v in features.items()}, tf.constant(boxes[None], tf.float32), 7
    )[0].numpy()
    for index, box in enumerate(boxes):
        area = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        level = int(np.clip(np.floor(4 + np.log2(area / 224.0)), 2, 5))
        expected = numpy_roi_align(features[str(level)][0].astype(np.float64), box / 2**level, 7)
        np.testing.assert_allclose(got[index], expected, atol=1e-4)


def test_rpn_targets_follow_detectron_rules(rng):
    config = MaskRCNNConfig(image_size=(128, 128), rpn_anchors_per_image=64)
    anchors = ops.multilevel_anchors(config)
    gt = random_boxes(rng, 3, 128.0)
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 20)
    scores, _ = ops.rpn_targets(
        config, anchors, tf.constant(gt, tf.float32), tf.constant([1, 2, 3])
    )
    flat_anchors = np.concatenate([anchors[k].numpy().reshape(-1, 4) for k in config.levels])
    labels = np.concatenate([scores[k].numpy().reshape(-1) for k in config.levels])
    iou = numpy_iou(flat_anchors, gt)
    best = iou.max(axis=1)
    positive, negative = labels == 1, labels == 0
    assert 0 < positive.sum() <= 32 and positive.sum() + negative.sum() <= 64
    # Positive: IoU >= 0.7, or the best anchor of some ground-truth box.
    best_of_gt = np.isclose(iou, iou.max(axis=0, keepdims=True)).any(axis=1)
    assert np.all((best[positive] >= 0.7 - 1e-6) | best_of_gt[positive])
    assert np.all(best[negative] < 0.3 + 1e-6)


def test_roi_sampling_quarter_positive_with_matched_targets(rng):
    config = MaskRCNNConfig(rois_per_image=64)
    gt = random_boxes(rng, 2, 64.0)
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 10)
    proposals = np.concatenate([random_boxes(rng, 200, 64.0), gt + rng.normal(0, 1, gt.shape)])
    rois, boxes, classes, _ = ops.sample_rois(
        config,
        tf.constant(proposals[None], tf.float32),
        tf.constant(np.concatenate([gt, -np.ones((1, 4))])[None], tf.float32),
        tf.constant([[2, 3, -1]]),
    )
    rois, boxes, classes = rois[0].numpy(), boxes[0].numpy(), classes[0].numpy()
    assert rois.shape == (64, 4) and 0 < (classes > 0).sum() <= 16
    iou = numpy_iou(rois, gt)
    fg = classes > 0
    assert np.all(iou[fg].max(axis=1) >= 0.5 - 1e-5)
    np.testing.assert_array_equal(classes[fg], np.array([2, 3])[iou[fg].argmax(axis=1)])
    np.testing.assert_allclose(boxes[fg], gt[iou[fg].argmax(axis=1)], atol=1e-5)
    assert np.all(iou[~fg].max(axis=1) < 0.5 + 1e-5)


def test_mask_targets_match_pycocotools_rasterization_in_the_roi(rng):
    """Full-image polygon -> box crop (pipeline) -> RoI target, vs pycocotools."""
    config = MaskRCNNConfig(masks_per_image=1)
    size, m = 96, config.mask_size
    centre = rng.uniform(35, 60, 2)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
    radii = rng.uniform(14, 30, 7)
    polygon = np.stack([centre[1] + radii * np.cos(angles), centre[0] + radii * np.sin(angles)], 1)
    full = mask_utils.decode(mask_utils.frPyObjects([polygon.ravel().tolist()], size, size))[..., 0]
    ys, xs = np.nonzero(full)
    gt_box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)
    crop = tf.image.crop_and_resize(
        full[None, ..., None].astype(np.float32), [gt_box / size], [0], [112, 112]
    )[..., 0]
    roi = gt_box + rng.uniform(-5, 5, 4)
    _, classes, targets = ops.mask_targets(
        config,
        tf.constant(roi[None, None], tf.float32),
        tf.constant(gt_box[None, None], tf.float32),
        tf.constant([[1]]),
        tf.constant([[0]]),
        crop[None],
    )
    # Reference: the polygon moved into the RoI's frame, rasterized at m×m.
    scale = np.array([m / (roi[3] - roi[1]), m / (roi[2] - roi[0])])
    local = (polygon - roi[[1, 0]]) * scale
    expected = mask_utils.decode(mask_utils.frPyObjects([local.ravel().tolist()], m, m))[..., 0]
    got = targets[0, 0].numpy()
    assert int(classes[0, 0]) == 1
    intersection = np.logical_and(got > 0.5, expected > 0).sum()
    union = np.logical_or(got > 0.5, expected > 0).sum()
    assert intersection / union > 0.9


def numpy_nms(boxes, scores, threshold):
    order, keep = np.argsort(-scores), []
    while order.size:
        keep.append(order[0])
        iou = numpy_iou(boxes[order[:1]], boxes[order[1:]])[0]
        order = order[1:][iou <= threshold]
    return keep


def test_detections_are_per_class_nms_of_decoded_boxes(rng):
    config = MaskRCNNConfig(num_classes=2, detections_per_image=100, test_score_threshold=0.05)
    rois = random_boxes(rng, 30, 64.0)
    rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 8)
    logits = rng.normal(0, 2, (30, 3))
    deltas = rng.normal(0, 0.5, (30, 12))
    found = ops.detections(
        config,
        tf.constant(logits[None], tf.float32),
        tf.constant(deltas[None], tf.float32),
        tf.constant(rois[None], tf.float32),
        tf.constant([[64, 64]]),
    )
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = []
    for label in (1, 2):
        boxes = ops.decode(
            config,
            tf.constant(deltas[:, 4 * label : 4 * label + 4], tf.float32),
            tf.constant(rois, tf.float32),
        ).numpy()
        boxes = np.clip(boxes, 0, 64)
        scores = probabilities[:, label]
        kept = scores > 0.05
        for i in numpy_nms(boxes[kept], scores[kept], 0.5):
            expected.append((scores[kept][i], label, boxes[kept][i]))
    expected.sort(key=lambda e: -e[0])
    count = int(found["num_detections"][0])
    assert count == len(expected)
    np.testing.assert_allclose(found["scores"][0, :count], [e[0] for e in expected], atol=1e-5)
    np.testing.assert_array_equal(found["classes"][0, :count], [e[1] for e in expected])
    np.testing.assert_allclose(found["boxes"][0, :count], [e[2] for e in expected], atol=1e-3)


@pytest.mark.parametrize(
    "field,value",
    [
        ("box_head", "3fc"),
        ("backbone_norm", "batch"),
        ("image_size", (100, 64)),
        ("rpn_positive_iou", 1.5),
        ("mask_size", 30),
        ("rois_per_image", 0),
    ],
)
def test_config_rejects_bad_fields_by_name(field, value):
    with pytest.raises(ValueError, match=f"field `{field}`"):
        MaskRCNNConfig(**{field: value}).validate()
