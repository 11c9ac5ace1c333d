"""Filling a zoo ResNet's weights from a canonical (torchvision-named) state dict.

Layouts change on the way: a PyTorch/Caffe2 conv kernel ``(O, I, kh, kw)``
becomes Keras's ``(kh, kw, I, O)`` and an fc weight ``(O, I)`` becomes
``(I, O)``. A norm's ``weight``/``bias`` go to γ/β and BN's running
statistics to the moving ones (of BN, sync BN or BN*).

Caffe2's affine "BN" (Detectron's ``_bn_s``/``_bn_b``, an AffineChannel:
``s·x + b``) has no statistics; it becomes a BN with μ = 0 and σ² = 1 − ε,
so that γ·(x − μ)/√(σ² + ε) + β is exactly ``s·x + b``.

A BGR source (Caffe2 models read BGR images) gets its first conv's input
channels reversed, so the Keras model reads RGB like every other zoo model.

:func:`fill` never raises on a bad tensor: it returns what it used, what it
could not fill and why, and the caller decides (``allow_partial``).
"""

import collections
import dataclasses

import numpy as np

from gn_keras.models.pretrained import names

# Keras variable name -> the canonical tensor kind it comes from.
_SOURCE_KIND = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


@dataclasses.dataclass
class FillResult:
    """What :func:`fill` did; names are source names and Keras weight paths."""

    filled: list = dataclasses.field(default_factory=list)  # Keras weight paths
    unused: list = dataclasses.field(default_factory=list)  # source tensor names
    missing: list = dataclasses.field(default_factory=list)  # Keras weight paths
    # "source as (Keras-layout shape) vs path (shape)": neither unused nor missing, not loaded
    mismatched: list = dataclasses.field(default_factory=list)


def _keras_layout(kind, value, flip_input_channels):
    """A canonical tensor in the layout of the Keras variable it fills."""
    value = np.asarray(value, np.float32)
    if kind != "weight":
        return value
    if value.ndim == 4:  # conv (O, I, kh, kw)
        if flip_input_channels:
            value = value[:, ::-1]
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # fc (O, I)
        return value.T
    return value


def _affine_statistics(variable, tensors, layer):
    """μ = 0, σ² = 1 − ε for a norm whose source has scale and bias only."""
    if "running_mean" in tensors or "weight" not in tensors:
        return None
    channels = tensors["weight"].shape
    if variable.name == "moving_mean":
        return np.zeros(channels, np.float32)
    return np.full(channels, 1.0 - layer.epsilon, np.float32)


def _group_by_module(canonical):
    modules = collections.defaultdict(dict)
    for name, value in canonical.items():
        module, kind = names.split(name)
        modules[module][kind] = value
    return modules


def _fill_layer(layer, module, tensors, origin, result, flip):
    used = set()
    for variable in layer.weights:
        source_kind = _SOURCE_KIND.get(variable.name)
        value = tensors.get(source_kind)
        if value is None and variable.name in ("moving_mean", "moving_variance"):
            value = _affine_statistics(variable, tensors, layer)
        if value is None:
            result.missing.append(variable.path)
            continue
        value = _keras_layout(source_kind, value, flip)
        source_name = origin.get(f"{module}.{source_kind}", f"{module}.{source_kind}")
        if tuple(value.shape) != tuple(variable.shape):
            result.mismatched.append(
                f"{source_name} as {tuple(value.shape)} vs {variable.path} {tuple(variable.shape)}"
            )
            used.add(source_kind)  # reported as mismatched, not again as unused
            continue
        variable.assign(value)
        used.add(source_kind)
        result.filled.append(variable.path)
    unused = sorted(set(tensors) - used)
    return [origin.get(f"{module}.{kind}", f"{module}.{kind}") for kind in unused]


def fill(model, canonical, origin, *, flip_input_channels=False, zoo_layer=names.zoo_layer):
    """Assign ``canonical`` (torchvision names) into zoo ResNet ``model`` in place.

    ``origin`` maps canonical names back to the source's names for the
    report; ``flip_input_channels`` reverses the stem conv's input channels
    (BGR source → RGB model); ``zoo_layer`` names the layer a canonical
    module fills (another family's map, e.g. timm's ResNet-V2).
    """
    result = FillResult()
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    reached = set()
    for module, tensors in sorted(_group_by_module(canonical).items()):
        layer = layers.get(zoo_layer(module))
        if layer is None:
            result.unused += [
                origin.get(f"{module}.{kind}", f"{module}.{kind}") for kind in tensors
            ]
            continue
        reached.add(layer.name)
        flip = flip_input_channels and module == "conv1"
        result.unused += _fill_layer(layer, module, tensors, origin, result, flip)
    for name, layer in layers.items():
        if name not in reached:
            result.missing += [variable.path for variable in layer.weights]
    result.unused.sort()
    return result
