"""The ``gn-video`` configuration: one dataclass, the main job's defaults, the paper's preset.

``VideoConfig`` extends ``train.config.RunConfig`` (batch, schedule,
optimizer, execution, outputs) with the model, the data source, the clip
settings of :class:`~gn_keras.train.video.clips.ClipSpec` (one flag per
field) and ``trained_model`` (2D weights inflated into the 3D model).

Its defaults are the **main job**: GN ``resnet20_i3d`` (G=8) on the embedded
``moving_shapes`` set with 8-frame 32×32 clips, 8 clips per replica, a few
minutes on 2 CPU cores.  :data:`PRESETS` gives the paper's Kinetics runs
(§4.3, Table 8): ResNet-50 I3D, 32 frames every 2nd frame (``paper_kinetics``)
or 64 consecutive frames (``paper_kinetics_64``), scale [256, 320], 224
crops, and the schedule of the I3D baseline the paper cites (Wang et al.
2018: 64 clips per step at lr 0.01, 400k iterations, ÷10 at 150k and 300k,
expressed here in Kinetics-400 epochs of ~240k videos).

:func:`clip_spec` cuts the ``ClipSpec`` out of a config; :func:`validate`
checks everything with one ``FlagError`` naming the flag.
"""

import dataclasses
from typing import ClassVar

from gn_keras import _checks
from gn_keras.train import config as config_lib
from gn_keras.train.video import clips

DATASET_KINDS = ("moving_shapes", "tfrecord", "folder")
CLIP_FIELDS = tuple(f.name for f in dataclasses.fields(clips.ClipSpec))


@dataclasses.dataclass
class VideoConfig(config_lib.RunConfig):
    """Every setting of a gn-video run (one field per flag); see the module."""

    # The main job's run settings (RunConfig's fields, new defaults).
    batch_size_per_replica: int = 8
    epochs: int = 6
    base_lr: float = 0.05
    lr_reference_batch: int = 8
    warmup_epochs: float = 0.5
    model_dir: str = "runs/video"
    # Model.
    model: str = "resnet20_i3d"
    norm: str = "gn"
    groups: int = 8
    group_size: int | None = None
    zero_init_residual: bool = True
    trained_model: str | None = None
    # Data.
    dataset: str = "moving_shapes"
    data_dir: str | None = None
    # Clips (train.video.clips.ClipSpec).
    frames: int = clips.ClipSpec.frames
    frame_stride: int = clips.ClipSpec.frame_stride
    crop_size: int = clips.ClipSpec.crop_size
    train_short_side: tuple = clips.ClipSpec.train_short_side
    eval_short_side: int = clips.ClipSpec.eval_short_side
    test_clips: int = clips.ClipSpec.test_clips
    test_crops: int = clips.ClipSpec.test_crops
    test_batch_size_per_replica: int = 1

    # How many videos go into one step of the final test: padding examples
    # weigh 0, so the test's result does not depend on it.
    NOT_COMPARED: ClassVar[frozenset] = config_lib.RunConfig.NOT_COMPARED | {
        "test_batch_size_per_replica"
    }


# Kinetics-400's training set has about 240k videos; Wang et al.'s 400k
# iterations of 64 clips are ~107 epochs, with ÷10 at ~40 and ~80.
_PAPER_RUN = {
    "model": "resnet50_i3d",
    "norm": "gn",
    "groups": 32,
    "dataset": "tfrecord",
    "batch_size_per_replica": 8,
    "epochs": 107,
    "base_lr": 0.01,
    "lr_reference_batch": 64,
    "lr_schedule": "step",
    "lr_boundaries": (40, 80),
    "lr_decay_factor": 0.1,
    "warmup_epochs": 0.0,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "model_dir": "runs/video_kinetics",
}
PRESETS = {
    "paper_kinetics": {**_PAPER_RUN, **dataclasses.asdict(clips.paper_spec(32))},
    "paper_kinetics_64": {
        **_PAPER_RUN,
        **dataclasses.asdict(clips.paper_spec(64)),
        "batch_size_per_replica": 4,
        "lr_reference_batch": 32,
    },
}

_INTEGERS = {
    "groups": -1,
    "frames": 1,
    "frame_stride": 1,
    "crop_size": 1,
    "eval_short_side": 1,
    "test_clips": 1,
    "test_batch_size_per_replica": 1,
}
_OPTIONAL_INTEGERS = {"group_size": 1}
_CHOICES = {"test_crops": clips.TEST_CROPS}


def clip_spec(config):
    """The ``ClipSpec`` of ``config``'s clip fields."""
    return clips.ClipSpec(**{name: getattr(config, name) for name in CLIP_FIELDS})


def _check_dataset(config):
    config_lib.check_dataset_flag(
        config.dataset,
        config.data_dir,
        DATASET_KINDS,
        {
            "tfrecord": "the SequenceExample TFRecords (train*, validation*).",
            "folder": "one sub-folder of videos per class (or train/ and val/ trees).",
        },
        tfds_example="tfds:ucf101",
    )


def validate(config):
    """Raise ``FlagError`` (a ``ValueError``) naming the first bad flag and its value."""
    config_lib.check_fields(config, _INTEGERS, _OPTIONAL_INTEGERS, choices=_CHOICES)
    if config.groups == 0:
        raise _checks.invalid("--groups", 0, "a positive group count, or -1 for one per group")
    config_lib.validate_run_config(config)
    clips.check_short_sides(
        config.crop_size, config.train_short_side, config.eval_short_side, flags=True
    )
    _check_dataset(config)
    for name in ("model", "norm"):
        if not getattr(config, name):
            raise _checks.invalid(f"--{name}", "", "a non-empty name")


def make_config(preset=None, script_defaults=None, **explicit):
    """A validated ``VideoConfig`` (``train.config.make_task_config``'s precedence)."""
    if "train_short_side" in explicit:
        explicit["train_short_side"] = _checks.parse_numbers(
            "--train_short_side",
            explicit["train_short_side"],
            int,
            "comma-separated integers, e.g. 32,40",
        )
    return config_lib.make_task_config(
        VideoConfig, validate, PRESETS, preset, script_defaults, **explicit
    )
