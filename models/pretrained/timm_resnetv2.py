"""timm's pre-activation ResNet-V2 (BiT, ``resnetv2_50d_gn``) into the zoo's ``resnetv2_*``.

timm's names are this family's canonical names (timm is its only source):
``stem.conv`` (BiT's 7×7 stem) or ``stem.conv1..3``/``stem.norm1..2`` (the
deep stem), ``stages.<s>.blocks.<i>.{norm1,conv1,norm2,conv2,norm3,conv3}``
and ``...downsample.conv``, ``norm`` (after the last stage) and ``head.fc``,
a 1×1 conv kept here as the fc it is. :func:`zoo_layer` maps each module
onto :mod:`models.resnetv2`'s layer names.

What the tensors cannot tell:

* whether the convs standardize their kernels: BiT's do (``norm="gn+ws"``;
  timm builds them with ε = 1e-8, so the zoo model is built with that ε),
  ``resnetv2_50d_gn``'s do not (``norm="gn"``);
* the projection: the deep stem comes with average-pool projections, BiT's
  stem with strided 1×1 convs, as in every timm ResNet-V2 of these layouts.

:func:`reference_network` builds the same network in timm for the check.
"""

import functools
import re

import numpy as np

from gn_keras.models import resnetv2
from gn_keras.models.pretrained import names

NORMS = ("gn", "gn+ws")
# timm's BiT models use StdConv2d(eps=1e-8) (``_create_resnetv2_bit``).
TIMM_WS_EPSILON = 1e-8
# Every timm ResNet-V2 pretrained_cfg normalizes with the Inception mean/std.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
CLASSIFIER = "head.fc.weight"
FEATURES_LAYER = "final_norm"  # what a backbone-only check compares
_STEM_CONVS = {"bit": "stem.conv.weight", "deep": "stem.conv1.weight"}
_MODULE = re.compile(
    r"(stem\.(?:conv[123]?|norm[12])|norm|head\.fc"
    r"|stages\.\d+\.blocks\.\d+\.(?:norm[123]|conv[123]|downsample\.conv))\.\w+"
)


def _prefix(tensor_names):
    """A wrapper's prefix (DDP's ``module.``) before timm's names, or ''."""
    found = [
        name[: -len(anchor)]
        for name in tensor_names
        for anchor in _STEM_CONVS.values()
        if name.endswith(anchor)
    ]
    return min(found, key=len, default="")


def holds_resnetv2(tensor_names):
    """Whether a state dict is laid out as timm's ResNet-V2."""
    prefix = _prefix(tensor_names)
    stem = any(
        name in (prefix + anchor for anchor in _STEM_CONVS.values()) for name in tensor_names
    )
    return stem and f"{prefix}stages.0.blocks.0.conv1.weight" in tensor_names


def to_canonical(tensors):
    """``(canonical, origin, unmatched, bookkeeping)`` as :func:`names.to_canonical`."""
    prefix = _prefix(tensors)
    canonical, origin, unmatched, bookkeeping = {}, {}, [], []
    for name, value in tensors.items():
        if names.is_bookkeeping(name):
            bookkeeping.append(name)
            continue
        new = name[len(prefix) :] if name.startswith(prefix) else None
        if new is None or not _MODULE.fullmatch(new):
            unmatched.append(name)
            continue
        if new == CLASSIFIER and np.ndim(value) == 4:  # the 1×1 conv is an fc
            value = np.reshape(value, np.shape(value)[:2])
        canonical[new] = value
        origin[new] = name
    return canonical, origin, sorted(unmatched), sorted(bookkeeping)


def zoo_layer(module):
    """The :mod:`models.resnetv2` layer a canonical module fills, or None."""
    fixed = {"stem.conv": "conv1_conv", "norm": "final_norm", "head.fc": "logits"}
    if module in fixed:
        return fixed[module]
    match = re.fullmatch(r"stem\.(conv|norm)([123])", module)
    if match:
        return f"conv{match[2]}_{match[1]}"
    match = re.fullmatch(
        r"stages\.(\d+)\.blocks\.(\d+)\.(norm[123]|conv[123]|downsample\.conv)", module
    )
    if not match:
        return None
    stage, block, part = match.groups()
    prefix = f"res{int(stage) + 2}_block{int(block) + 1}"
    if part == "downsample.conv":
        return f"{prefix}_proj_conv"
    return f"{prefix}_{'abc'[int(part[-1]) - 1]}_{part[:4]}"


def architecture(canonical):
    """``(stem kind, blocks per stage, stem width)`` of a canonical state dict."""
    stem_kind = "deep" if _STEM_CONVS["deep"] in canonical else "bit"
    last_stem_conv = "stem.conv3.weight" if stem_kind == "deep" else _STEM_CONVS["bit"]
    stem_width = canonical[last_stem_conv].shape[0] if last_stem_conv in canonical else 0
    counts = []
    for stage in range(4):
        pattern = re.compile(rf"stages\.{stage}\.blocks\.(\d+)\.")
        blocks = {int(m[1]) for m in map(pattern.match, canonical) if m}
        counts.append(max(blocks) + 1 if blocks else 0)
    return stem_kind, tuple(counts), stem_width


def model_name(canonical, asked, fail):
    """``(zoo model name, width_multiplier)``; ``fail(problem)`` refuses."""
    stem_kind, counts, stem_width = architecture(canonical)
    depths = [d for d, spec in resnetv2.DEPTHS.items() if spec == counts]
    multiplier, remainder = divmod(stem_width, resnetv2.STEM_WIDTH)
    described = (
        f"pre-activation bottlenecks {'/'.join(map(str, counts))}, "
        f"{'deep' if stem_kind == 'deep' else '7x7'} stem of width {stem_width}"
    )
    if not depths or remainder or not multiplier:
        fail(f"holds no zoo ResNet-V2 ({described}); is `source` right?")
    found = f"resnetv2_{depths[0]}{'d' if stem_kind == 'deep' else ''}"
    if asked is not None and asked != found:
        fail(f"holds a {found} ({described}) but model={asked} was asked.")
    return found, multiplier


def build_options(norm):
    """The extra ``models.build`` arguments of a converted model."""
    return {"ws_epsilon": TIMM_WS_EPSILON} if norm == "gn+ws" else {}


def reference_network(timm, report):
    """timm's ``ResNetV2`` of the conversion's layout, norm and conv (random weights)."""
    layers = timm.layers
    name = report["model"]
    deep = name.endswith("d")
    depth = int(name[len("resnetv2_") :].rstrip("d"))
    if report["norm"] == "gn+ws":
        conv_layer = functools.partial(layers.StdConv2d, eps=report["ws_epsilon"])
    else:
        conv_layer = layers.create_conv2d
    return timm.models.resnetv2.ResNetV2(
        layers=resnetv2.DEPTHS[depth],
        num_classes=report["num_classes"],
        width_factor=report["width_multiplier"],
        stem_type="deep" if deep else "fixed",
        avg_down=deep,
        conv_layer=conv_layer,
        norm_layer=functools.partial(layers.GroupNormAct, num_groups=report["groups"]),
    )


def torch_state(canonical, torch):
    """The canonical tensors as timm's state dict (the fc back to a 1×1 conv)."""
    state = {}
    for name, value in canonical.items():
        value = np.ascontiguousarray(value)
        if name == CLASSIFIER:
            value = value.reshape(value.shape + (1, 1))
        state[name] = torch.from_numpy(value)
    return state
