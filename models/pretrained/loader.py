"""From a checkpoint of another library to a zoo ResNet with its preprocessing.

:func:`convert_checkpoint` reads the checkpoint, renames its tensors
(:mod:`.names`), checks depth and norm against what was asked, builds the
zoo model with :func:`gn_keras.models.build` and fills it (:mod:`.assign`).
Anything left over or left empty is refused in one line unless
``allow_partial``. :func:`load_pretrained` returns just the model.

timm's pre-activation ResNet-V2 (BiT, ``resnetv2_50d_gn``) goes the same way
through :mod:`.timm_resnetv2`, into the zoo's ``resnetv2_*``.

Preprocessing (``preprocessing.json``, 0–255 pixel scale): the ImageNet
mean/std of torchvision and timm (the Inception mean/std for timm's
ResNet-V2), or timm's ``pretrained_cfg`` for a hub model; Caffe2 (Detectron)
and detectron2 models read BGR pixels with only the pixel means subtracted.
Their first conv is flipped to RGB here (see :mod:`.assign`), so the mean is
stored in RGB order and std is 1.
"""

import dataclasses
import os

from gn_keras import _checks, load
from gn_keras.models import registry, resnet
from gn_keras.models.pretrained import assign, checkpoints, names, timm_resnetv2
from gn_keras.preprocessing import IMAGENET_MEAN, IMAGENET_STD

NORMS = ("gn", "bn", "frozen_bn", "sync_bn", "gn+ws")
RESNETV2_MODELS = tuple(name for name in registry.available() if name.startswith("resnetv2_"))
MODELS = tuple(f"resnet{depth}" for depth in resnet.DEPTHS) + RESNETV2_MODELS
INPUT_FORMATS = ("rgb", "bgr")
DEFAULT_IMAGE_SIZE = 224
# Caffe2 BGR pixel means: Detectron's PIXEL_MEANS, detectron2's PIXEL_MEAN.
_BGR_MEANS = {"detectron": (102.9801, 115.9465, 122.7717), "detectron2": (103.53, 116.28, 123.675)}
_SHOWN = 4  # names listed in a refusal before "+N more"


@dataclasses.dataclass
class Conversion:
    """A converted model, its ``preprocessing.json`` dict and the report."""

    model: object
    preprocessing: dict
    report: dict
    canonical: dict  # torchvision-named source tensors, for verification
    source_bgr: bool


def _fail(where, problem):
    raise load.ModelFileError(where, problem)


def _check_arguments(source, model, norm, groups, image_size, num_classes, input_format):
    where = "load_pretrained"
    _checks.check_choice(source, "`source`", names.SOURCES, where)
    if model is not None and model not in MODELS:
        expected = f"one of {', '.join(MODELS)} (or None: taken from the checkpoint)"
        raise _checks.invalid("`model`", model, expected, where)
    _checks.check_choice(norm, "`norm`", NORMS, where)
    for argument, value in (
        ("groups", groups),
        ("image_size", image_size),
        ("num_classes", num_classes),
    ):
        _checks.check_int(value, f"`{argument}`", minimum=1, optional=True, where=where)
    if input_format is not None:
        _checks.check_choice(input_format, "`input_format`", INPUT_FORMATS, where)


def _model_name(canonical, asked, where):
    block_type, counts = names.architecture(canonical)
    found = [f"resnet{d}" for d, spec in resnet.DEPTHS.items() if spec == (block_type, counts)]
    described = f"{block_type} blocks {'/'.join(map(str, counts))}"
    if not found:
        _fail(where, f"holds no zoo ResNet ({described}); is `source` right?")
    if asked is not None and asked != found[0]:
        _fail(where, f"holds a {found[0]} ({described}) but model={asked} was asked.")
    return found[0]


def _source_norm(canonical, original_names):
    """``bn`` (running statistics), ``affine`` (Caffe2 AffineChannel) or ``gn``."""
    if any(name.endswith("running_mean") for name in canonical):
        return "bn"
    if any("_bn_" in name for name in original_names):
        return "affine"
    return "gn"


def _check_norm(found, norm, where, resnetv2):
    if resnetv2 and (found != "gn" or norm not in timm_resnetv2.NORMS):
        _fail(
            where,
            f"holds a ResNet-V2; only GN ones convert, with norm=gn or gn+ws "
            f"(BiT's WS convs), not norm={norm}.",
        )
    if norm == "gn+ws" and not resnetv2:
        _fail(
            where,
            "holds a ResNet (v1.5) with plain convs; norm=gn+ws is for timm's ResNet-V2 (BiT).",
        )
    wanted_bn = norm not in ("gn", "gn+ws")
    if (found == "gn") == wanted_bn:
        held = {"gn": "GN layers (no running statistics)", "bn": "BN layers", "affine": "affine BN"}
        other = "norm=gn" if wanted_bn else "norm=bn or norm=frozen_bn"
        _fail(where, f"holds {held[found]} but norm={norm} was asked; use {other}.")


def _listed(items):
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def _refuse_partial(result, where):
    problems = []
    if result.unused:
        problems.append(f"{len(result.unused)} source tensor(s) unused: {_listed(result.unused)}")
    if result.missing:
        problems.append(
            f"{len(result.missing)} model weight(s) not filled: {_listed(result.missing)}"
        )
    if result.mismatched:
        problems.append(
            f"{len(result.mismatched)} shape mismatch(es): {_listed(result.mismatched)}"
        )
    if problems:
        _fail(
            where,
            "; ".join(problems) + "; pass allow_partial=True (--allow_partial) to load the rest.",
        )


def _preprocessing(source, bgr, image_size, num_classes, hub_config, resnetv2):
    spec = {"image_size": [image_size, image_size], "channels": 3}
    if bgr:
        bgr_means = _BGR_MEANS.get(source, _BGR_MEANS["detectron2"])
        spec.update(mean=list(bgr_means[::-1]), std=[1.0, 1.0, 1.0], source_channel_order="BGR")
    else:
        # timm and torchvision give them on the 0–1 scale; ours is 0–255.
        config = hub_config or {}
        unit = (timm_resnetv2.MEAN, timm_resnetv2.STD) if resnetv2 else (None, None)
        mean, std = config.get("mean", unit[0]), config.get("std", unit[1])
        spec.update(
            mean=list(IMAGENET_MEAN) if mean is None else [255.0 * m for m in mean],
            std=list(IMAGENET_STD) if std is None else [255.0 * s for s in std],
        )
        spec.update(source_channel_order="RGB")
        spec.update(crop_fraction=float(config.get("crop_pct", 0.875)))
        spec.update(interpolation=config.get("interpolation", "bilinear"))
    spec.update(data_format="channels_last", num_classes=num_classes)
    spec["preprocessing_from"] = "timm pretrained_cfg" if hub_config else f"{source} defaults"
    return load.check_preprocessing(spec, where="load_pretrained")


def _read(source, checkpoint):
    checkpoint = os.fspath(checkpoint)
    if checkpoint.startswith(checkpoints.HUB_PREFIX):
        if source != "timm":
            raise ValueError(
                f"checkpoint={checkpoint} (timm's hub) needs source=timm, got source={source}."
            )
        tensors, config = checkpoints.read_hub(checkpoint[len(checkpoints.HUB_PREFIX) :])
        return tensors, config, None
    return checkpoints.read_file(checkpoint), None, checkpoints.file_digest(checkpoint)


@dataclasses.dataclass
class _ReadCheckpoint:
    """A checkpoint read, renamed to torchvision's names and checked against what was asked."""

    where: str  # the checkpoint as given, for messages
    digest: str | None  # sha256 of a file; None for timm's hub
    hub_config: dict | None  # timm's pretrained_cfg for a hub model
    canonical: dict  # torchvision-named tensors
    origin: dict  # canonical name -> the source's name
    unmatched: list  # source tensors with no canonical name
    bookkeeping: list  # source tensors that hold no weights (e.g. num_batches_tracked)
    model: str  # the zoo ResNet of the checkpoint's depth
    source_norm: str  # "bn", "affine" or "gn"
    width_multiplier: int | None  # a ResNet-V2's width (None: a ResNet)

    @property
    def resnetv2(self):
        return self.width_multiplier is not None


def _read_checked(source, checkpoint, model, norm):
    """Read and rename ``checkpoint``; refuse a depth other than ``model`` or a wrong norm."""
    where = os.fspath(checkpoint)
    tensors, hub_config, digest = _read(source, checkpoint)
    width_multiplier = None
    if source == "timm" and timm_resnetv2.holds_resnetv2(tensors):
        canonical, origin, unmatched, bookkeeping = timm_resnetv2.to_canonical(tensors)
        name, width_multiplier = timm_resnetv2.model_name(
            canonical, model, lambda problem: _fail(where, problem)
        )
    else:
        canonical, origin, unmatched, bookkeeping = names.to_canonical(tensors, source)
        name = _model_name(canonical, model, where)
    found_norm = _source_norm(canonical, origin.values())
    _check_norm(found_norm, norm, where, width_multiplier is not None)
    return _ReadCheckpoint(
        where,
        digest,
        hub_config,
        canonical,
        origin,
        unmatched,
        bookkeeping,
        name,
        found_norm,
        width_multiplier,
    )


def _defaults(source, read, num_classes, image_size, input_format):
    """``(num_classes, image_size, bgr)``: as given, else from the checkpoint or the source."""
    if num_classes is None:
        fc = read.canonical.get(timm_resnetv2.CLASSIFIER if read.resnetv2 else "fc.weight")
        num_classes = 1000 if fc is None else fc.shape[0]
    if image_size is None:
        image_size = int((read.hub_config or {}).get("input_size", (DEFAULT_IMAGE_SIZE,))[-1])
    bgr = (input_format or ("bgr" if source.startswith("detectron") else "rgb")) == "bgr"
    return num_classes, image_size, bgr


def _filled_model(read, bgr, allow_partial, **build_arguments):
    """``(model, fill result)`` of the zoo model; a partial fill is refused unless allowed."""
    zoo_layer = names.zoo_layer
    if read.resnetv2:
        zoo_layer = timm_resnetv2.zoo_layer
        build_arguments.update(width_multiplier=read.width_multiplier)
        build_arguments.update(timm_resnetv2.build_options(build_arguments["norm"]))
    keras_model = registry.build(read.model, **build_arguments)
    result = assign.fill(
        keras_model, read.canonical, read.origin, flip_input_channels=bgr, zoo_layer=zoo_layer
    )
    result.unused = sorted(result.unused + read.unmatched)
    if not allow_partial:
        _refuse_partial(result, read.where)
    return keras_model, result


def _report(source, read, settings, result):
    """The conversion report: where from, the settings used, and what was filled or left."""
    report = {
        "source": source,
        "checkpoint": read.where if read.digest is None else os.path.abspath(read.where),
        "checkpoint_sha256": read.digest,
        "model": read.model,
        "norm": settings["norm"],
        "groups": settings["groups"],
        "source_norm": read.source_norm,
        "num_classes": settings["num_classes"],
        "image_size": settings["image_size"],
        "source_channel_order": settings["source_channel_order"],
        "allow_partial": settings["allow_partial"],
        "filled_weights": len(result.filled),
        "unused_source_tensors": result.unused,
        "missing_model_weights": result.missing,
        "mismatched": result.mismatched,
        "skipped_bookkeeping_tensors": len(read.bookkeeping),
    }
    if read.resnetv2:
        report["width_multiplier"] = read.width_multiplier
        report["ws_epsilon"] = timm_resnetv2.build_options(settings["norm"]).get("ws_epsilon")
    return report


def convert_checkpoint(
    source,
    checkpoint,
    model=None,
    norm="gn",
    *,
    groups=32,
    num_classes=None,
    image_size=None,
    input_format=None,
    allow_partial=False,
):
    """Convert a timm/torchvision/Detectron/detectron2 ResNet into the zoo.

    Args:
      source: ``"timm"``, ``"torchvision"``, ``"detectron"`` or ``"detectron2"``.
      checkpoint: a ``.pth``/``.pt``/``.bin``/``.safetensors``/``.pkl`` path, or
        ``"hub:NAME"`` for timm to download (``source="timm"`` only).
      model: ``"resnet18"`` … ``"resnet152"``, or ``"resnetv2_50"`` …
        ``"resnetv2_152d"`` for timm's ResNet-V2; None takes the checkpoint's depth.
      norm: ``"gn"`` for a GN checkpoint; ``"bn"``, ``"frozen_bn"`` (BN*) or
        ``"sync_bn"`` for a BN (or Caffe2 affine) one; ``"gn+ws"`` for BiT
        (timm's ``resnetv2_*_bit``, whose convs standardize their kernels:
        the checkpoint cannot say so).
      groups: GN's group count (not stored in checkpoints; timm and
        Detectron use 32).
      num_classes: the classifier width; default the checkpoint's fc (1000
        without one).
      image_size: the model's fixed input side; default the source's (224).
      input_format: ``"rgb"`` or ``"bgr"``: the channel order the source model
        reads; default BGR for Detectron and detectron2, else RGB.
      allow_partial: load what fits instead of refusing on unused, missing or
        mismatched tensors (all are listed in the report either way).

    Returns:
      A :class:`Conversion`. Raises ``ValueError`` for a bad argument and
      :class:`gn_keras.load.ModelFileError` (a ``ValueError``) naming the
      checkpoint for an unreadable file or a depth, norm or tensor mismatch.
    """
    _check_arguments(source, model, norm, groups, image_size, num_classes, input_format)
    read = _read_checked(source, checkpoint, model, norm)
    num_classes, image_size, bgr = _defaults(source, read, num_classes, image_size, input_format)
    keras_model, result = _filled_model(
        read,
        bgr,
        allow_partial,
        norm=norm,
        groups=groups,
        num_classes=num_classes,
        input_shape=(image_size, image_size, 3),
    )
    settings = {
        "norm": norm,
        "groups": groups if norm in ("gn", "gn+ws") else None,
        "num_classes": num_classes,
        "image_size": image_size,
        "source_channel_order": "BGR" if bgr else "RGB",
        "allow_partial": allow_partial,
    }
    preprocessing = _preprocessing(
        source, bgr, image_size, num_classes, read.hub_config, read.resnetv2
    )
    return Conversion(
        keras_model, preprocessing, _report(source, read, settings, result), read.canonical, bgr
    )


def load_pretrained(source, checkpoint, model=None, norm="gn", **options):
    """The zoo model holding ``checkpoint``'s weights; see :func:`convert_checkpoint`."""
    return convert_checkpoint(source, checkpoint, model, norm, **options).model
