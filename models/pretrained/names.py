"""Tensor names of each checkpoint source, and their meaning in the zoo's ResNets.

Every source is first renamed into one *canonical* naming, torchvision's
(``conv1``, ``bn1``, ``layer<L>.<i>.conv<k>``, ``layer<L>.<i>.bn<k>``,
``layer<L>.<i>.downsample.{0,1}``, ``fc``), which timm's ResNets share; then
:func:`zoo_layer` says which zoo layer each canonical module fills
(``conv1_conv``, ``res<L+1>_block<i+1>_{a,b,c}_{conv,norm}``, ``..._proj_*``,
``logits``; see :mod:`models.resnet`).

The sources:

* ``torchvision``/``timm``: already canonical (a DDP ``module.`` prefix is
  dropped).
* ``detectron``: the Caffe2 blobs of Detectron, as the GN project released
  its ImageNet backbones: ``conv1_w``, ``res_conv1_gn_s``/``_gn_b`` (or
  ``_bn_s``/``_bn_b`` for the affine "BN" of the MSRA models),
  ``res2_0_branch2a_w``, ``res2_0_branch1_w``, ``pred_w``/``pred_b``.
* ``detectron2``: ``stem.conv1.weight``, ``stem.conv1.norm.*``,
  ``res2.0.conv1.weight``, ``res2.0.shortcut.*``, ``linear.*``, possibly
  under a detector's prefix such as ``backbone.bottom_up.``.
"""

import re

SOURCES = ("timm", "torchvision", "detectron", "detectron2")
# Bookkeeping, not weights: BN's update counter and Caffe2's solver state.
_BOOKKEEPING = (re.compile(r".*num_batches_tracked"), re.compile(r".*_momentum"))

_DETECTRON_NORM_KINDS = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_DETECTRON_BRANCHES = {"2a": "conv1", "2b": "conv2", "2c": "conv3"}
_NORM_OF_CONV = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3"}


def is_bookkeeping(name):
    return any(pattern.fullmatch(name) for pattern in _BOOKKEEPING)


def _layer(stage):
    """Caffe2/detectron2 stage ``res<S>`` is torchvision's ``layer<S-1>``."""
    return f"layer{int(stage) - 1}"


def _detectron(name):
    if name == "conv1_w":
        return "conv1.weight"
    if name in ("pred_w", "pred_b"):
        return "fc." + ("weight" if name.endswith("_w") else "bias")
    match = re.fullmatch(r"res_conv1_[bg]n_(s|b|rm|riv)", name)
    if match:
        return f"bn1.{_DETECTRON_NORM_KINDS[match[1]]}"
    match = re.fullmatch(r"res(\d)_(\d+)_branch(1|2[abc])(?:_w|_([bg])n_(s|b|rm|riv))", name)
    if not match:
        return None
    stage, block, branch, _, kind = match.groups()
    prefix = f"{_layer(stage)}.{block}"
    if branch == "1":
        module = "downsample.0" if kind is None else "downsample.1"
    else:
        conv = _DETECTRON_BRANCHES[branch]
        module = conv if kind is None else _NORM_OF_CONV[conv]
    return f"{prefix}.{module}.{'weight' if kind is None else _DETECTRON_NORM_KINDS[kind]}"


def _detectron2(name):
    match = re.fullmatch(r"stem\.conv1\.(norm\.)?(\w+)", name)
    if match:
        return f"{'bn1' if match[1] else 'conv1'}.{match[2]}"
    match = re.fullmatch(r"linear\.(weight|bias)", name)
    if match:
        return f"fc.{match[1]}"
    match = re.fullmatch(r"res(\d)\.(\d+)\.(conv[123]|shortcut)\.(norm\.)?(\w+)", name)
    if not match:
        return None
    stage, block, conv, norm, kind = match.groups()
    if conv == "shortcut":
        module = "downsample.1" if norm else "downsample.0"
    else:
        module = _NORM_OF_CONV[conv] if norm else conv
    return f"{_layer(stage)}.{block}.{module}.{kind}"


def _canonical(name):
    return name if re.fullmatch(r"(conv1|bn1|fc|layer\d\.\d+\.\w+(\.\d)?)\.\w+", name) else None


_RENAMERS = {
    "timm": _canonical,
    "torchvision": _canonical,
    "detectron": _detectron,
    "detectron2": _detectron2,
}


def _common_prefix(names, source):
    """The detector prefix (``backbone.bottom_up.``) before a backbone's names."""
    if source == "detectron2":
        anchor = "stem.conv1.weight"
    elif source in ("timm", "torchvision"):
        anchor = "conv1.weight"
    else:
        return ""
    found = [name[: -len(anchor)] for name in names if name.endswith(anchor)]
    found = [prefix for prefix in found if prefix in ("",) or prefix.endswith(".")]
    # conv1.weight also ends layer1.0.conv1.weight: the stem's is the shortest.
    return min(found, key=len, default="")


def to_canonical(tensors, source):
    """Rename ``tensors`` into canonical names.

    Returns ``(canonical, origin, unmatched, bookkeeping)``: the canonical
    dict, canonical name → source name, the source names no rule matched,
    and the bookkeeping tensors that were skipped on purpose.
    """
    rename = _RENAMERS[source]
    prefix = _common_prefix(tensors, source)
    canonical, origin, unmatched, bookkeeping = {}, {}, [], []
    for name, value in tensors.items():
        if is_bookkeeping(name):
            bookkeeping.append(name)
            continue
        new = rename(name[len(prefix) :]) if name.startswith(prefix) else None
        if new is None:
            unmatched.append(name)
            continue
        canonical[new] = value
        origin[new] = name
    return canonical, origin, sorted(unmatched), sorted(bookkeeping)


def zoo_layer(module):
    """The zoo layer a canonical module (``layer1.0.bn2``) fills, or None."""
    if module in ("conv1", "bn1"):
        return "conv1_conv" if module == "conv1" else "conv1_norm"
    if module == "fc":
        return "logits"
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])", module)
    if not match:
        return None
    layer, block, part = match.groups()
    prefix = f"res{int(layer) + 1}_block{int(block) + 1}"
    if part.startswith("downsample"):
        return f"{prefix}_proj_{'conv' if part.endswith('0') else 'norm'}"
    unit = "abc"[int(part[-1]) - 1]
    return f"{prefix}_{unit}_{'conv' if part.startswith('conv') else 'norm'}"


def split(name):
    """``layer1.0.bn2.running_mean`` → (``layer1.0.bn2``, ``running_mean``)."""
    module, _, kind = name.rpartition(".")
    return module, kind


def architecture(canonical):
    """(block type, blocks per stage) of a canonical ResNet state dict."""
    counts = []
    for layer in range(1, 5):
        blocks = {
            int(m[1]) for m in map(re.compile(rf"layer{layer}\.(\d+)\.").match, canonical) if m
        }
        counts.append(max(blocks) + 1 if blocks else 0)
    block_type = "bottleneck" if any(".conv3." in name for name in canonical) else "basic"
    return block_type, tuple(counts)
