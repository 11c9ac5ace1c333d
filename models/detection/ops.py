"""Mask R-CNN's box machinery, as thin wrappers over tf-models-official ops.

Everything here is pure TensorFlow from ``official.vision`` (TF Model
Garden), pinned by ``tf-models-official~=2.20.0`` and checked against NumPy
references in ``tests/test_detection_ops.py``; this module only fixes the
conventions Mask R-CNN needs and names the Detectron settings:

- boxes are ``[ymin, xmin, ymax, xmax]`` in pixels of the padded input
  image; padding rows of ground truth are ``-1``; classes are ``1..K`` with
  0 for background;
- anchors: ``official.vision.ops.anchor.Anchor`` (one size per level,
  ``anchor_scale · 2^level``; the C4 model puts all five sizes on its one
  stride-16 map, as Detectron's C4 RPN does), RPN targets: its ``RpnAnchorLabeler`` (IoU
  0.7/0.3, every ground-truth box gets its best anchor, balanced sampling);
- proposals: per-level top-k, decode, clip, NMS, then the overall top-k
  (``roi_generator._multilevel_propose_rois``, with its batched NMS: the
  standard ``CombinedNonMaxSuppression`` op, CPU/GPU only, as is the
  test-time NMS below);
- RoI sampling: ``roi_sampler.ROISampler`` (ground truth mixed into the
  proposals, as Detectron does), mask targets:
  ``mask_sampler._sample_and_crop_foreground_masks``, which resamples each
  instance's box-cropped mask into its RoI;
- RoIAlign: ``spatial_transform_ops.multilevel_crop_and_resize``: FPN level
  ``floor(4 + log2(√area / 224))`` clamped to P2..P5 (C4: its one map), one
  bilinear sample at each bin centre;
- test-time detections: per-class NMS with
  ``tf.image.combined_non_max_suppression``, a standard op that exports.

The TFM samplers are stateless ``tf_keras`` layers; they are created per
call (at trace time) so that no ``tf_keras`` object is tracked by a Keras 3
model.
"""

import tensorflow as tf
from official.vision.modeling.layers import mask_sampler, roi_generator, roi_sampler
from official.vision.ops import anchor, box_ops, spatial_transform_ops

from gn_keras.models.detection.config import C4_LEVEL, MAX_LEVEL, MIN_LEVEL

# Every function here is graph code already (TFM uses explicit tf.cond and
# tf.while_loop); converting it again with AutoGraph only costs trace time.
graph_code = tf.autograph.experimental.do_not_convert

ROI_LEVELS = tuple(str(level) for level in range(MIN_LEVEL, 6))  # P2..P5


def _anchors(config, min_level, max_level, anchor_size):
    return anchor.Anchor(
        min_level=min_level,
        max_level=max_level,
        num_scales=1,
        aspect_ratios=list(config.aspect_ratios),
        anchor_size=float(anchor_size),
        image_size=list(config.image_size),
    ).multilevel_boxes


@graph_code
def multilevel_anchors(config):
    """``{"2": [h, w, A·4], ..., "6": ...}`` for ``config.image_size``.

    C4: ``{"4": [h, w, A·4]}`` at stride 16 with the same sizes
    ``anchor_scale · 2^level`` for levels 2..6, size-major (anchor ``a`` is
    size ``a // ratios``, ratio ``a % ratios``).
    """
    if config.architecture != "c4":
        return _anchors(config, MIN_LEVEL, MAX_LEVEL, config.anchor_scale)
    key = str(C4_LEVEL)
    per_size = [
        _anchors(config, C4_LEVEL, C4_LEVEL, config.anchor_scale * 2.0 ** (level - C4_LEVEL))[key]
        for level in config.anchor_levels
    ]
    return {key: tf.concat(per_size, axis=-1)}


@graph_code
def rpn_targets(config, anchors, gt_boxes, gt_classes):
    """RPN score and box targets of one image (runs in the input pipeline).

    ``gt_boxes`` [N, 4] and ``gt_classes`` [N] hold only real instances.
    Returns ``({level: [h, w, A]}, {level: [h, w, 4A]})``; scores are 1
    (positive), 0 (negative) or -1 (not sampled). Box targets use unit
    weights, as Detectron's RPN does.
    """
    labeler = anchor.RpnAnchorLabeler(
        match_threshold=config.rpn_positive_iou,
        unmatched_threshold=config.rpn_negative_iou,
        rpn_batch_size_per_im=config.rpn_anchors_per_image,
        rpn_fg_fraction=config.rpn_positive_fraction,
    )
    gt_labels = tf.cast(tf.reshape(gt_classes, [-1, 1]), tf.float32)
    return labeler.label_anchors(anchors, tf.cast(gt_boxes, tf.float32), gt_labels)


@graph_code
def batched_anchors(anchors, batch_size):
    """Per-level anchors flattened to [batch, h·w·A, 4]."""
    return {
        level: tf.tile(tf.reshape(boxes, [1, -1, 4]), [batch_size, 1, 1])
        for level, boxes in anchors.items()
    }


@graph_code
def propose_rois(config, raw_boxes, raw_scores, anchors, image_sizes, training):
    """Top RPN proposals of each image: ([B, P, 4] boxes, [B, P] scores)."""
    batch_size = tf.shape(image_sizes)[0]
    rois, scores = roi_generator._multilevel_propose_rois(
        raw_boxes,
        raw_scores,
        batched_anchors(anchors, batch_size),
        tf.cast(image_sizes, tf.float32),
        pre_nms_top_k=config.train_pre_nms_top_k if training else config.test_pre_nms_top_k,
        nms_iou_threshold=config.rpn_nms_iou,
        num_proposals=config.train_proposals if training else config.test_proposals,
        use_batched_nms=True,  # one CombinedNonMaxSuppression op per level: faster to trace and run
    )
    return tf.stop_gradient(rois), tf.stop_gradient(scores)


@graph_code
def roi_align(features, boxes, output_size):
    """RoIAlign from P2..P5 (or C4's one map): [B, R, output_size, output_size, C]."""
    pyramid = {level: features[level] for level in ROI_LEVELS if level in features}
    return spatial_transform_ops.multilevel_crop_and_resize(
        pyramid, boxes, output_size=output_size, sample_offset=0.5
    )


@graph_code
def sample_rois(config, proposals, gt_boxes, gt_classes):
    """Detectron's RoI sampling: 512 per image, a quarter positive.

    Returns ``(rois, matched_gt_boxes, matched_gt_classes, matched_gt_indices)``
    each [B, rois_per_image, ...]; background RoIs have class 0, index -1.
    """
    sampler = roi_sampler.ROISampler(
        mix_gt_boxes=True,
        num_sampled_rois=config.rois_per_image,
        foreground_fraction=config.roi_positive_fraction,
        foreground_iou_threshold=config.roi_positive_iou,
        background_iou_high_threshold=config.roi_negative_iou_high,
        background_iou_low_threshold=config.roi_negative_iou_low,
    )
    rois, boxes, classes, indices = sampler(proposals, gt_boxes, tf.cast(gt_classes, tf.int32))
    return tf.stop_gradient(rois), boxes, tf.cast(classes, tf.int32), indices


@graph_code
def box_targets(config, rois, matched_gt_boxes):
    """Encoded regression targets with Detectron's weights (10, 10, 5, 5)."""
    return box_ops.encode_boxes(matched_gt_boxes, rois, weights=list(config.box_coder_weights))


@graph_code
def decode(config, deltas, rois):
    return box_ops.decode_boxes(deltas, rois, weights=list(config.box_coder_weights))


@graph_code
def mask_targets(config, rois, matched_gt_boxes, matched_gt_classes, matched_gt_indices, gt_masks):
    """Foreground RoIs and their binary mask targets.

    ``gt_masks`` [B, M, S, S] hold each instance's mask cropped to its box.
    Returns ``(fg_rois [B, K, 4], fg_classes [B, K], targets [B, K, m, m])``
    with K = ``masks_per_image`` and m = ``mask_size``; rows with class 0
    are padding and carry no loss. Targets are thresholded at 0.5 as in
    Detectron.
    """
    fg_rois, fg_classes, soft = mask_sampler._sample_and_crop_foreground_masks(
        rois,
        matched_gt_boxes,
        matched_gt_classes,
        matched_gt_indices,
        tf.cast(gt_masks, tf.float32),
        num_sampled_masks=config.masks_per_image,
        mask_target_size=config.mask_size,
    )
    targets = tf.cast(soft >= 0.5, tf.float32)
    return tf.stop_gradient(fg_rois), fg_classes, tf.stop_gradient(targets)


@graph_code
def detections(config, class_logits, box_deltas, rois, image_sizes):
    """Per-class decoding and NMS: Detectron's test-time output.

    ``class_logits`` [B, R, K+1], ``box_deltas`` [B, R, (K+1)·4], ``rois``
    [B, R, 4]. Returns a dict of ``boxes`` [B, D, 4] (clipped to each
    image's valid area), ``scores`` [B, D], ``classes`` [B, D] (1..K, int32)
    and ``num_detections`` [B], with D = ``detections_per_image``.
    """
    num_classes = config.num_classes
    probabilities = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:]
    shape = [-1, tf.shape(rois)[1], num_classes + 1, 4]
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), shape)
    boxes = decode(config, deltas[:, :, 1:, :], tf.expand_dims(rois, 2))
    boxes = box_ops.clip_boxes(boxes, tf.cast(image_sizes[:, None, None, :], tf.float32))
    nmsed = tf.image.combined_non_max_suppression(
        boxes,
        probabilities,
        max_output_size_per_class=config.detections_per_image,
        max_total_size=config.detections_per_image,
        iou_threshold=config.test_nms_iou,
        score_threshold=config.test_score_threshold,
        pad_per_class=False,
        clip_boxes=False,
    )
    return {
        "boxes": nmsed.nmsed_boxes,
        "scores": nmsed.nmsed_scores,
        "classes": tf.cast(nmsed.nmsed_classes, tf.int32) + 1,
        "num_detections": nmsed.valid_detections,
    }
