"""Mask R-CNN's five losses, per image, as Detectron defines them.

Each function returns a [B] vector: one loss per image, so a task can sum
the parts and hand them to ``tf.nn.compute_average_loss`` with the global
batch size (each replica's share of the global mean, as
``gn_keras.train.task`` asks).

- RPN objectness: sigmoid cross-entropy, averaged over the sampled anchors
  (targets 1/0; -1 is not sampled).
- RPN box: smooth L1 with β = 1/9 on positive anchors, summed and divided
  by the number of sampled anchors.
- RoI class: softmax cross-entropy over the K+1 classes, averaged over the
  sampled RoIs.
- RoI box: smooth L1 with β = 1 on the deltas of each positive RoI's own
  class, summed and divided by the number of sampled RoIs.
- Mask: per-pixel sigmoid cross-entropy on the mask of each foreground RoI's
  class, averaged over foreground RoIs and pixels.
"""

import tensorflow as tf

graph_code = tf.autograph.experimental.do_not_convert  # plain TF ops, nothing to convert

RPN_SMOOTH_L1_BETA = 1.0 / 9.0
ROI_SMOOTH_L1_BETA = 1.0


@graph_code
def smooth_l1(difference, beta):
    """Elementwise smooth L1: 0.5·x²/β where |x| < β, |x| − 0.5·β elsewhere."""
    absolute = tf.abs(difference)
    return tf.where(absolute < beta, 0.5 * tf.square(difference) / beta, absolute - 0.5 * beta)


def _flatten_levels(per_level, width):
    """{level: [B, h, w, width·A]} -> [B, N, width] in level order."""
    parts = [tf.reshape(tf.cast(t, tf.float32), [tf.shape(t)[0], -1, width]) for t in per_level]
    return tf.concat(parts, axis=1)


@graph_code
def rpn_losses(scores, boxes, score_targets, box_targets):
    """RPN objectness and box losses per image, from per-level dicts."""
    levels = sorted(scores, key=int)
    logits = _flatten_levels([scores[k] for k in levels], 1)[..., 0]
    targets = _flatten_levels([score_targets[k] for k in levels], 1)[..., 0]
    deltas = _flatten_levels([boxes[k] for k in levels], 4)
    wanted = _flatten_levels([box_targets[k] for k in levels], 4)
    sampled = tf.cast(targets >= 0, tf.float32)
    positive = tf.cast(targets > 0, tf.float32)
    count = tf.maximum(tf.reduce_sum(sampled, axis=1), 1.0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.maximum(targets, 0.0), logits=logits)
    score_loss = tf.reduce_sum(bce * sampled, axis=1) / count
    l1 = tf.reduce_sum(smooth_l1(deltas - wanted, RPN_SMOOTH_L1_BETA), axis=-1)
    box_loss = tf.reduce_sum(l1 * positive, axis=1) / count
    return score_loss, box_loss


@graph_code
def roi_losses(class_logits, box_deltas, roi_classes, roi_box_targets):
    """RoI class and box losses per image; ``roi_classes`` 0 is background."""
    class_logits = tf.cast(class_logits, tf.float32)
    roi_classes = tf.cast(roi_classes, tf.int32)
    class_loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=roi_classes, logits=class_logits),
        axis=1,
    )
    num_rois = tf.shape(class_logits)[1]
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [-1, num_rois, class_logits.shape[-1], 4])
    own = tf.gather(deltas, roi_classes, batch_dims=2)
    positive = tf.cast(roi_classes > 0, tf.float32)
    l1 = tf.reduce_sum(smooth_l1(own - roi_box_targets, ROI_SMOOTH_L1_BETA), axis=-1)
    box_loss = tf.reduce_sum(l1 * positive, axis=1) / tf.cast(num_rois, tf.float32)
    return class_loss, box_loss


@graph_code
def mask_loss(mask_logits, mask_classes, mask_targets):
    """Mask loss per image: ``mask_logits`` [B, K, m, m] of each RoI's class."""
    foreground = tf.cast(mask_classes > 0, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=mask_targets, logits=tf.cast(mask_logits, tf.float32)
    )
    per_roi = tf.reduce_mean(bce, axis=[2, 3])
    return tf.reduce_sum(per_roi * foreground, axis=1) / tf.maximum(
        tf.reduce_sum(foreground, axis=1), 1.0
    )


@graph_code
def mask_rcnn_losses(outputs, batch):
    """All five per-image losses from the model's training outputs and the batch."""
    rpn_score, rpn_box = rpn_losses(
        outputs["rpn_scores"],
        outputs["rpn_boxes"],
        batch["rpn_score_targets"],
        batch["rpn_box_targets"],
    )
    roi_class, roi_box = roi_losses(
        outputs["class_logits"],
        outputs["box_deltas"],
        outputs["roi_classes"],
        outputs["roi_box_targets"],
    )
    mask = mask_loss(outputs["mask_logits"], outputs["mask_classes"], outputs["mask_targets"])
    return {
        "rpn_score_loss": rpn_score,
        "rpn_box_loss": rpn_box,
        "roi_class_loss": roi_class,
        "roi_box_loss": roi_box,
        "mask_loss": mask,
    }
