"""Mask R-CNN with a ResNet-FPN or ResNet-C4 backbone, any norm in each part (paper §4.2).

    from gn_keras.models.detection import MaskRCNN, MaskRCNNConfig
    config = MaskRCNNConfig(num_classes=3, image_size=(128, 128),
                            backbone="resnet18_narrow", backbone_norm="gn",
                            groups=8, box_head="4conv1fc", box_head_norm="gn",
                            mask_head_norm="gn", fpn_channels=64)
    model = MaskRCNN(config)
    detections = model(images)                   # boxes, scores, classes, masks
    outputs = model(batch, training=True)        # head outputs + sampled targets
    losses = mask_rcnn_losses(outputs, batch)    # five [B] vectors

Modules: :mod:`.config` (settings), :mod:`.ops` (TF Model Garden box
machinery), :mod:`.fpn` (backbone + FPN), :mod:`.heads`, :mod:`.c4` (the C4 variant,
``architecture="c4"``), :mod:`.losses`,
:mod:`.maskrcnn` (the model).
"""

from gn_keras.models.detection.config import BOX_HEADS, MaskRCNNConfig
from gn_keras.models.detection.losses import mask_rcnn_losses
from gn_keras.models.detection.maskrcnn import MaskRCNN

__all__ = ["BOX_HEADS", "MaskRCNN", "MaskRCNNConfig", "mask_rcnn_losses"]
