"""A tiny Mask R-CNN config shared by the detection tests: seconds, not minutes."""

from gn_keras.models.detection import MaskRCNNConfig

# ResNet-18 at quarter width on 64×64 inputs, 16-channel FPN and heads.
TINY = dict(
    num_classes=3,
    image_size=(64, 64),
    backbone="resnet18_narrow",
    groups=4,
    fpn_channels=16,
    head_conv_channels=16,
    box_head_fc_units=32,
    rois_per_image=32,
    masks_per_image=8,
    train_pre_nms_top_k=200,
    train_proposals=64,
    test_pre_nms_top_k=100,
    test_proposals=32,
    detections_per_image=8,
)


def tiny_config(**changes):
    return MaskRCNNConfig(**dict(TINY, **changes))
