"""The end-to-end Mask R-CNN model (He et al. 2017) of the paper's §4.2.

``MaskRCNN(config)`` is a Keras 3 model on the TensorFlow backend made of
five sub-models: the zoo backbone cut at C2..C5, the FPN, the RPN head, the
box head and the mask head (:mod:`.fpn`, :mod:`.heads`). Its box
machinery is TF Model Garden's (:mod:`.ops`). With
``config.architecture="c4"`` (paper Table 4) the ``fpn`` slot holds the
backbone cut at C4 and the box and mask heads run the backbone's res5 on
14×14 RoIs (:mod:`.c4`); masks are then 14×14.

Calling it:

- ``model(images)`` or ``model({"images": ..., "image_sizes": ...})``:
  detections, a dict of ``boxes`` [B, D, 4] (``ymin, xmin, ymax, xmax`` in
  pixels of the padded input), ``scores``, ``classes`` (1..K),
  ``num_detections`` and ``masks`` [B, D, 28, 28] (probabilities of each
  box's class, in box coordinates). ``image_sizes`` [B, 2] is the valid,
  unpadded (height, width) of each image; default the full input.
- with ``gt_boxes`` [B, M, 4], ``gt_classes`` [B, M] (-1 = padding) and
  ``gt_masks`` [B, M, S, S] (each mask cropped to its box) in the dict, and
  ``training=True``: the raw head outputs and their sampled targets, the
  input of :func:`gn_keras.models.detection.losses.mask_rcnn_losses`.

Images are float32, already normalized, with sides ``config.image_size``.
"""

import keras
import numpy as np
import tensorflow as tf

from gn_keras.models.detection import c4, fpn, heads, ops
from gn_keras.models.detection.config import MaskRCNNConfig


@keras.saving.register_keras_serializable(package="gn_keras_detection")
class MaskRCNN(keras.Model):
    """Mask R-CNN with a ResNet-FPN or ResNet-C4 backbone; see the module docstring.

    Args:
      config: a :class:`MaskRCNNConfig` or its ``to_dict()``.
      backbone: optional pre-built C2..C5 feature extractor (e.g. from a
        pre-trained model; saved in ``get_config`` so a ``.keras`` file
        rebuilds it); default a fresh ``config.backbone``.
    """

    def __init__(self, config=None, backbone=None, **kwargs):
        kwargs.setdefault("name", "mask_rcnn")
        # Boxes stay float32 under mixed precision (bfloat16 would move a box
        # edge at 1000 px by 4 px); each sub-model casts its own inputs.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if config is None:
            config = MaskRCNNConfig()
        if isinstance(config, dict):
            config = MaskRCNNConfig.from_dict(config)
        if not isinstance(config, MaskRCNNConfig):
            raise ValueError(
                "MaskRCNN: argument `config` must be a MaskRCNNConfig or a dict, "
                f"got {type(config).__name__}."
            )
        self.config = config.validate()
        if isinstance(backbone, dict):  # a given backbone, as get_config saved it
            backbone = keras.saving.deserialize_keras_object(backbone)
        self._backbone_given = backbone is not None
        if backbone is None:
            backbone = fpn.build_backbone(self.config)
        fpn.check_backbone(backbone, self.config)
        self.backbone = backbone
        if self.config.architecture == "c4":
            # No FPN; the heads re-run the backbone's res5 layers (shared weights).
            self.fpn = c4.build_trunk(backbone)
            self.rpn_head = heads.build_rpn_head(self.config, c4.c4_channels(backbone))
            self.box_head = c4.build_box_head(self.config, backbone)
            self.mask_head = c4.build_mask_head(self.config, backbone)
        else:
            self.fpn = fpn.build_fpn(self.config, backbone)
            self.rpn_head = heads.build_rpn_head(self.config)
            self.box_head = heads.build_box_head(self.config)
            self.mask_head = heads.build_mask_head(self.config)
        self.built = True  # every part is a functional model, built already
        # Plain NumPy, not tracked: recomputed from the config on load.
        self._anchors = {
            level: np.asarray(boxes) for level, boxes in ops.multilevel_anchors(config).items()
        }

    def get_config(self):
        config = {"name": self.name, "config": self.config.to_dict()}
        if self._backbone_given:  # e.g. keras.applications: not rebuilt from the config
            config["backbone"] = keras.saving.serialize_keras_object(self.backbone)
        return config

    @property
    def anchors(self):
        """``{level: [h, w, A·4]}`` anchors of the padded input size."""
        return {level: tf.constant(boxes) for level, boxes in self._anchors.items()}

    def pyramid(self, images, training=False):
        """``{"2": P2, ..., "6": P6}`` of a batch of images (C4: ``{"4": C4}``)."""
        if self.config.architecture == "c4":
            return self.fpn(images, training=training)
        return self.fpn(self.backbone(images, training=training), training=training)

    def rpn(self, features, training=False):
        scores, boxes = {}, {}
        for level in self.config.levels:
            scores[level], boxes[level] = self.rpn_head(features[level], training=training)
        return scores, boxes

    def _apply_roi_head(self, head, features, rois, size, training):
        """Run a head on RoIAlign crops of ``rois`` [B, R, 4], batch-major."""
        crops = ops.roi_align(features, rois, size)
        flat = tf.reshape(crops, [-1, size, size, crops.shape[-1]])
        outputs = head(flat, training=training)
        rows = rois.shape[1] or tf.shape(rois)[1]  # static: every RoI count is a config value
        if isinstance(outputs, (list, tuple)):
            return [tf.reshape(o, [-1, rows, *o.shape[1:]]) for o in outputs]
        return tf.reshape(outputs, [-1, rows, *outputs.shape[1:]])

    @ops.graph_code
    def call(self, inputs, training=False):
        if not isinstance(inputs, dict):
            inputs = {"images": inputs}
        images = inputs["images"]
        image_sizes = inputs.get("image_sizes")
        if image_sizes is None:
            full = tf.constant([list(self.config.image_size)], tf.int32)
            image_sizes = tf.tile(full, [tf.shape(images)[0], 1])
        features = self.pyramid(images, training=training)
        rpn_scores, rpn_boxes = self.rpn(features, training=training)
        rpn_scores = {level: tf.cast(t, tf.float32) for level, t in rpn_scores.items()}
        rpn_boxes = {level: tf.cast(t, tf.float32) for level, t in rpn_boxes.items()}
        with_targets = training and "gt_boxes" in inputs
        proposals, _ = ops.propose_rois(
            self.config, rpn_boxes, rpn_scores, self.anchors, image_sizes, with_targets
        )
        if with_targets:
            outputs = self._training_outputs(inputs, features, proposals, training)
            outputs.update(rpn_scores=rpn_scores, rpn_boxes=rpn_boxes)
            return outputs
        return self._detect(features, proposals, image_sizes, training)

    def _training_outputs(self, inputs, features, proposals, training):
        config = self.config
        rois, gt_boxes, gt_classes, gt_indices = ops.sample_rois(
            config, proposals, inputs["gt_boxes"], inputs["gt_classes"]
        )
        class_logits, box_deltas = self._apply_roi_head(
            self.box_head, features, rois, config.box_pool_size, training
        )
        fg_rois, fg_classes, mask_targets = ops.mask_targets(
            config, rois, gt_boxes, gt_classes, gt_indices, inputs["gt_masks"]
        )
        mask_logits = self._apply_roi_head(
            self.mask_head, features, fg_rois, config.mask_roi_size, training
        )
        return {
            "class_logits": class_logits,
            "box_deltas": box_deltas,
            "roi_classes": gt_classes,
            "roi_box_targets": tf.stop_gradient(ops.box_targets(config, rois, gt_boxes)),
            "mask_logits": _class_channel(mask_logits, fg_classes),
            "mask_classes": fg_classes,
            "mask_targets": mask_targets,
        }

    def _detect(self, features, proposals, image_sizes, training):
        config = self.config
        class_logits, box_deltas = self._apply_roi_head(
            self.box_head, features, proposals, config.box_pool_size, training
        )
        found = ops.detections(config, class_logits, box_deltas, proposals, image_sizes)
        mask_logits = self._apply_roi_head(
            self.mask_head, features, found["boxes"], config.mask_roi_size, training
        )
        found["masks"] = tf.sigmoid(_class_channel(mask_logits, found["classes"]))
        return found


def _class_channel(mask_logits, classes):
    """[B, R, m, m, K] logits -> [B, R, m, m] of each row's class (1..K)."""
    index = tf.maximum(tf.cast(classes, tf.int32) - 1, 0)
    picked = tf.gather(
        tf.transpose(tf.cast(mask_logits, tf.float32), [0, 1, 4, 2, 3]), index, batch_dims=2
    )
    return picked
