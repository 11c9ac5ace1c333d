"""The CIFAR ResNets of He et al. 2016, §4.2: ResNet-20/32/44/56/110.

For small images (32×32 CIFAR, upsampled 8×8 digits): a 3×3 conv with 16
filters, then three stages of ``n = (depth − 2) / 6`` basic blocks with
16/32/64 filters at strides 1/2/2, global average pooling and the fc.

Where this differs from §4.2: shortcuts that change shape are projections
(1×1 conv + norm, the paper's option B) instead of option A's parameter-free
zero padding, so every model in the zoo shares one block. That adds 2,560
conv weights and 192 γ/β: ResNet-20 has 272,474 parameters with 10 classes
(269,722 with option A). ``width_multiplier`` scales
every width (e.g. 4 gives 64/128/256, wide enough for GN's default 32
groups); with the plain widths use ``group_size`` (e.g. 4 or 8) or
``groups`` ≤ 16 for GN, since 32 groups cannot split 16 channels.

Names follow :mod:`models.resnet`: stem ``conv1``, stages ``res2``..``res4``
(endpoints ``C2``..``C4``), classifier ``logits``.
"""

from gn_keras import _checks
from gn_keras.models.resnet import basic_block, head, stage

DEPTHS = (20, 32, 44, 56, 110)
STAGE_WIDTHS = (16, 32, 64)


def blocks_per_stage(depth):
    return (depth - 2) // 6


def check_width_multiplier(depth, width_multiplier):
    """A one-line ``ValueError`` unless ``width_multiplier`` is a positive integer."""
    _checks.check_int(width_multiplier, "`width_multiplier`", minimum=1, where=f"resnet{depth}")


def build_resnet_cifar(
    builder, inputs, *, depth, include_top, num_classes, pooling, width_multiplier=1
):
    """The CIFAR ResNet of ``depth`` (one of :data:`DEPTHS`)."""
    check_width_multiplier(depth, width_multiplier)
    widths = [width * width_multiplier for width in STAGE_WIDTHS]
    x = builder.conv_norm(inputs, widths[0], 3, 1, "conv1")
    count = blocks_per_stage(depth)
    for index, width in enumerate(widths, start=2):
        strides = 1 if index == 2 else 2
        x = stage(builder, x, basic_block, count, width, strides, index)
    return head(builder, x, include_top, num_classes, pooling)
