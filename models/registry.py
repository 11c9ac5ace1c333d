"""The model zoo's registry: names, default shapes, and ``build``.

``build(name, norm=...)`` validates every argument up front, makes the norm
factory (:func:`gn_keras.norms.get`) and a :class:`models.common.Builder`,
and returns a functional ``keras.Model`` whose output is logits (no
softmax) when ``include_top=True``.
"""

import dataclasses
import functools

import keras

from gn_keras import _checks, norms
from gn_keras.models import resnet, resnet3d, resnet_cifar, resnetv2, vgg
from gn_keras.models.common import DATA_FORMATS, POOLINGS, TEMPORAL_PADDINGS, Builder, model_input


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build one named model: its function, rank and default input."""

    build_fn: object
    rank: int
    default_input_shape: tuple  # channels_last
    options: tuple = ()  # extra keyword arguments the model accepts
    fixed_spatial_top: bool = False  # the head flattens, so H, W must be known


def _specs():
    specs = {}
    for depth in resnet.DEPTHS:
        fn = functools.partial(resnet.build_resnet, depth=depth)
        specs[f"resnet{depth}"] = ModelSpec(fn, 2, (224, 224, 3))
    narrow = functools.partial(
        resnet.build_resnet, depth=18, stage_widths=resnet.NARROW_STAGE_WIDTHS
    )
    specs["resnet18_narrow"] = ModelSpec(narrow, 2, (224, 224, 3))
    for depth in resnet_cifar.DEPTHS:
        fn = functools.partial(resnet_cifar.build_resnet_cifar, depth=depth)
        specs[f"resnet{depth}"] = ModelSpec(fn, 2, (32, 32, 3), options=("width_multiplier",))
    # Pre-activation ResNet-V2: BiT's stem, or the deep stem of timm's "d" models.
    for depth in resnetv2.DEPTHS:
        for suffix, stem_kind in (("", "bit"), ("d", "deep")):
            fn = functools.partial(resnetv2.build_resnetv2, depth=depth, stem_kind=stem_kind)
            options = ("width_multiplier", "ws_epsilon")
            specs[f"resnetv2_{depth}{suffix}"] = ModelSpec(fn, 2, (224, 224, 3), options=options)
    specs["vgg16"] = ModelSpec(vgg.build_vgg16, 2, (224, 224, 3), fixed_spatial_top=True)
    # 32-frame clips as in the paper's main Kinetics setting (§4.3).
    specs["resnet50_i3d"] = ModelSpec(
        resnet3d.build_resnet50_i3d, 3, (32, 224, 224, 3), options=("temporal_padding",)
    )
    # A CPU-sized I3D for small clips (the video task's default), see resnet3d.
    specs["resnet20_i3d"] = ModelSpec(
        resnet3d.build_resnet20_i3d,
        3,
        (8, 32, 32, 3),
        options=("temporal_padding", "width_multiplier"),
    )
    return specs


_MODELS = _specs()


def available():
    """The model names ``build`` accepts."""
    return tuple(_MODELS)


def _is_positive_int(value):
    return _checks.is_integer(value) and value > 0


def _resolve_input_shape(name, spec, input_shape, data_format, include_top):
    if input_shape is None:
        shape = spec.default_input_shape
        return shape if data_format == "channels_last" else (shape[-1],) + shape[:-1]
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    channels = None
    if shape is not None and len(shape) == spec.rank + 1:
        channels = shape[-1] if data_format == "channels_last" else shape[0]
    valid_dims = shape is not None and all(d is None or _is_positive_int(d) for d in shape)
    if not valid_dims or not _is_positive_int(channels):
        layout = "(T, H, W, C)" if spec.rank == 3 else "(H, W, C)"
        raise ValueError(
            f"models.build({name!r}): argument `input_shape` must be {layout} in "
            f"{data_format} order (C first for channels_first) with a known channel "
            f"count and positive or None sizes, got input_shape={input_shape!r}."
        )
    spatial = shape[:-1] if data_format == "channels_last" else shape[1:]
    if spec.fixed_spatial_top and include_top and None in spatial:
        raise ValueError(
            f"models.build({name!r}): include_top=True flattens the last feature map, "
            f"so input_shape needs known spatial sizes, got input_shape={input_shape!r}."
        )
    return shape


def _check_choice(name, argument, value, choices):
    _checks.check_choice(value, f"`{argument}`", choices, where=f"models.build({name!r})")


def _check_arguments(name, num_classes, include_top, zero_init_residual, options):
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(
            f"models.build: unknown model name={name!r}; valid names are {', '.join(available())}."
        )
    where = f"models.build({name!r})"
    if include_top:
        _checks.check_int(num_classes, "`num_classes`", minimum=1, where=where)
    _checks.check_bool(include_top, "`include_top`", where=where)
    _checks.check_bool(zero_init_residual, "`zero_init_residual`", where=where)
    unknown = sorted(set(options) - set(_MODELS[name].options))
    if unknown:
        raise ValueError(
            f"models.build({name!r}): unexpected argument(s) {unknown}; this model "
            f"also accepts {list(_MODELS[name].options) or 'nothing else'}."
        )


def build(
    name,
    *,
    norm="gn",
    num_classes=1000,
    input_shape=None,
    groups=_checks.DEFAULT_GROUPS,
    group_size=None,
    zero_init_residual=True,
    data_format="channels_last",
    include_top=True,
    pooling="avg",
    **options,
):
    """Build zoo model ``name`` with normalization ``norm``.

    Args:
      name: one of :func:`available`.
      norm: one of :func:`gn_keras.norms.available` (``"gn"``, ``"bn"``, ...).
      num_classes: classifier width when ``include_top``.
      input_shape: without the batch axis, in ``data_format`` order; default
        224×224 RGB (ImageNet models), 32×32 (CIFAR ResNets), 32×224×224
        clips (I3D). ``None`` sizes are allowed except for VGG's flatten head.
      groups, group_size: GN's grouping (for ``gn``, ``gn+ws``, ``keras_gn``).
      zero_init_residual: start each residual block's last γ at 0 (§4.1);
        ResNet-V2 blocks start their last conv at 0 instead (see resnetv2).
      data_format: ``"channels_last"`` or ``"channels_first"``.
      include_top: add the classifier; if False the output is the last
        feature map pooled by ``pooling`` (``"avg"``, ``"max"``, or None
        for the map itself). ``pooling`` is ignored when ``include_top``.
      **options: model-specific: ``width_multiplier`` (CIFAR ResNets,
        ResNet-V2), ``ws_epsilon`` (ResNet-V2 with ``gn+ws``: the ε of its
        weight standardization), ``temporal_padding``
        (``"replicate"``/``"zeros"``, I3D).

    Returns:
      A functional ``keras.Model`` named ``<name>_<norm>``.
    """
    _check_arguments(name, num_classes, include_top, zero_init_residual, options)
    _check_choice(name, "data_format", data_format, DATA_FORMATS)
    _check_choice(name, "pooling", pooling, POOLINGS)
    temporal_padding = options.pop("temporal_padding", "replicate")
    _check_choice(name, "temporal_padding", temporal_padding, TEMPORAL_PADDINGS)
    factory = norms.get(norm, groups=groups, group_size=group_size)
    spec = _MODELS[name]
    shape = _resolve_input_shape(name, spec, input_shape, data_format, include_top)
    builder = Builder(factory, spec.rank, data_format, zero_init_residual, temporal_padding)
    inputs = model_input(shape)
    outputs = spec.build_fn(
        builder,
        builder.enter(inputs),
        include_top=include_top,
        num_classes=num_classes,
        pooling=pooling,
        **options,
    )
    return keras.Model(inputs, builder.leave(outputs), name=f"{name}_{norm.replace('+', '_')}")
