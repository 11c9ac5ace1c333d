"""ResNet-18/34/50/101/152 (He et al. 2016) in the torch-style v1.5 form.

The paper trains these ResNets with every normalization (§4.1, Tables 1–3).
Layout as in torchvision's reference code, which the paper's torch-style
baseline follows: a 7×7/2 stem and 3×3/2 max pool; four stages of widths
64/128/256/512 (×4 at the output of bottleneck blocks); in a bottleneck the
spatial stride sits on the 3×3 conv ("v1.5"); projection shortcuts (1×1
conv + norm) wherever the shape changes. No conv before a normalization has a
bias, so with 1000 classes the trainable counts equal torchvision's
(ResNet-50: 25,557,032).

Names: the stem is ``conv1``/``pool1``; block ``i`` of stage ``s`` is
``res<s>_block<i>`` with units ``_a``, ``_b`` (, ``_c``) and shortcut
``_proj``; each block ends in ``<block>_add`` (inputs: shortcut, branch) and
``<block>_out``; stage outputs are the endpoints ``C2``..``C5``.

The block and stage functions take a temporal kernel so the I3D model
(:mod:`models.resnet3d`) reuses them in 3D.
"""

import keras

# depth -> (block type, blocks per stage)
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64
NARROW_STAGE_WIDTHS = (16, 32, 64, 128)  # resnet18_narrow: a quarter of the widths
BOTTLENECK_EXPANSION = 4


def _shortcut(builder, x, filters, strides, name):
    if strides == 1 and x.shape[builder.channel_axis] == filters:
        return x
    return builder.conv_norm(x, filters, 1, strides, f"{name}_proj", relu=False)


def _merge(shortcut, branch, name):
    y = keras.layers.Add(name=f"{name}_add")([shortcut, branch])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def basic_block(builder, x, width, strides, name, temporal=1):
    """Two 3×3 units; the second's norm starts at γ=0 (§4.1)."""
    shortcut = _shortcut(builder, x, width, strides, name)
    y = builder.conv_norm(x, width, 3, strides, f"{name}_a", temporal=temporal)
    y = builder.conv_norm(y, width, 3, 1, f"{name}_b", relu=False, last_in_block=True)
    return _merge(shortcut, y, name)


def bottleneck_block(builder, x, width, strides, name, temporal=1):
    """1×1 → 3×3 (strided) → 1×1 (×4); only the first unit spans time."""
    filters = width * BOTTLENECK_EXPANSION
    shortcut = _shortcut(builder, x, filters, strides, name)
    y = builder.conv_norm(x, width, 1, 1, f"{name}_a", temporal=temporal)
    y = builder.conv_norm(y, width, 3, strides, f"{name}_b")
    y = builder.conv_norm(y, filters, 1, 1, f"{name}_c", relu=False, last_in_block=True)
    return _merge(shortcut, y, name)


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


def stage(builder, x, block, count, width, strides, index, temporal_kernels=None):
    """``count`` blocks named ``res<index>_block<i>``, output marked ``C<index>``."""
    for i in range(count):
        temporal = 1 if temporal_kernels is None else temporal_kernels[i]
        x = block(builder, x, width, strides if i == 0 else 1, f"res{index}_block{i + 1}", temporal)
    return builder.mark_endpoint(x, f"C{index}")


def stem(builder, x, temporal=1, width=STEM_WIDTH):
    """7×7/2 conv, norm, ReLU, 3×3/2 max pool."""
    x = builder.conv_norm(x, width, 7, 2, "conv1", temporal=temporal)
    return builder.max_pool(x, 3, 2, "pool1")


def head(builder, x, include_top, num_classes, pooling):
    """Global average pool and the fc, or the backbone's pooled/raw output."""
    if include_top:
        x = builder.global_pool(x, "avg", "avg_pool")
        return builder.classifier(x, num_classes)
    return builder.backbone_output(x, pooling)


def build_resnet(
    builder, inputs, *, depth, include_top, num_classes, pooling, stage_widths=STAGE_WIDTHS
):
    """The ImageNet ResNet of ``depth`` (a key of :data:`DEPTHS`).

    ``stage_widths`` narrows it (the stem takes the first stage's width),
    e.g. ``resnet18_narrow``'s quarter widths for detection on 2 CPU cores.
    """
    block_type, counts = DEPTHS[depth]
    x = stem(builder, inputs, width=stage_widths[0])
    for index, (count, width) in enumerate(zip(counts, stage_widths), start=2):
        strides = 1 if index == 2 else 2
        x = stage(builder, x, BLOCKS[block_type], count, width, strides, index)
    return head(builder, x, include_top, num_classes, pooling)
