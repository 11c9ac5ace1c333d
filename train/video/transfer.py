"""``--trained_model``: a 2D model's weights inflated into the video model (the paper's §4.3).

"The models are pre-trained from ImageNet": the 2D network's weights are
inflated into the I3D model (``models.inflate_2d_to_3d``: each conv kernel
repeated over its temporal size and divided by it), so a clip of identical
frames starts with the 2D network's features.  The classifier is not taken:
the video classes are new, and the video model keeps its fresh head.

Normalization is "extended from over (H, W) to over (T, H, W)" for BN and
GN alike: the 3D layers reduce over time too, and what the 2D layers learnt
(γ, β, and BN's moving mean and variance) is copied unchanged, which is
exact for a clip of identical frames.

The 2D model must be the 3D model's parent: the zoo names a model
``<name>_<norm>`` (``resnet20_gn``), and ``resnet20_i3d`` with ``--norm=gn``
needs a ``resnet20_gn``; GN must use the same grouping.  Anything else is
one line naming both.
"""

from absl import logging

from gn_keras import load, models
from gn_keras import transfer as transfer_lib
from gn_keras._checks import FlagError
from gn_keras.layer import GroupNormalization
from gn_keras.train.video import task as task_lib

_I3D_SUFFIX = "_i3d"


def parent_name(config):
    """The zoo name of the 2D model ``config.model`` inflates, with its norm."""
    return f"{config.model.removesuffix(_I3D_SUFFIX)}_{config.norm.replace('+', '_')}"


def _wanted(config):
    return f"--model={config.model} --norm={config.norm} needs a 2D {parent_name(config)}"


def check_parent(model2d, config):
    """Refuse a 2D model of another depth, norm or GN grouping (one line naming both)."""
    accepted = (parent_name(config), f"{config.model}_{config.norm.replace('+', '_')}")
    if model2d.name not in accepted:
        raise FlagError(
            f"--trained_model={config.trained_model} is a {model2d.name} model but "
            f"{_wanted(config)}; train one with the same depth and --norm."
        )


def _check_grouping(model2d, model3d, config):
    layers2d = {layer.name: layer for layer in model2d.layers}
    for layer in model3d.layers:
        source = layers2d.get(layer.name)
        if isinstance(layer, GroupNormalization) and isinstance(source, GroupNormalization):
            if (source.groups, source.group_size) != (layer.groups, layer.group_size):
                raise FlagError(
                    f"--trained_model={config.trained_model} has GN groups={source.groups}, "
                    f"group_size={source.group_size} in {layer.name!r} but --groups="
                    f"{config.groups} --group_size={config.group_size} gives groups="
                    f"{layer.groups}, group_size={layer.group_size}; use the 2D model's grouping."
                )


def inflate_backbone(model2d, model3d, config):
    """Inflate every weight of ``model2d`` but its classifier into ``model3d`` (in place).

    A 3D twin with the 2D model's class count takes the whole inflation
    (``models.inflate_2d_to_3d``); every layer but the head is then copied
    into ``model3d`` by name.
    """
    check_parent(model2d, config)
    _check_grouping(model2d, model3d, config)
    channels2d, channels3d = model2d.inputs[0].shape[-1], model3d.inputs[0].shape[-1]
    if channels2d != channels3d:
        raise FlagError(
            f"--trained_model={config.trained_model} ({model2d.name}) does not fit "
            f"--model={config.model}: it takes {channels2d}-channel images, the clips have "
            f"{channels3d} channels."
        )
    head2d = transfer_lib.find_head(model2d)[0]
    head3d = transfer_lib.find_head(model3d)[0]
    frames, height, width, channels = model3d.inputs[0].shape[1:]
    twin = task_lib.build_zoo_video_model(
        config,
        {"num_classes": head2d.units, "clip_shape": [frames, height, width], "channels": channels},
    )
    try:
        models.inflate_2d_to_3d(model2d, twin)
    except ValueError as error:  # e.g. another width or input channel count
        raise FlagError(
            f"--trained_model={config.trained_model} ({model2d.name}) does not fit "
            f"--model={config.model}: {str(error).strip().splitlines()[0]}"
        ) from None
    twin_layers = {layer.name: layer for layer in twin.layers}
    copied = 0
    for layer in model3d.layers:
        if layer.name == head3d.name or not layer.weights:
            continue
        layer.set_weights(twin_layers[layer.name].get_weights())
        copied += 1
    return copied


def make_builder(config):
    """``build_model(config, preprocessing)`` for ``VideoTask``: the zoo model, inflated.

    Checks that ``config.trained_model`` names a model before any data is
    read; the model is loaded when the run builds its own (in the strategy's
    scope).
    """
    load.resolve_model_path(config.trained_model)

    def build_model(run_config, preprocessing):
        model2d = load.load_model(run_config.trained_model)
        model3d = task_lib.build_zoo_video_model(run_config, preprocessing)
        copied = inflate_backbone(model2d, model3d, run_config)
        logging.info(
            "Inflated %d layers of %s (%s) into %s; the head starts fresh.",
            copied,
            run_config.trained_model,
            model2d.name,
            model3d.name,
        )
        return model3d

    return build_model
