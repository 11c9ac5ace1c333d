"""Mask R-CNN's heads: RPN, box head (``2fc`` or ``4conv1fc``), mask head.

(The C4 model's RPN is this one; its box and mask heads are in :mod:`.c4`.)

- RPN head (shared over P2..P6): 3×3 conv + ReLU, then 1×1 convs giving A
  objectness logits and 4A box deltas per location; N(0, 0.01²) init.
- Box head on 7×7 RoI features: ``2fc`` is two 1024-unit fc layers (FPN's
  head); ``4conv1fc`` is four 3×3 convs, each followed by ``box_head_norm``,
  and one fc (the head with which the paper's Table 5 shows GN's gain in the
  head). Then K+1 class logits (N(0, 0.01²)) and class-specific deltas
  (N(0, 0.001²)).
- Mask head on 14×14 RoI features: four 3×3 convs, each followed by
  ``mask_head_norm``, a 2×2 stride-2 deconv and a 1×1 conv to K class-specific
  28×28 mask logits.

The norm after a head conv normalizes each RoI by itself (GN) or the RoIs of
the whole batch together (BN, which the paper finds ~9 AP worse: the RoIs of
one image are not i.i.d.). Layer names are fixed: ``rpn_*``, ``box_*``,
``mask_*``.
"""

import keras

from gn_keras.models.common import he_normal_fan_out
from gn_keras.models.detection.fpn import norm_factory


def _normal(stddev):
    return keras.initializers.RandomNormal(0.0, stddev)


def build_rpn_head(config, channels=None):
    """Per-level RPN: P_l [B, h, w, C] -> (logits [B, h, w, A], deltas [B, h, w, 4A]).

    ``channels``: C and the width of its 3×3 conv (Detectron keeps the input
    width); default ``fpn_channels``, the C4 model passes C4's width.
    """
    channels = channels or config.fpn_channels
    features = keras.Input((None, None, channels), name="rpn_features")
    x = keras.layers.Conv2D(
        channels,
        3,
        padding="same",
        activation="relu",
        kernel_initializer=_normal(0.01),
        name="rpn_conv",
    )(features)
    scores = keras.layers.Conv2D(
        config.num_anchors, 1, kernel_initializer=_normal(0.01), name="rpn_scores"
    )(x)
    boxes = keras.layers.Conv2D(
        4 * config.num_anchors, 1, kernel_initializer=_normal(0.01), name="rpn_boxes"
    )(x)
    return keras.Model(features, [scores, boxes], name="rpn_head")


def _head_convs(x, config, norm, prefix, initializer):
    factory = norm_factory(config, norm)
    for i in range(1, 5):
        x = factory.conv(
            2,
            config.head_conv_channels,
            3,
            padding="same",
            kernel_initializer=initializer,
            name=f"{prefix}_conv{i}",
        )(x)
        # A GN norm takes the ReLU into its kernel (one layer, no ReLU pass).
        x = factory.normalize_relu(x, name=f"{prefix}_norm{i}", relu_name=f"{prefix}_relu{i}")
    return x


def _fc(x, units, name):
    return keras.layers.Dense(
        units, activation="relu", kernel_initializer="lecun_uniform", name=name
    )(x)


def build_box_head(config):
    """RoI features [N, 7, 7, C] -> (class logits [N, K+1], deltas [N, 4(K+1)])."""
    size = config.box_roi_size
    features = keras.Input((size, size, config.fpn_channels), name="box_features")
    x = features
    if config.box_head == "4conv1fc":
        x = _head_convs(x, config, config.box_head_norm, "box", he_normal_fan_out())
    x = keras.layers.Flatten(name="box_flatten")(x)
    x = _fc(x, config.box_head_fc_units, "box_fc1")
    if config.box_head == "2fc":
        x = _fc(x, config.box_head_fc_units, "box_fc2")
    classes = config.num_classes + 1
    logits = keras.layers.Dense(classes, kernel_initializer=_normal(0.01), name="box_classes")(x)
    deltas = keras.layers.Dense(4 * classes, kernel_initializer=_normal(0.001), name="box_deltas")(
        x
    )
    return keras.Model(features, [logits, deltas], name="box_head")


def build_mask_head(config):
    """RoI features [N, 14, 14, C] -> class-specific mask logits [N, 28, 28, K]."""
    size = config.mask_roi_size
    features = keras.Input((size, size, config.fpn_channels), name="mask_features")
    x = _head_convs(features, config, config.mask_head_norm, "mask", he_normal_fan_out())
    return keras.Model(features, mask_predictor(x, config), name="mask_head")


def mask_predictor(x, config):
    """2×2 stride-2 deconv + ReLU, then a 1×1 conv to K class-specific mask logits.

    The end of both mask heads: after the four convs (FPN) or after res5 (C4).
    """
    x = keras.layers.Conv2DTranspose(
        config.head_conv_channels,
        2,
        strides=2,
        activation="relu",
        kernel_initializer=he_normal_fan_out(),
        name="mask_deconv",
    )(x)
    return keras.layers.Conv2D(
        config.num_classes, 1, kernel_initializer=_normal(0.001), name="mask_logits"
    )(x)
