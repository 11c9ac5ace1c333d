"""Inflating a 2D ResNet's weights into its 3D (I3D) twin.

Carreira & Zisserman (2017) start a video network from an image network by
repeating each 2D kernel along time and dividing by the temporal size, so
that a "boring" clip of identical frames gives the 2D activations; the
paper's I3D models are "pre-trained from ImageNet" this way (§4.3).
"""

import keras
from keras import ops

from gn_keras.weight_convs import copy_conv_weights


def _weighted_layers(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


def _repeat_in_time(frames):
    def inflate(kernel):
        return ops.repeat(ops.expand_dims(kernel, 0), frames, axis=0) / frames

    return inflate


def _copy_same_shapes(source, target):
    for src, dst in zip(source.weights, target.weights):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(
                f"inflate_2d_to_3d: layer {target.name!r} variable {dst.name!r} has "
                f"shape {tuple(dst.shape)} in the 3D model but {tuple(src.shape)} in the 2D one."
            )
        dst.assign(src)


def inflate_2d_to_3d(model2d, model3d):
    """Copy ``model2d``'s weights into ``model3d`` (in place) and return it.

    Layers are matched by name (the zoo's names agree between ``resnet50``
    and ``resnet50_i3d``, for the same ``norm`` and ``num_classes``). Each
    conv kernel of temporal size T becomes the 2D kernel repeated T times
    and divided by T (for a weight-normalized conv, the kernel it applies);
    normalization and classifier weights are copied unchanged.
    """
    layers2d, layers3d = _weighted_layers(model2d), _weighted_layers(model3d)
    if set(layers2d) != set(layers3d):
        missing = sorted(set(layers2d) ^ set(layers3d))[:5]
        raise ValueError(
            f"inflate_2d_to_3d: models {model2d.name!r} and {model3d.name!r} do not "
            f"have the same weighted layers (e.g. {missing}); build both with "
            "the same norm and num_classes."
        )
    for name, target in layers3d.items():
        source = layers2d[name]
        if (
            isinstance(target, keras.layers.Conv3D)
            and len(target.kernel.shape) == len(source.kernel.shape) + 1
        ):
            copy_conv_weights(source, target, _repeat_in_time(target.kernel.shape[0]))
        elif len(source.weights) == len(target.weights):
            _copy_same_shapes(source, target)
        else:
            raise ValueError(
                f"inflate_2d_to_3d: layer {name!r} is a {type(source).__name__} in the "
                f"2D model but a {type(target).__name__} in the 3D one."
            )
    return model3d
