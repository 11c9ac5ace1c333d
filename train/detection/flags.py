"""absl flags of ``gn-detect``: one per ``DetectionConfig`` field, generated from the configs.

The model and input flags come from the fields of ``MaskRCNNConfig`` and
``InputConfig`` themselves (their kind from the field's default, their help
from :data:`MODEL_HELP`), so a new config field becomes a flag without a
second list; the run flags are ``train.flags.RUN_FLAG_SPECS``.  Tuple fields
are comma-separated lists, read back by :func:`config_from_flags`.
"""

import dataclasses

from gn_keras import _checks, models, norms
from gn_keras.models.detection import config as model_config_lib
from gn_keras.train import config as train_config
from gn_keras.train import flags as flags_lib
from gn_keras.train.detection import config as config_lib

MODEL_HELP = {
    "num_classes": "Object categories (background excluded); must equal the data's.",
    "image_size": "Padded (height, width) of every batch, multiples of 32.",
    "backbone_norm": "Backbone norm; auto: GN from scratch, else the --trained_model's "
    "(BN as BN* with --freeze_bn).",
    "backbone": f"Zoo backbone with C2..C5: {', '.join(models.available())}.",
    "architecture": "fpn (Tables 5-7) or c4 (Table 4: ResNet to conv4, conv5 as the RoI head "
    "with --backbone_norm; changing an FPN or head flag is refused).",
    "groups": "GN groups of every GN layer (backbone, FPN, heads).",
    "group_size": "GN channels per group; replaces --groups when set.",
    "anchor_scale": "Anchor size = anchor_scale * 2^level (Detectron: 8, i.e. 32..512 px).",
    "train_pre_nms_top_k": "Proposals per level before NMS in training.",
    "test_pre_nms_top_k": "Proposals per level before NMS at test time.",
    "masks_per_image": "Foreground RoIs per image that get a mask loss.",
    "mask_crop_size": "Side at which ground-truth masks are cropped to their boxes.",
    "max_instances": "Ground-truth instances kept per image.",
    "short_side": "Resize each image so its short side is this (Detectron: 800)...",
    "max_side": "...unless its long side would pass this (Detectron: 1333).",
    "mean": "Per-channel mean on the 0-255 scale (RGB).",
    "std": "Per-channel std on the 0-255 scale.",
    "horizontal_flip": "Flip training images horizontally at random.",
}
_NORM_FIELDS = ("backbone_norm", "fpn_norm", "box_head_norm", "mask_head_norm")


def _kind(name, default):
    if name == "backbone_norm":
        return (config_lib.AUTO_NORM, *norms.available())
    if name in _NORM_FIELDS:
        return tuple(norms.available())
    if name == "box_head":
        return model_config_lib.BOX_HEADS
    if name == "architecture":
        return model_config_lib.ARCHITECTURES
    if name == "dataset":
        return config_lib.DATASETS
    if name == "on_bad_image":
        return train_config.ON_BAD_IMAGE
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, tuple):
        return "list"
    if isinstance(default, float):
        return "float"
    if isinstance(default, int) or name in ("group_size",):
        return "integer"
    return "string"


def _help(name, default):
    text = MODEL_HELP.get(name) or f"Mask R-CNN setting `{name}`."
    return f"{text} Detectron default: {default}." if name in _DETECTRON else text


_DETECTRON = {f.name: f.default for f in dataclasses.fields(model_config_lib.MaskRCNNConfig)}


def flag_specs():
    """``{name: (kind, help)}`` of every ``DetectionConfig`` field."""
    specs = {}
    for name in config_lib.MODEL_FIELDS + config_lib.INPUT_FIELDS:
        default = getattr(config_lib.DetectionConfig(), name)
        detectron = _DETECTRON.get(name, default)
        specs[name] = (_kind(name, default), _help(name, detectron))
    for name, _, default, help_text in config_lib.OWN_FIELDS:
        specs[name] = (_kind(name, default), help_text)
    specs.update(flags_lib.RUN_FLAG_SPECS)
    specs["preset"] = (tuple(config_lib.PRESETS), "Named recipe; explicit flags override it.")
    return specs


def define_flags(flag_values):
    """Define one flag per ``DetectionConfig`` field on ``flag_values``."""
    flags_lib.define_config_flags(flag_values, config_lib.DetectionConfig, flag_specs())


def parse_list(name, values):
    """A comma-separated list flag as the tuple its field holds."""
    default = getattr(config_lib.DetectionConfig(), name)
    integral = name in ("image_size", "category_ids") or all(map(_checks.is_integer, default[:1]))
    kind = "integers" if integral else "numbers"
    number_type = int if integral else float
    return _checks.parse_numbers(f"--{name}", values, number_type, f"comma-separated {kind}")


def config_from_flags(flag_values, run_settings=None):
    """A validated ``DetectionConfig``: defaults, --preset, then the flags given.

    ``run_settings``: an existing run's recorded settings (``--eval_only``),
    which beat the defaults and the preset and lose to the flags given.
    """
    specs = flag_specs()
    explicit = flags_lib.explicit_values(flag_values, specs)
    for name, value in explicit.items():
        if specs[name][0] == "list" and name != "lr_boundaries":
            explicit[name] = parse_list(name, value)
    recorded = None
    if run_settings:
        recorded = train_config.fields_from_settings(config_lib.DetectionConfig, run_settings)
    return config_lib.make_config(flag_values["preset"].value, recorded, **explicit)
