"""Where a Mask R-CNN backbone starts: from scratch, a trained model, or keras.applications.

:func:`backbone_start` turns a ``DetectionConfig`` into the model and input
configs of the run and a ``backbone_fn(model_config)`` for
``DetectionTask`` (called in the strategy's scope):

* **from scratch** (no ``--trained_model``): a fresh zoo backbone;
  ``--backbone_norm=auto`` means GN.
* **a trained zoo model** (a ``gn-train`` ``--model_dir``, a ``.keras`` file
  or a ``gn-export`` SavedModel, all read by :func:`gn_keras.load.load_model`):
  the zoo backbone ``--backbone`` is built with the trained model's norm and
  every weight up to C5 is copied by layer name.  BN becomes BN* by default
  (``--freeze_bn``, :func:`gn_keras.convert.freeze_batchnorm`, the paper's
  §4.2); GN stays GN; ``--backbone_norm=auto`` follows the trained model.
  The trained model's mean/std (its ``preprocessing.json``) normalize the
  images.
* **keras.applications** (``keras.applications:ResNet50[:WEIGHTS]``): that
  network at the detection input size, BN frozen into BN*, its caffe-style
  BGR input turned into RGB by reversing the first conv's input channels,
  and the mean/std its preprocessing uses.

Everything is checked here, before a run writes anything: a mismatch in
depth, norm, GN groups or endpoints is one ``ValueError`` line naming both
the trained model and the flag.  The stem and first stages are then frozen
(``--freeze_at``; -1: 2 for a trained backbone, 0 from scratch, Table 7).
"""

import dataclasses

import keras
import numpy as np

from gn_keras import convert, load, transfer
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.layer import GroupNormalization
from gn_keras.models.detection import fpn
from gn_keras.train.detection import config as config_lib

ENDPOINTS = fpn.ENDPOINTS
BN_FAMILY = ("bn", "sync_bn", "frozen_bn")
# keras.applications.<NAME>'s preprocessing as (RGB mean, std, reversed to BGR?).
_CAFFE = ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0), True)
_TF = ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5), False)
KERAS_APPLICATIONS = {
    "ResNet50": _CAFFE,
    "ResNet101": _CAFFE,
    "ResNet152": _CAFFE,
    "ResNet50V2": _TF,
    "ResNet101V2": _TF,
    "ResNet152V2": _TF,
}


@dataclasses.dataclass
class BackboneStart:
    """The configs of a run and how its backbone is made; ``report`` goes to results.json."""

    model_config: object
    input_config: object
    backbone_fn: object
    report: dict


def _freeze_at(config):
    if config.freeze_at >= 0:
        return config.freeze_at
    return 2 if config.trained_model else 0


def _frozen(backbone, freeze_at):
    transfer.freeze_stages(backbone, freeze_at)
    return backbone


def backbone_start(config):
    """The :class:`BackboneStart` of a validated ``DetectionConfig``."""
    freeze_at = _freeze_at(config)
    source = config.trained_model
    if not source:
        model_config = config_lib.model_config(config)
        return BackboneStart(
            model_config,
            config_lib.input_config(config),
            lambda mc: _frozen(fpn.build_backbone(mc), freeze_at),
            {
                "trained_model": None,
                "freeze_at": freeze_at,
                "backbone_norm": model_config.backbone_norm,
            },
        )
    if source.startswith(config_lib.KERAS_APPLICATIONS_PREFIX):
        return _from_keras_applications(config, freeze_at)
    return _from_trained_model(config, freeze_at)


def _norm_kind(model):
    """``bn``, ``frozen_bn``, ``gn`` or ``none``: the norm layers ``model`` holds."""
    kinds = set()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            kinds.add("bn")
        elif isinstance(layer, FrozenBatchNormalization):
            kinds.add("frozen_bn")
        elif isinstance(layer, GroupNormalization):
            kinds.add("gn")
    if len(kinds) > 1:
        raise ValueError(f"holds several normalizations ({sorted(kinds)}); one is needed.")
    return kinds.pop() if kinds else "none"


def _target_norm(config, kind, where):
    """The backbone norm for weights of ``kind``, checked against --backbone_norm."""
    asked = config.backbone_norm
    if asked == "auto":
        if kind == "bn":
            return "frozen_bn" if config.freeze_bn else "bn"
        return kind
    allowed = BN_FAMILY if kind == "bn" else ("gn", "ln") if kind == "gn" else (kind,)
    if asked not in allowed:
        raise ValueError(
            f"{where} normalizes with {kind} but --backbone_norm={asked}; use "
            f"--backbone_norm=auto or one of {', '.join(allowed)}."
        )
    return asked


def _weighted_layers(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


def _source_backbone(trained, where):
    endpoints = transfer.stage_endpoints(trained)
    missing = [name for name in ENDPOINTS if name not in endpoints]
    if missing:
        raise ValueError(
            f"{where} lacks the endpoints {missing} a Mask R-CNN backbone needs "
            f"(it has {sorted(endpoints) or 'none'}); use a ResNet with four stages."
        )
    return keras.Model(trained.input, endpoints["C5"])


def _check_same_layers(source, target, where, config):
    src, dst = _weighted_layers(source), _weighted_layers(target)
    if set(src) != set(dst):
        missing = sorted(set(dst) - set(src))
        extra = sorted(set(src) - set(dst))
        raise ValueError(
            f"{where} ({len(src)} weighted layers up to C5) does not match --backbone="
            f"{config.backbone} ({len(dst)}): "
            + (f"it lacks {missing[0]!r}" if missing else f"it has the extra {extra[0]!r}")
            + "; set --backbone to the trained model's depth."
        )
    for name, layer in dst.items():
        other = src[name]
        if type(other) is not type(layer):
            raise ValueError(
                f"{where}: layer {name!r} is a {type(other).__name__} but --backbone_norm="
                f"{config.backbone_norm} builds a {type(layer).__name__}."
            )
        if isinstance(layer, GroupNormalization):
            theirs = (other.groups, other.group_size)
            ours = (layer.groups, layer.group_size)
            if theirs != ours:
                raise ValueError(
                    f"{where}: GN layer {name!r} has (groups, group_size)={theirs} but "
                    f"--groups/--group_size give {ours}."
                )
        shapes = [tuple(w.shape) for w in other.weights]
        if shapes != [tuple(w.shape) for w in layer.weights]:
            raise ValueError(
                f"{where}: layer {name!r} has weights {shapes} but --backbone="
                f"{config.backbone} needs {[tuple(w.shape) for w in layer.weights]}."
            )
    return [np.asarray(w) for name in dst for w in src[name].weights], list(dst)


def _set_by_layer(backbone, names, values):
    layers = _weighted_layers(backbone)
    flat = [w for name in names for w in layers[name].weights]
    for variable, value in zip(flat, values, strict=True):
        variable.assign(value)


def _from_trained_model(config, freeze_at):
    where = f"--trained_model={config.trained_model}"
    trained = load.load_model(config.trained_model)
    preprocessing = load.load_preprocessing(config.trained_model)
    try:
        kind = _norm_kind(trained)
    except ValueError as error:
        raise ValueError(f"{where} {error}") from None
    norm = _target_norm(config, kind, where)
    if kind == "bn" and norm == "frozen_bn":
        trained = convert.freeze_batchnorm(trained)
    if preprocessing.get("channels", 3) != 3:
        raise ValueError(
            f"{where} takes {preprocessing['channels']}-channel images; detection needs RGB."
        )
    model_config = config_lib.model_config(config, backbone_norm=norm).validate()
    target = fpn.build_backbone(model_config)
    values, names = _check_same_layers(
        _source_backbone(trained, where), target, where, model_config
    )
    input_config = dataclasses.replace(
        config_lib.input_config(config),
        mean=tuple(float(v) for v in preprocessing["mean"]),
        std=tuple(float(v) for v in preprocessing["std"]),
    )

    def backbone_fn(mc):
        backbone = fpn.build_backbone(mc)
        _set_by_layer(backbone, names, values)
        return _frozen(backbone, freeze_at)

    report = {
        "trained_model": config.trained_model,
        "trained_norm": kind,
        "backbone_norm": norm,
        "freeze_at": freeze_at,
        "copied_layers": len(names),
    }
    return BackboneStart(model_config, input_config, backbone_fn, report)


def parse_keras_applications(source):
    """``(NAME, weights)`` of ``keras.applications:NAME[:WEIGHTS]``."""
    rest = source[len(config_lib.KERAS_APPLICATIONS_PREFIX) :]
    name, _, weights = rest.partition(":")
    if name not in KERAS_APPLICATIONS:
        raise ValueError(
            f"--trained_model={source}: {name!r} is not one of the keras.applications "
            f"ResNets {', '.join(KERAS_APPLICATIONS)}."
        )
    return name, weights or "imagenet"


def keras_application_backbone(name, weights, image_size, freeze_bn):
    """keras.applications ``name`` at ``image_size``, BN* if asked, RGB input, cut at C2..C5."""
    network = getattr(keras.applications, name)(
        include_top=False, weights=weights, input_shape=(*image_size, 3)
    )
    if freeze_bn:
        network = convert.freeze_batchnorm(network)
    if KERAS_APPLICATIONS[name][2]:  # caffe mode feeds BGR: take RGB instead
        conv = network.get_layer("conv1_conv")
        conv.kernel.assign(np.asarray(conv.kernel)[:, :, ::-1, :])
    endpoints = transfer.stage_endpoints(network)
    return keras.Model(network.input, {k: endpoints[k] for k in ENDPOINTS}, name=name.lower())


def _from_keras_applications(config, freeze_at):
    where = f"--trained_model={config.trained_model}"
    name, weights = parse_keras_applications(config.trained_model)
    depth = name.lower().removesuffix("v2")
    if depth != config.backbone:
        raise ValueError(f"{where} is a {depth} but --backbone={config.backbone}.")
    norm = _target_norm(config, "bn", where)
    model_config = config_lib.model_config(config, backbone_norm=norm).validate()
    frozen_bn = norm == "frozen_bn"
    try:
        loaded = keras_application_backbone(name, weights, model_config.image_size, frozen_bn)
    except (ValueError, OSError) as error:
        raise ValueError(f"{where}: {str(error).splitlines()[0]}") from None
    values = [np.asarray(w) for w in loaded.weights]
    mean, std, _ = KERAS_APPLICATIONS[name]
    input_config = dataclasses.replace(config_lib.input_config(config), mean=mean, std=std)

    def backbone_fn(mc):
        backbone = keras_application_backbone(name, None, mc.image_size, frozen_bn)
        for variable, value in zip(backbone.weights, values, strict=True):
            variable.assign(value)
        return _frozen(backbone, freeze_at)

    report = {
        "trained_model": config.trained_model,
        "trained_norm": "bn",
        "backbone_norm": norm,
        "freeze_at": freeze_at,
    }
    return BackboneStart(model_config, input_config, backbone_fn, report)
