"""Pre-activation ResNet-V2 (He et al. 2016, "Identity Mappings"), the BiT network.

Big Transfer (BiT, Kolesnikov et al. 2020) trains this network with GN and
weight-standardized convolutions (``norm="gn+ws"``); timm ships those
weights as ``resnetv2_50x1_bit`` and friends, and a GN-only variant with a
deep stem as ``resnetv2_50d_gn``. The layout follows timm's ``ResNetV2`` so
such weights convert exactly (:mod:`models.pretrained`):

* Pre-activation bottlenecks: norm → ReLU → 1×1, norm → ReLU → 3×3 (the
  stride sits here, as in v1.5), norm → ReLU → 1×1 (×4 the width), added to
  the shortcut with no activation after the sum. The first block of every
  stage projects its shortcut from the *normalized* input (the first
  norm's output), by a strided 1×1 conv, or, in the ``d`` models, by a 2×2
  average pool (TF "same": a partial last window averages only what it
  covers, like torch's ``ceil_mode`` without padding counted) and a 1×1 conv.
* Stems: BiT's 7×7/2 conv and a 3×3/2 max pool over a zero-padded map
  (BiT's "fixed" padding; the pool sees un-normalized values, so zeros and
  torch's -inf padding differ); or, for the ``d`` models, three 3×3 convs
  (the first strided, widths C/2, C/2, C, the first two normalized) and a
  max pool whose border windows ignore the padding (torch's padding=1).
* After the last stage: norm → ReLU, global average pool, fc.
* Every conv pads torch-style (symmetric k//2 when strided) and has no
  bias; a 1×1 conv never pads.

``width_multiplier`` scales every width (BiT's ×1, ×2, ×3, ×4).
``ws_epsilon`` is the ε a weight-standardized conv adds to its kernel's
variance (``norm="gn+ws"`` only; default BiT's 1e-10, timm's BiT weights
use 1e-8).

Zero-init (``zero_init_residual``): a pre-activation branch ends in a conv,
not a norm. Its last γ sits before a ReLU, and a zero γ there would give
ReLU(0) = 0 with zero gradient, freezing the branch for good. So each block
starts its *last conv* at zero output instead, as timm's ``zero_init_last``
does: a zero kernel (plain and WS convs; a WS conv then starts at output 0
but standardizes its first update to full scale), or a zero gain (``wn``).

Names follow :mod:`models.resnet` with the norm before the conv in each
unit: stem ``conv1`` (``conv1``..``conv3`` for the deep stem) and ``pool1``;
block ``res<s>_block<i>`` has units ``_a``, ``_b``, ``_c`` (``_norm`` then
``_conv``), shortcut ``_proj_conv`` (``_proj_pool`` before it in ``d``
models) and ends in ``_add``; endpoints ``C2``..``C5`` are the stages' sums
(timm's feature maps), then ``final_norm``, ``avg_pool`` and ``logits``.
"""

import keras

from gn_keras import _checks
from gn_keras.models.common import he_normal_fan_out
from gn_keras.models.resnet import head
from gn_keras.weight_convs import WNConv2D, WSConv2D

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (256, 512, 1024, 2048)  # block outputs; the bottleneck is a quarter
STEM_WIDTH = 64
BOTTLENECK_RATIO = 4


def _conv(builder, x, filters, kernel, strides, name, ws_options, zero=False):
    """A conv of the builder's kind, torch-style padded (see :mod:`models.common`).

    Placed here rather than by ``Builder.conv`` because this family passes
    per-conv options: the WS ε of the weights' source, and a zero start
    for a block's last conv.
    """
    conv_class = builder.norm.conv_class(2)
    padding = "same" if strides == 1 else "valid"
    if strides > 1 and kernel > 1:
        pad = keras.layers.ZeroPadding2D(kernel // 2, builder.data_format, name=f"{name}_pad")
        x = pad(x)
    zero_kernel = zero and not issubclass(conv_class, WNConv2D)  # WN zeroes its gain instead
    layer = builder.norm.conv(
        2,
        filters,
        kernel,
        zero_init=zero,
        strides=strides,
        padding=padding,
        data_format=builder.data_format,
        kernel_initializer="zeros" if zero_kernel else he_normal_fan_out(),
        name=f"{name}_conv",
        **(ws_options if issubclass(conv_class, WSConv2D) else {}),
    )
    return layer(x)


def _norm_relu(builder, x, name):
    """ReLU(norm(x)) as unit ``name``: one fused layer for the GN kinds."""
    return builder.norm.normalize_relu(x, f"{name}_norm", f"{name}_relu", axis=builder.channel_axis)


def _torch_max_pool(builder, x, name):
    """3×3/2 max pool whose windows ignore the padding, as torch's padding=1.

    A stride-1 "same" pool (TF pads symmetrically and ignores the pad) then
    keeps every second position: the windows start at -1, 1, 3, ... as torch's.
    """
    window = keras.layers.MaxPooling2D(3, 1, "same", builder.data_format, name=f"{name}_window")
    return keras.layers.MaxPooling2D(1, 2, "valid", builder.data_format, name=name)(window(x))


def stem(builder, x, kind, width, ws_options):
    """BiT's 7×7/2 conv and zero-padded pool, or the deep stem and torch's pool."""
    if kind == "bit":
        x = _conv(builder, x, width, 7, 2, "conv1", ws_options)
        return builder.max_pool(x, 3, 2, "pool1")
    x = _conv(builder, x, width // 2, 3, 2, "conv1", ws_options)
    x = _norm_relu(builder, x, "conv1")
    x = _conv(builder, x, width // 2, 3, 1, "conv2", ws_options)
    x = _norm_relu(builder, x, "conv2")
    x = _conv(builder, x, width, 3, 1, "conv3", ws_options)
    return _torch_max_pool(builder, x, "pool1")


def _projection(builder, x, filters, strides, name, avg_down, ws_options):
    if avg_down and strides > 1:
        pool = keras.layers.AveragePooling2D(
            2, strides, "same", builder.data_format, name=f"{name}_pool"
        )
        return _conv(builder, pool(x), filters, 1, 1, name, ws_options)
    return _conv(builder, x, filters, 1, strides, name, ws_options)


def preact_bottleneck(builder, x, filters, strides, name, project, avg_down, ws_options):
    """One pre-activation bottleneck; the last conv starts at zero (see above)."""
    width = filters // BOTTLENECK_RATIO
    preact = _norm_relu(builder, x, f"{name}_a")
    shortcut = x
    if project:
        shortcut = _projection(
            builder, preact, filters, strides, f"{name}_proj", avg_down, ws_options
        )
    y = _conv(builder, preact, width, 1, 1, f"{name}_a", ws_options)
    y = _norm_relu(builder, y, f"{name}_b")
    y = _conv(builder, y, width, 3, strides, f"{name}_b", ws_options)
    y = _norm_relu(builder, y, f"{name}_c")
    last = builder.zero_init_residual
    y = _conv(builder, y, filters, 1, 1, f"{name}_c", ws_options, zero=last)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def _ws_options(builder, where, ws_epsilon):
    if ws_epsilon is None:
        return {}
    if not issubclass(builder.norm.conv_class(2), WSConv2D):
        raise ValueError(
            f"{where}: argument `ws_epsilon` applies only to weight-standardized convs "
            f"(norm='gn+ws'), got ws_epsilon={ws_epsilon!r} with norm={builder.norm.kind!r}."
        )
    _checks.check_number(ws_epsilon, "`ws_epsilon`", low=0, low_open=True, where=where)
    return {"epsilon": float(ws_epsilon)}


def build_resnetv2(
    builder,
    inputs,
    *,
    depth,
    stem_kind,
    include_top,
    num_classes,
    pooling,
    width_multiplier=1,
    ws_epsilon=None,
):
    """The pre-activation ResNet of ``depth`` with ``stem_kind`` (``bit`` or ``deep``).

    The deep stem comes with average-pool projections, as in timm's ``d`` models.
    """
    avg_down = stem_kind == "deep"
    where = f"models.build('resnetv2_{depth}{'d' if avg_down else ''}')"
    _checks.check_int(width_multiplier, "`width_multiplier`", minimum=1, where=where)
    ws_options = _ws_options(builder, where, ws_epsilon)
    x = stem(builder, inputs, stem_kind, STEM_WIDTH * width_multiplier, ws_options)
    for index, (count, width) in enumerate(zip(DEPTHS[depth], STAGE_WIDTHS), start=2):
        filters = width * width_multiplier
        for i in range(count):
            strides = 2 if index > 2 and i == 0 else 1
            name = f"res{index}_block{i + 1}"
            x = preact_bottleneck(builder, x, filters, strides, name, i == 0, avg_down, ws_options)
        x = builder.mark_endpoint(x, f"C{index}")
    x = _norm_relu(builder, x, "final")
    return head(builder, x, include_top, num_classes, pooling)
