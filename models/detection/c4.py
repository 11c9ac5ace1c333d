"""The C4 variant of Mask R-CNN: ResNet up to conv4, conv5 as the RoI head (paper Table 4).

Detectron's C4 models (He et al. 2017, §3; the paper's §4.2, Table 4) cut
the ResNet after res4 (C4, stride 16). The RPN runs on C4 alone with every
anchor size on it (:func:`gn_keras.models.detection.ops.multilevel_anchors`).
Each RoI is pooled to 14×14 from C4 and goes through the network's own res5
stage (its first block has stride 2, so 7×7 come out):

- box head: res5 → global average pool → K+1 class logits (N(0, 0.01²))
  and class-specific box deltas (N(0, 0.001²));
- mask head: res5 → 2×2 stride-2 deconv + ReLU (``head_conv_channels``) →
  1×1 conv to K class-specific 14×14 mask logits (Detectron's C4 mask head,
  which shares res5 with the box head).

res5 here is not a second copy: the heads are built by re-running the
backbone's own layers from the C4 endpoint to C5 on a 14×14 input
(``keras.models.clone_model`` with every layer kept), so both heads and the
backbone share one set of res5 weights. Its norm is therefore the
backbone's ("inherited from the pre-trained model": BN* for BN, GN for GN),
and a transferred backbone brings its res5 weights with it, whatever its
source (zoo, ``.keras``, SavedModel, keras.applications).

In training the mask head runs res5 again on the foreground RoIs instead
of gathering them from the box head's pass. With per-RoI norms (GN, LN) or
frozen ones (BN*) the values are the same; the cost is ``masks_per_image /
rois_per_image`` more res5 work.

Layer names: the trunk model ``c4_trunk``; ``box_pool``, ``box_classes``,
``box_deltas``, ``mask_deconv``, ``mask_logits``; res5's layers keep the
backbone's names (``res5_block<i>_*``).
"""

import keras

from gn_keras.models.detection import heads
from gn_keras.models.detection.config import C4_LEVEL

RES5_INPUT, RES5_OUTPUT = "C4", "C5"


def _normal(stddev):
    return keras.initializers.RandomNormal(0.0, stddev)


def build_trunk(backbone):
    """The backbone up to conv4: images -> ``{"4": C4}``."""
    outputs = {str(C4_LEVEL): backbone.output[RES5_INPUT]}
    return keras.Model(backbone.input, outputs, name="c4_trunk")


def c4_channels(backbone):
    return backbone.output[RES5_INPUT].shape[-1]


def res5(backbone, inputs):
    """The backbone's res5 layers applied to ``inputs`` (shared, not copied)."""
    stage = keras.Model(backbone.output[RES5_INPUT], backbone.output[RES5_OUTPUT])
    rerun = keras.models.clone_model(
        stage, input_tensors=inputs, clone_function=lambda layer: layer
    )
    return rerun.output


def _roi_input(config, backbone, name):
    size = config.mask_roi_size  # both heads pool 14×14 from C4
    return keras.Input((size, size, c4_channels(backbone)), name=name)


def build_box_head(config, backbone):
    """RoI features [N, 14, 14, C4] -> (class logits [N, K+1], deltas [N, 4(K+1)])."""
    features = _roi_input(config, backbone, "box_features")
    x = keras.layers.GlobalAveragePooling2D(name="box_pool")(res5(backbone, features))
    classes = config.num_classes + 1
    logits = keras.layers.Dense(classes, kernel_initializer=_normal(0.01), name="box_classes")(x)
    deltas = keras.layers.Dense(4 * classes, kernel_initializer=_normal(0.001), name="box_deltas")(
        x
    )
    return keras.Model(features, [logits, deltas], name="box_head")


def build_mask_head(config, backbone):
    """RoI features [N, 14, 14, C4] -> class-specific mask logits [N, 14, 14, K]."""
    features = _roi_input(config, backbone, "mask_features")
    logits = heads.mask_predictor(res5(backbone, features), config)
    return keras.Model(features, logits, name="mask_head")
