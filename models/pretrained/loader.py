"""From a checkpoint of another library to a zoo ResNet with its preprocessing.

:func:`convert_checkpoint` reads the checkpoint, renames its tensors
(:mod:`.names`), checks depth and norm against what was asked, builds the
zoo model with :func:`gn_keras.models.build` and fills it (:mod:`.assign`).
Anything left over or left empty is refused in one line unless
``allow_partial``. :func:`load_pretrained` returns just the model.

Preprocessing (``preprocessing.json``, 0–255 pixel scale): the ImageNet
mean/std of torchvision and timm, or timm's ``pretrained_cfg`` for a hub
model; Caffe2 (Detectron) and detectron2 models read BGR pixels with only
the pixel means subtracted. Their first conv is flipped to RGB here (see
:mod:`.assign`), so the mean is stored in RGB order and std is 1.
"""

import dataclasses
import os

from gn_keras import _checks, load
from gn_keras.models import registry, resnet
from gn_keras.models.pretrained import assign, checkpoints, names

NORMS = ("gn", "bn", "frozen_bn", "sync_bn")
MODELS = tuple(f"resnet{depth}" for depth in resnet.DEPTHS)
INPUT_FORMATS = ("rgb", "bgr")
DEFAULT_IMAGE_SIZE = 224
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
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
    def bad(argument, value, expected):
        raise ValueError(
            f"load_pretrained: argument `{argument}` must be {expected}, got {value!r}."
        )

    if source not in names.SOURCES:
        bad("source", source, f"one of {list(names.SOURCES)}")
    if model is not None and model not in MODELS:
        bad("model", model, f"one of {list(MODELS)} (or None: taken from the checkpoint)")
    if norm not in NORMS:
        bad("norm", norm, f"one of {list(NORMS)}")
    for argument, value in (
        ("groups", groups),
        ("image_size", image_size),
        ("num_classes", num_classes),
    ):
        if value is not None and not (_checks.is_integer(value) and value > 0):
            bad(argument, value, "a positive integer")
    if input_format is not None and input_format not in INPUT_FORMATS:
        bad("input_format", input_format, f"one of {list(INPUT_FORMATS)}")


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


def _check_norm(found, norm, where):
    wanted_bn = norm != "gn"
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


def _preprocessing(source, bgr, image_size, num_classes, hub_config):
    spec = {"image_size": [image_size, image_size], "channels": 3}
    if bgr:
        bgr_means = _BGR_MEANS.get(source, _BGR_MEANS["detectron2"])
        spec.update(mean=list(bgr_means[::-1]), std=[1.0, 1.0, 1.0], source_channel_order="BGR")
    else:
        config = hub_config or {}
        mean, std = config.get("mean", _IMAGENET_MEAN), config.get("std", _IMAGENET_STD)
        spec.update(mean=[255.0 * m for m in mean], std=[255.0 * s for s in std])
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
      model: ``"resnet18"`` … ``"resnet152"``; None takes the checkpoint's depth.
      norm: ``"gn"`` for a GN checkpoint; ``"bn"``, ``"frozen_bn"`` (BN*) or
        ``"sync_bn"`` for a BN (or Caffe2 affine) one.
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
    where = os.fspath(checkpoint)
    tensors, hub_config, digest = _read(source, checkpoint)
    canonical, origin, unmatched, bookkeeping = names.to_canonical(tensors, source)
    name = _model_name(canonical, model, where)
    found_norm = _source_norm(canonical, origin.values())
    _check_norm(found_norm, norm, where)
    if num_classes is None:
        num_classes = canonical["fc.weight"].shape[0] if "fc.weight" in canonical else 1000
    if image_size is None:
        image_size = int((hub_config or {}).get("input_size", (DEFAULT_IMAGE_SIZE,))[-1])
    bgr = (input_format or ("bgr" if source.startswith("detectron") else "rgb")) == "bgr"
    keras_model = registry.build(
        name,
        norm=norm,
        groups=groups,
        num_classes=num_classes,
        input_shape=(image_size, image_size, 3),
    )
    result = assign.fill(keras_model, canonical, origin, flip_input_channels=bgr)
    result.unused = sorted(result.unused + unmatched)
    if not allow_partial:
        _refuse_partial(result, where)
    report = {
        "source": source,
        "checkpoint": where if digest is None else os.path.abspath(where),
        "checkpoint_sha256": digest,
        "model": name,
        "norm": norm,
        "groups": groups if norm == "gn" else None,
        "source_norm": found_norm,
        "num_classes": num_classes,
        "image_size": image_size,
        "source_channel_order": "BGR" if bgr else "RGB",
        "allow_partial": allow_partial,
        "filled_weights": len(result.filled),
        "unused_source_tensors": result.unused,
        "missing_model_weights": result.missing,
        "mismatched": result.mismatched,
        "skipped_bookkeeping_tensors": len(bookkeeping),
    }
    preprocessing = _preprocessing(source, bgr, image_size, num_classes, hub_config)
    return Conversion(keras_model, preprocessing, report, canonical, bgr)


def load_pretrained(source, checkpoint, model=None, norm="gn", **options):
    """The zoo model holding ``checkpoint``'s weights; see :func:`convert_checkpoint`."""
    return convert_checkpoint(source, checkpoint, model, norm, **options).model
