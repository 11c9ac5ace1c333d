"""Parameter counts of Mask R-CNN, C4 and FPN, for every norm setting of Tables 4–7.

Each model is built tiny, and ``count_params()`` (and the trainable count)
is compared with a count written here from the config alone: the zoo
ResNet's published layout (stem, blocks per stage, widths) and Mask R-CNN's
layer shapes (conv k·k·cin·cout, a bias when no norm follows, 2·C per
GN/LN, 4·C per BN of which 2·C train, 4·C frozen for BN*). The model's own
layer list is never read.
"""

import pytest
from detection_helpers import TINY

from gn_keras.models.detection import MaskRCNN, MaskRCNNConfig

# depth -> (bottleneck?, blocks per stage, stage widths, stem width); ResNet (He et al. 2016).
RESNETS = {
    "resnet18_narrow": (False, (2, 2, 2, 2), (16, 32, 64, 128), 16),
    "resnet50": (True, (3, 4, 6, 3), (64, 128, 256, 512), 64),
}
NORMALIZING = {"bn", "sync_bn", "frozen_bn", "gn", "ln"}


def norm_count(norm, channels):
    """(total, trainable) parameters of one norm layer over ``channels``."""
    if norm in ("bn", "sync_bn"):
        return 4 * channels, 2 * channels  # γ, β train; the moving statistics do not
    if norm == "frozen_bn":
        return 4 * channels, 0
    if norm in ("gn", "ln"):
        return 2 * channels, 2 * channels
    assert norm == "none"
    return 0, 0


def add(a, b):
    return (a[0] + b[0], a[1] + b[1])


def dense(cin, cout):
    n = cin * cout + cout
    return (n, n)


def conv_norm(kernel, cin, cout, norm):
    """A conv followed by ``norm``; the conv has a bias only when nothing normalizes after it."""
    n = kernel * kernel * cin * cout + (0 if norm in NORMALIZING else cout)
    return add((n, n), norm_count(norm, cout))


def resnet_blocks(backbone, norm, stages):
    """Stem and the given stages (2..5) of the zoo ResNet; returns (count, output channels)."""
    bottleneck, blocks, widths, stem = RESNETS[backbone]
    total, channels = (0, 0), 3
    if 2 in stages:
        total = conv_norm(7, 3, stem, norm)
        channels = stem
    else:
        channels = widths[min(stages) - 3] * (4 if bottleneck else 1)
    for stage in stages:
        width = widths[stage - 2]
        out = width * 4 if bottleneck else width
        for block in range(blocks[stage - 2]):
            if bottleneck:
                units = [(1, channels, width), (3, width, width), (1, width, out)]
            else:
                units = [(3, channels, width), (3, width, width)]
            for kernel, cin, cout in units:
                total = add(total, conv_norm(kernel, cin, cout, norm))
            if block == 0 and (stage > 2 or channels != out):  # projection shortcut
                total = add(total, conv_norm(1, channels, out, norm))
            channels = out
    return total, channels


def stage_channels(backbone):
    bottleneck, _, widths, _ = RESNETS[backbone]
    return [w * 4 if bottleneck else w for w in widths]


def rpn(channels, anchors):
    n = 9 * channels * channels + channels + channels * anchors + anchors
    n += channels * 4 * anchors + 4 * anchors
    return (n, n)


def expected_fpn(config):
    c = config
    total, _ = resnet_blocks(c.backbone, c.backbone_norm, (2, 3, 4, 5))
    f, h, k = c.fpn_channels, c.head_conv_channels, c.num_classes
    for cin in stage_channels(c.backbone):
        total = add(total, conv_norm(1, cin, f, c.fpn_norm))
        total = add(total, conv_norm(3, f, f, c.fpn_norm))
    total = add(total, rpn(f, len(c.aspect_ratios)))
    flat = c.box_roi_size**2 * f
    if c.box_head == "4conv1fc":
        for i in range(4):
            total = add(total, conv_norm(3, f if i == 0 else h, h, c.box_head_norm))
        flat = c.box_roi_size**2 * h
    total = add(total, dense(flat, c.box_head_fc_units))
    if c.box_head == "2fc":
        total = add(total, dense(c.box_head_fc_units, c.box_head_fc_units))
    total = add(total, dense(c.box_head_fc_units, k + 1))
    total = add(total, dense(c.box_head_fc_units, 4 * (k + 1)))
    for i in range(4):
        total = add(total, conv_norm(3, f if i == 0 else h, h, c.mask_head_norm))
    total = add(total, conv_norm(2, h, h, "none"))  # deconv
    return add(total, conv_norm(1, h, k, "none"))


def expected_c4(config):
    c = config
    total, c4 = resnet_blocks(c.backbone, c.backbone_norm, (2, 3, 4))
    res5, c5 = resnet_blocks(c.backbone, c.backbone_norm, (5,))
    h, k = c.head_conv_channels, c.num_classes
    total = add(total, res5)  # one res5, shared by the box and mask heads
    total = add(total, rpn(c4, 5 * len(c.aspect_ratios)))  # 5 sizes × 3 ratios
    total = add(total, dense(c5, k + 1))
    total = add(total, dense(c5, 4 * (k + 1)))
    total = add(total, conv_norm(2, c5, h, "none"))  # deconv
    return add(total, conv_norm(1, h, k, "none"))


def tiny(**changes):
    values = {**TINY, **changes}
    if values.get("architecture") == "c4":  # C4 keeps the FPN-only fields at their defaults
        for name in ("fpn_channels", "box_head_fc_units"):
            values.pop(name)
        values["mask_size"] = 14
    return MaskRCNNConfig(**values)


# Table 4 (C4): BN*, GN, LN backbones and res5 heads.
C4_ROWS = {
    "BN*": dict(backbone_norm="frozen_bn"),
    "GN": dict(backbone_norm="gn"),
    "LN": dict(backbone_norm="ln"),
}
# Tables 5–7 (FPN).
FPN_ROWS = {
    "BN* 2fc": dict(backbone_norm="frozen_bn", box_head="2fc"),
    "BN* 4conv1fc": dict(backbone_norm="frozen_bn", box_head="4conv1fc"),
    "BN* + GN head": dict(
        backbone_norm="frozen_bn", box_head="4conv1fc", box_head_norm="gn", mask_head_norm="gn"
    ),
    "GN": dict(
        backbone_norm="gn",
        fpn_norm="gn",
        box_head="4conv1fc",
        box_head_norm="gn",
        mask_head_norm="gn",
    ),
    "BN* + BN head": dict(
        backbone_norm="frozen_bn", box_head="4conv1fc", box_head_norm="bn", mask_head_norm="bn"
    ),
    "GN scratch": dict(
        backbone_norm="gn",
        fpn_norm="gn",
        box_head="4conv1fc",
        box_head_norm="gn",
        mask_head_norm="gn",
    ),
    "SyncBN scratch": dict(
        backbone_norm="sync_bn",
        fpn_norm="sync_bn",
        box_head="4conv1fc",
        box_head_norm="sync_bn",
        mask_head_norm="sync_bn",
    ),
}


def check_counts(model, want):
    trainable = sum(int(v.numpy().size) for v in model.trainable_weights)
    assert (model.count_params(), trainable) == want


@pytest.mark.parametrize("row", C4_ROWS)
def test_c4_counts_match_the_layout(row):
    config = tiny(architecture="c4", **C4_ROWS[row])
    check_counts(MaskRCNN(config), expected_c4(config))


@pytest.mark.parametrize("row", FPN_ROWS)
def test_fpn_counts_match_the_layout(row):
    config = tiny(**FPN_ROWS[row])
    check_counts(MaskRCNN(config), expected_fpn(config))


@pytest.mark.parametrize("norm", ["frozen_bn", "gn"])
def test_resnet50_c4_counts_match_the_bottleneck_layout(norm):
    # The paper's Table 4 model: R50-C4, at a tiny input and narrow heads.
    config = tiny(architecture="c4", backbone="resnet50", backbone_norm=norm, groups=32)
    check_counts(MaskRCNN(config), expected_c4(config))
