"""I3D ResNets for video: ResNet-50 I3D (the paper's §4.3, Table 8 and
Figure 7) and a small ResNet-20 I3D that trains on a CPU.

Inputs are clips ``(N, T, H, W, C)`` (or ``(N, C, T, H, W)``). The layout is
the I3D ResNet-50 baseline of Wang et al., "Non-local Neural Networks" (2018),
as configured in facebookresearch/SlowFast (``MODEL.ARCH: i3d`` in
``slowfast/models/video_model_builder.py``, ``_TEMPORAL_KERNEL_BASIS["i3d"]``
and ``_POOL1["i3d"]``):

* stem: a 5×7×7 conv with stride 1×2×2, then a 1×3×3/1×2×2 max pool;
* only the first 1×1 of each bottleneck spans time, with a temporal kernel
  of 3 in every res2 block, alternating 3, 1, 3, ... in res3 and res4 and
  1, 3, 1 in res5; all other convs are 1×k×k; no temporal strides in convs;
* a 2×1×1 max pool with stride 2×1×1 after res2 halves the frame count.

Normalization is over (T, H, W) per group for GN, and over (N, T, H, W) for
BN, as the paper extends it "from over (H, W) to over (T, H, W)".

Names are those of the 2D :mod:`models.resnet`, plus ``res2_tpool`` and the
``<unit>_tpad`` time-padding layers, so :func:`models.inflate_2d_to_3d` maps
a 2D ResNet-50 onto this model by name. Time is padded by repeating the end
frames (``temporal_padding="replicate"``, the default) rather than with
zeros as SlowFast does: then a clip of T identical frames gives exactly the
parent 2D network's output at every frame, and the inflated model starts as
the 2D model. ``temporal_padding="zeros"`` reproduces SlowFast's padding.

``resnet20_i3d`` is the CIFAR ResNet-20 of :mod:`models.resnet_cifar`
inflated the same way, for small clips (e.g. 8 frames of 32×32) on CPUs:
the 3×3 stem spans 3 frames, the first 3×3 of every basic block spans 3
frames (Carreira & Zisserman inflate every conv), and a 2×1×1 max pool after
res2 halves the frame count as in ResNet-50 I3D. It accepts
``width_multiplier`` like its 2D parent, and ``inflate_2d_to_3d`` maps a
``resnet20`` of the same width onto it.

Max pooling is :class:`gn_keras.temporal_padding.VideoMaxPooling3D`, so the
models run under ``mixed_float16`` on CPUs too (TensorFlow has no float16
CPU kernel for ``MaxPool3D``).
"""

from gn_keras.models import resnet_cifar
from gn_keras.models.resnet import (
    DEPTHS,
    STAGE_WIDTHS,
    basic_block,
    bottleneck_block,
    head,
    stage,
    stem,
)
from gn_keras.temporal_padding import VideoMaxPooling3D

STEM_TEMPORAL_KERNEL = 5
# Per stage, the temporal kernels cycled over its blocks (SlowFast's "i3d").
STAGE_TEMPORAL_BASIS = {2: (3,), 3: (3, 1), 4: (3, 1), 5: (1, 3)}
TEMPORAL_POOL = 2


def temporal_kernels(index, count):
    """The first-1×1 temporal kernel of each of ``count`` blocks in stage ``index``."""
    basis = STAGE_TEMPORAL_BASIS[index]
    return tuple(basis[i % len(basis)] for i in range(count))


def build_resnet50_i3d(builder, inputs, *, include_top, num_classes, pooling):
    _, counts = DEPTHS[50]
    x = stem(builder, inputs, temporal=STEM_TEMPORAL_KERNEL)
    for index, (count, width) in enumerate(zip(counts, STAGE_WIDTHS), start=2):
        strides = 1 if index == 2 else 2
        kernels = temporal_kernels(index, count)
        x = stage(builder, x, bottleneck_block, count, width, strides, index, kernels)
        if index == 2:
            x = temporal_pool(builder, x)
    return head(builder, x, include_top, num_classes, pooling)


def temporal_pool(builder, x):
    """The 2×1×1/2×1×1 max pool after res2 that halves the frame count."""
    pool = (TEMPORAL_POOL, 1, 1)
    return VideoMaxPooling3D(pool, pool, data_format=builder.data_format, name="res2_tpool")(x)


SMALL_DEPTH = 20
SMALL_TEMPORAL_KERNEL = 3


def build_resnet20_i3d(builder, inputs, *, include_top, num_classes, pooling, width_multiplier=1):
    """ResNet-20 I3D: the CIFAR ResNet-20 with 3-frame kernels (see the module docstring)."""
    resnet_cifar.check_width_multiplier(f"{SMALL_DEPTH}_i3d", width_multiplier)
    widths = [width * width_multiplier for width in resnet_cifar.STAGE_WIDTHS]
    x = builder.conv_norm(inputs, widths[0], 3, 1, "conv1", temporal=SMALL_TEMPORAL_KERNEL)
    count = resnet_cifar.blocks_per_stage(SMALL_DEPTH)
    kernels = (SMALL_TEMPORAL_KERNEL,) * count
    for index, width in enumerate(widths, start=2):
        strides = 1 if index == 2 else 2
        x = stage(builder, x, basic_block, count, width, strides, index, kernels)
        if index == 2:
            x = temporal_pool(builder, x)
    return head(builder, x, include_top, num_classes, pooling)
