"""ResNet-50 I3D for video (the paper's §4.3, Table 8 and Figure 7).

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
"""

import keras

from gn_keras.models.resnet import DEPTHS, STAGE_WIDTHS, bottleneck_block, head, stage, stem

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
            pool = (TEMPORAL_POOL, 1, 1)
            x = keras.layers.MaxPooling3D(
                pool, pool, data_format=builder.data_format, name="res2_tpool"
            )(x)
    return head(builder, x, include_top, num_classes, pooling)
