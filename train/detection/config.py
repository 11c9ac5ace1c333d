"""The ``gn-detect`` configuration: one dataclass, the main job's defaults, the paper's preset.

``DetectionConfig`` extends ``train.config.RunConfig`` (batch, schedule,
optimizer, execution, outputs) with

* every field of :class:`~gn_keras.models.detection.MaskRCNNConfig` (the
  model and Detectron's sampling and test settings) and of
  :class:`~gn_keras.train.detection.pipeline.InputConfig` (resizing,
  normalization, flip), generated from those dataclasses so that each is
  one flag and is defined in one place;
* the data source and the transfer settings of :data:`OWN_FIELDS`.

Its defaults are the **main job**: a small GN Mask R-CNN (``resnet18_narrow``,
GN in backbone, FPN and heads) on the embedded 64×64 shapes set, a few
minutes on 2 CPU cores.  :data:`PRESETS` ``"paper_coco"`` gives back every
Detectron default the main job changes, plus the paper's fine-tuning recipe
(§4.2): Detectron's GN 2x schedule with warm-up, weight decay 1e-4 but 0 on
γ/β, short side 800 / long side 1333, horizontal flip; the stem and res2
are frozen for a pre-trained backbone and nothing from scratch (Table 7's
footnote), which ``freeze_at=-1`` (auto) decides.

:func:`model_config` and :func:`input_config` cut the two library configs
out of a ``DetectionConfig``; :func:`validate` checks everything with one
``FlagError`` naming the flag.
"""

import dataclasses

import tensorflow as tf

from gn_keras import _checks
from gn_keras.models.detection import MaskRCNNConfig
from gn_keras.models.detection import config as model_config_lib
from gn_keras.train import config as config_lib
from gn_keras.train import settings
from gn_keras.train.detection import pipeline, shapes

DATASETS = ("shapes", "coco", "tfrecord")
KERAS_APPLICATIONS_PREFIX = "keras.applications:"
# --backbone_norm=auto: GN from scratch; a --trained_model's own norm (BN as BN*).
AUTO_NORM = "auto"

# The main job: what the no-flag run changes from Detectron's defaults.
MAIN_JOB_MODEL = {
    "num_classes": 3,
    "image_size": (64, 64),
    "backbone": "resnet18_narrow",
    "backbone_norm": "auto",
    "fpn_norm": "gn",
    "box_head": "4conv1fc",
    "box_head_norm": "gn",
    "mask_head_norm": "gn",
    "groups": 8,
    "fpn_channels": 32,
    "head_conv_channels": 32,
    "box_head_fc_units": 128,
    "anchor_scale": 4.0,  # anchors of 16..256 px for objects of 10..40 px
    "train_pre_nms_top_k": 400,
    "train_proposals": 128,
    "test_pre_nms_top_k": 200,
    "test_proposals": 64,
    "rois_per_image": 64,
    "masks_per_image": 16,
    "detections_per_image": 20,
}
MAIN_JOB_INPUT = {"short_side": 64, "max_side": 64, "max_instances": 8, "mask_crop_size": 32}
MAIN_JOB_RUN = {
    "batch_size_per_replica": 2,
    "epochs": 6,
    "base_lr": 0.02,
    "lr_reference_batch": 4,
    "lr_schedule": "step",
    "lr_boundaries": (5,),
    "warmup_epochs": 0.25,
    "decay_norm_params": False,
    "model_dir": "runs/detect",
}

# (name, type, default, flag help) of what detection adds besides the two library configs.
OWN_FIELDS = (
    ("dataset", str, "shapes", f"Data source: {' | '.join(DATASETS)}."),
    (
        "data_dir",
        str | None,
        None,
        "shapes: where the generated set is written (default <model_dir>/shapes_data); a set "
        "made there with other --shapes_* flags is refused, not replaced.",
    ),
    ("shapes_train_images", int, 300, "shapes: generated training images."),
    ("shapes_val_images", int, 50, "shapes: generated validation images."),
    ("shapes_image_size", int, 64, "shapes: side of the generated images in pixels."),
    ("train_annotations", str | None, None, "coco: the training COCO JSON."),
    ("train_images", str | None, None, "coco: the training image folder."),
    ("val_annotations", str | None, None, "coco: the validation COCO JSON."),
    ("val_images", str | None, None, "coco: the validation image folder."),
    ("train_tfrecords", str | None, None, "tfrecord: glob of training TFRecords (TFMG format)."),
    ("val_tfrecords", str | None, None, "tfrecord: glob of validation TFRecords."),
    (
        "category_ids",
        tuple,
        (),
        "tfrecord: the category id of class 1, 2, ... (e.g. COCO's 80 ids).",
    ),
    ("strict_annotations", bool, False, "coco: refuse the first bad record instead of skipping."),
    (
        "on_bad_image",
        str,
        "skip",
        "coco: image files that do not decode or whose pixels are not the JSON's width x "
        "height (checked up front): skip them and their annotations with a warning naming "
        "them, or fail naming them.",
    ),
    (
        "trained_model",
        str | None,
        None,
        "Start the backbone from a trained model: a gn-train --model_dir, a .keras file, a "
        "SavedModel from gn-export, or keras.applications:NAME[:WEIGHTS] (NAME e.g. ResNet50; "
        "WEIGHTS 'imagenet' (Keras downloads it) or a .weights.h5 path). Default: from scratch.",
    ),
    (
        "freeze_bn",
        bool,
        True,
        "With --trained_model: BN becomes BN* (frozen, §4.2); GN always stays GN.",
    ),
    (
        "freeze_at",
        int,
        -1,
        "Freeze the stem and first stages (Detectron FREEZE_AT): -1 auto (2 = stem+res2 for a "
        "--trained_model, 0 from scratch, Table 7), 0 nothing, 1 stem, 2 stem+res2, ...",
    ),
)


def _fields_of(config_class, defaults):
    return [
        (f.name, f.type, dataclasses.field(default=defaults.get(f.name, f.default)))
        for f in dataclasses.fields(config_class)
    ]


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(MaskRCNNConfig))
INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(pipeline.InputConfig))

_RUN_TYPES = {f.name: f.type for f in dataclasses.fields(config_lib.RunConfig)}


def _data_identity(config):
    """What the data is beyond its (resolved) paths, compared on a rerun (``train.settings``).

    COCO: the annotation files' SHA-256 (their images are checked against
    them); TFRecords: how many files match and their total size (hashing
    COCO's 20 GB of records at every start would cost minutes).  The
    generated shapes set is fixed by its flags.
    """
    if config.dataset == "coco":
        return {
            f"{name} content": settings.file_digest(getattr(config, name))
            for name in ("train_annotations", "val_annotations")
        }
    if config.dataset == "tfrecord":
        identity = {}
        for name in ("train_tfrecords", "val_tfrecords"):
            files = tf.io.gfile.glob(getattr(config, name) or "")
            sizes = sum(tf.io.gfile.stat(path).length for path in files)
            identity[f"{name} content"] = f"{len(files)} files, {sizes} bytes"
        return identity
    return {}


DetectionConfig = dataclasses.make_dataclass(
    "DetectionConfig",
    # Redeclared RunConfig fields keep their place and take the main job's default.
    [(name, _RUN_TYPES[name], dataclasses.field(default=v)) for name, v in MAIN_JOB_RUN.items()]
    + _fields_of(MaskRCNNConfig, MAIN_JOB_MODEL)
    + _fields_of(pipeline.InputConfig, MAIN_JOB_INPUT)
    + [(name, kind, dataclasses.field(default=default)) for name, kind, default, _ in OWN_FIELDS],
    bases=(config_lib.RunConfig,),
    namespace={"data_identity": _data_identity},
)
DetectionConfig.__module__ = __name__
DetectionConfig.__doc__ = (
    """Every setting of a gn-detect run (one field per flag); see the module."""
)

# COCO train2017's 118,287 images turn Detectron's iterations into epochs.
COCO_TRAIN_IMAGES = 118287
_DETECTRON_BATCH = 16  # 2 images per GPU on 8 GPUs


def _detectron_epochs(iterations):
    return round(iterations * _DETECTRON_BATCH / COCO_TRAIN_IMAGES, 2)


# Detectron's e2e_mask_rcnn_R-50-FPN_2x_gn: lr 0.02 per 16 images, 180k
# iterations, ÷10 at 120k and 160k, 500 warm-up iterations (its warm-up
# starts at 1/3 of the rate, ours at 0: train.optimizer.LinearWarmup).
PAPER_COCO = {
    **{name: getattr(MaskRCNNConfig(), name) for name in MAIN_JOB_MODEL},
    **{name: getattr(pipeline.InputConfig(), name) for name in MAIN_JOB_INPUT},
    "num_classes": 80,
    "backbone": "resnet50",
    "backbone_norm": "auto",
    "fpn_norm": "gn",
    "box_head": "4conv1fc",
    "box_head_norm": "gn",
    "mask_head_norm": "gn",
    "dataset": "coco",
    "horizontal_flip": True,
    "batch_size_per_replica": 2,
    "epochs": round(_detectron_epochs(180000)),
    "base_lr": 0.02,
    "lr_reference_batch": _DETECTRON_BATCH,
    "lr_schedule": "step",
    "lr_boundaries": (_detectron_epochs(120000), _detectron_epochs(160000)),
    "lr_decay_factor": 0.1,
    "warmup_epochs": _detectron_epochs(500),
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "decay_norm_params": False,
    "freeze_at": -1,
}
PRESETS = {"paper_coco": PAPER_COCO}


def model_config(config, **changes):
    """The :class:`MaskRCNNConfig` of ``config`` (``changes`` win)."""
    values = {name: getattr(config, name) for name in MODEL_FIELDS}
    if values["backbone_norm"] == AUTO_NORM:
        values["backbone_norm"] = "gn"  # from scratch; a trained model decides otherwise
    if values["architecture"] == "c4":
        values.update(_c4_values(values))
    values.update(changes)
    for name in ("image_size", "aspect_ratios", "box_coder_weights"):
        values[name] = tuple(values[name])
    return MaskRCNNConfig(**values)


def _c4_values(values):
    """C4 takes the library defaults for the FPN-only fields left at the main job's value.

    The main job's FPN and head settings mean nothing to a C4 model; a value
    changed from them is kept, so ``MaskRCNNConfig.validate`` refuses it.
    """
    defaults, library = DetectionConfig(), MaskRCNNConfig()
    unset = {
        name: getattr(library, name)
        for name in model_config_lib.FPN_ONLY_FIELDS
        if values[name] == getattr(defaults, name)
    }
    if values["mask_size"] == defaults.mask_size:  # C4 masks are mask_roi_size wide
        unset["mask_size"] = values["mask_roi_size"]
    return unset


def input_config(config):
    """The :class:`~gn_keras.train.detection.pipeline.InputConfig` of ``config``."""
    values = {name: getattr(config, name) for name in INPUT_FIELDS}
    values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
    return pipeline.InputConfig(**values)


def make_config(preset=None, script_defaults=None, **explicit):
    """A validated ``DetectionConfig`` (``train.config.make_task_config``'s precedence)."""
    return config_lib.make_task_config(
        DetectionConfig, validate, PRESETS, preset, script_defaults, **explicit
    )


def _library_error(error):
    """A library config's ``ValueError`` as the flag's ``FlagError``."""
    message = str(error)
    for prefix in ("MaskRCNNConfig: field `", "InputConfig: field `"):
        if message.startswith(prefix):
            field = message[len(prefix) :].split("`", 1)[0]
            return _checks.FlagError(f"--{field}: {message.split(': ', 1)[1]}")
    return _checks.FlagError(message)


def _check_data(config):
    _checks.check_choice(config.dataset, "--dataset", DATASETS)
    needed = {
        "coco": ("train_annotations", "train_images", "val_annotations", "val_images"),
        "tfrecord": ("train_tfrecords", "val_tfrecords", "category_ids"),
    }.get(config.dataset, ())
    missing = [f"--{name}" for name in needed if not getattr(config, name)]
    if missing:
        raise _checks.FlagError(f"--dataset={config.dataset} needs {', '.join(missing)}.")
    _checks.check_choice(config.on_bad_image, "--on_bad_image", config_lib.ON_BAD_IMAGE)
    for name in ("shapes_train_images", "shapes_val_images"):
        _checks.check_int(getattr(config, name), f"--{name}", minimum=1)
    _checks.check_int(config.shapes_image_size, "--shapes_image_size", minimum=16)
    shape_kinds = len(shapes.CATEGORIES)
    if config.dataset == "shapes" and config.num_classes != shape_kinds:
        # Refused before the set is generated: a run that cannot start writes nothing.
        raise _checks.FlagError(
            f"--num_classes={config.num_classes} but --dataset=shapes has {shape_kinds} "
            f"categories ({', '.join(c['name'] for c in shapes.CATEGORIES)}); "
            f"set --num_classes={shape_kinds}."
        )


def validate(config):
    """Raise ``FlagError`` naming the first bad flag and its value."""
    config_lib.validate_run_config(config)
    _check_data(config)
    _checks.check_int(config.freeze_at, "--freeze_at", minimum=-1, maximum=5)
    _checks.check_bool(config.freeze_bn, "--freeze_bn")
    try:
        model = model_config(config).validate()
        input_config(config).validate(model.image_size)
    except _checks.FlagError:
        raise
    except (ValueError, TypeError) as error:
        raise _library_error(error) from None
