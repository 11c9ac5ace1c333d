"""The training configuration: dataclasses, the presets, and validation.

``RunConfig`` holds the settings every task shares (batch, schedule,
optimizer, execution, outputs); ``TrainConfig`` extends it for
classification, and the detection and video configs do the same.  Each
absl flag of ``train.flags`` is one field, so a run can be driven from the
command line or from Python with the same names.  Presets are named partial
configs (``PRESETS``); values given explicitly win over the preset's.

``make_task_config`` is the one precedence rule of every script (defaults,
preset, the script's defaults, explicit values); ``make_config`` applies it
to classification.  ``validate_config`` is the
single place that rejects a bad configuration, with a ``FlagError`` (a
``ValueError``; scripts exit with status 2) naming the flag and the value,
before any data is read or any variable is created.
"""

import dataclasses
from typing import ClassVar

from gn_keras import _checks

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCHEDULES = ("step", "cosine", "constant")
AUGMENTATIONS = ("auto", "none", "crop_flip", "inception")
DATASET_KINDS = ("digits", "synthetic", "folder", "imagenet_tfrecord")
FOLDER_CHANNELS = (1, 3)
ON_BAD_IMAGE = ("skip", "fail")


@dataclasses.dataclass
class RunConfig:
    """The settings every task shares: batch and schedule, optimizer, execution, outputs.

    A task's config extends it with its own model and data fields (and may
    change a default, e.g. ``model_dir``); ``validate_run_config`` checks
    these, the task's own validation the rest.
    """

    # Batch and schedule.
    batch_size_per_replica: int = 32
    epochs: int = 8
    steps_per_epoch: int | None = None
    eval_steps: int | None = None
    base_lr: float = 0.1
    lr_reference_batch: int = 32
    lr_schedule: str = "cosine"
    lr_boundaries: tuple = (30, 60, 90)
    lr_decay_factor: float = 0.1
    warmup_epochs: float = 1.0
    # Optimizer.
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay_norm_params: bool = True
    # Execution.
    strategy: str = "auto"
    tpu: str = ""
    worker_wait_timeout: int = 0
    cpu_replicas: int = 0
    mixed_precision: str = "float32"
    jit_compile: bool = False
    seed: int = 0
    # Outputs.
    model_dir: str = "runs/classify"
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    log_every_steps: int = 10
    steps_per_loop: int = 1
    extend_epochs: bool = False
    preset: str | None = None

    # Fields a rerun may change (train.settings): where and how the run goes,
    # not what it learns.  A task's config adds its own.
    NOT_COMPARED: ClassVar[frozenset] = frozenset(
        {
            "model_dir",
            "keep_checkpoints",
            "log_every_steps",
            "checkpoint_every_steps",
            "steps_per_loop",
            "jit_compile",
            "strategy",
            "tpu",
            "preset",
            "extend_epochs",
            "worker_wait_timeout",
            "cpu_replicas",
        }
    )

    def as_dict(self):
        """The config as JSON-ready plain values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


@dataclasses.dataclass
class TrainConfig(RunConfig):
    """Every setting of a classification training run (one field per flag).

    The defaults describe the quick run on sklearn's digits: a CIFAR-style
    ResNet-20 with GN on the 8×8 digits upsampled to 16×16, 8 epochs, SGD at
    0.1 per 32 images with one warm-up epoch.  Its narrowest stage has 16
    channels, which 32 groups cannot split, so the default is ``groups=8``
    (2, 4 and 8 channels per group in the three stages); the
    ``paper_imagenet`` preset sets G=32 and 0.1 per 256 images.
    """

    # Model.
    model: str = "resnet20"
    norm: str = "gn"
    groups: int = 8
    group_size: int | None = None
    zero_init_residual: bool = True
    # Data.
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int = 16
    augment: str = "auto"
    num_classes: int | None = None
    tfrecord_label_offset: int = 1
    channels: int = 3
    on_bad_image: str = "skip"
    # Loss.
    label_smoothing: float = 0.0

    # Skipping or refusing unreadable images changes no image that is read.
    NOT_COMPARED: ClassVar[frozenset] = RunConfig.NOT_COMPARED | {"on_bad_image"}


# §4.1 "Implementation details" of the paper, plus its learning-rate rule
# (§4.1, "Small batch sizes"): 0.1 for 32 images per GPU on 8 GPUs, i.e.
# 0.1 per 256 images in total, scaled linearly with the total batch.
PAPER_IMAGENET = {
    "model": "resnet50",
    "norm": "gn",
    "groups": 32,
    "group_size": None,
    "zero_init_residual": True,
    "dataset": "imagenet_tfrecord",
    "image_size": 224,
    "augment": "inception",
    "num_classes": 1000,
    "batch_size_per_replica": 32,
    "epochs": 100,
    "base_lr": 0.1,
    "lr_reference_batch": 256,
    "lr_schedule": "step",
    "lr_boundaries": (30, 60, 90),
    "lr_decay_factor": 0.1,
    "warmup_epochs": 0.0,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "decay_norm_params": True,
    "label_smoothing": 0.0,
}

PRESETS = {"paper_imagenet": PAPER_IMAGENET}


def make_task_config(
    config_class, validate, presets, preset=None, script_defaults=None, **explicit
):
    """A validated ``config_class``: the one precedence rule of every script.

    Later wins: ``config_class``'s defaults, the ``preset``'s recipe (from
    ``presets``), the calling script's own defaults (``script_defaults``,
    e.g. gn-finetune's batch of 2 or a study's model), then the values given
    explicitly (the flags present on the command line).  ``validate`` checks
    the result.
    """
    fields = {f.name for f in dataclasses.fields(config_class)}
    values = {}
    if preset is not None:
        _checks.check_choice(preset, "--preset", tuple(presets))
        values.update(presets[preset])
        values["preset"] = preset
    for layer in (script_defaults or {}, explicit):
        unknown = sorted(set(layer) - fields)
        if unknown:
            raise ValueError(f"Unknown {config_class.__name__} field(s): {unknown}.")
        values.update(layer)
    config = config_class(**values)
    validate(config)
    return config


def fields_from_settings(config_class, settings):
    """The ``config_class`` fields among a run's recorded ``settings`` (lists back to tuples).

    For commands that act on a finished run (``gn-detect --eval_only``): the
    run's settings take the place of the defaults, under the flags given.
    """
    values = {}
    for field in dataclasses.fields(config_class):
        if field.name in settings:
            value = settings[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def make_config(preset=None, script_defaults=None, **explicit):
    """A validated classification ``TrainConfig`` (``make_task_config``'s precedence)."""
    return make_task_config(
        TrainConfig, validate_config, PRESETS, preset, script_defaults, **explicit
    )


def dataset_kind(dataset):
    """``'tfds'`` for ``tfds:NAME``, else the dataset name itself."""
    return "tfds" if dataset.startswith("tfds:") else dataset


def _fail(flag, value, expected):
    raise _checks.invalid(f"--{flag}", value, expected)


def check_dataset_flag(dataset, data_dir, kinds, data_dir_holds, tfds_example):
    """Refuse a ``--dataset`` that is none of ``kinds`` nor ``tfds:NAME``, or lacks its data.

    ``data_dir_holds`` maps each kind read from ``--data_dir`` to what that
    directory holds (for the message when it is not given).
    """
    if isinstance(dataset, str) and dataset.startswith("tfds:"):
        if not dataset[len("tfds:") :]:
            _fail("dataset", dataset, f"a TFDS name after 'tfds:', e.g. {tfds_example}")
        return
    if dataset not in kinds:
        _fail("dataset", dataset, f"one of {', '.join(kinds)} or tfds:NAME")
    if dataset in data_dir_holds and not data_dir:
        raise _checks.FlagError(
            f"--dataset={dataset} needs --data_dir: the directory holding {data_dir_holds[dataset]}"
        )


def _check_dataset(config):
    check_dataset_flag(
        config.dataset,
        config.data_dir,
        DATASET_KINDS,
        {
            "folder": "one sub-folder of images per class.",
            "imagenet_tfrecord": "the ImageNet TFRecord shards (train-*-of-*, validation-*-of-*).",
        },
        tfds_example="tfds:cifar10",
    )


def _check_schedule(config):
    _checks.check_choice(config.lr_schedule, "--lr_schedule", LR_SCHEDULES)
    boundaries = config.lr_boundaries
    numeric = all(_checks.is_number(b) for b in boundaries)
    if (
        not numeric
        or (config.lr_schedule == "step" and not boundaries)  # a step schedule needs a step
        or list(boundaries) != sorted(set(boundaries))
        or any(b <= 0 for b in boundaries)
    ):
        _fail(
            "lr_boundaries",
            list(boundaries),
            "strictly increasing positive epoch numbers, e.g. 30,60,90",
        )
    if config.warmup_epochs > config.epochs:
        _fail(
            "warmup_epochs",
            config.warmup_epochs,
            f"at most --epochs={config.epochs} warm-up epochs",
        )


# field -> smallest allowed value; the optional ones may also be None.
_RUN_INTEGERS = {
    "batch_size_per_replica": 1,
    "epochs": 1,
    "lr_reference_batch": 1,
    "seed": 0,
    "checkpoint_every_steps": 0,
    "keep_checkpoints": 1,
    "log_every_steps": 1,
    "steps_per_loop": 1,
    "worker_wait_timeout": 0,
    "cpu_replicas": 0,
}
_RUN_OPTIONAL_INTEGERS = {"steps_per_epoch": 1, "eval_steps": 1}
# field -> (low, high, low_open): the closed or half-open interval allowed.
_RUN_NUMBERS = {
    "base_lr": (0.0, None, True),
    "momentum": (0.0, 1.0, False),
    "weight_decay": (0.0, None, False),
    "warmup_epochs": (0.0, None, False),
    "lr_decay_factor": (0.0, 1.0, True),
}
_RUN_CHOICES = {"strategy": STRATEGIES, "mixed_precision": PRECISIONS}

_CLASSIFY_INTEGERS = {"groups": -1, "image_size": 8, "tfrecord_label_offset": 0}
_CLASSIFY_OPTIONAL_INTEGERS = {"group_size": 1, "num_classes": 2}
_CLASSIFY_NUMBERS = {"label_smoothing": (0.0, 1.0, False)}
_CLASSIFY_CHOICES = {
    "augment": AUGMENTATIONS,
    "channels": FOLDER_CHANNELS,
    "on_bad_image": ON_BAD_IMAGE,
}


def check_fields(config, integers=None, optional_integers=None, numbers=None, choices=None):
    """Check ``config``'s fields by table (see the tables above); FlagError names the flag."""
    for name, minimum in (integers or {}).items():
        _checks.check_int(getattr(config, name), f"--{name}", minimum=minimum)
    for name, minimum in (optional_integers or {}).items():
        _checks.check_int(getattr(config, name), f"--{name}", minimum=minimum, optional=True)
    for name, (low, high, low_open) in (numbers or {}).items():
        _checks.check_number(
            getattr(config, name), f"--{name}", low=low, high=high, low_open=low_open
        )
    for name, choices_of_name in (choices or {}).items():
        _checks.check_choice(getattr(config, name), f"--{name}", choices_of_name)


def validate_run_config(config):
    """Check the ``RunConfig`` fields of any task's config."""
    check_fields(config, _RUN_INTEGERS, _RUN_OPTIONAL_INTEGERS, _RUN_NUMBERS, _RUN_CHOICES)
    _check_schedule(config)
    if not config.model_dir:
        _fail("model_dir", config.model_dir, "a directory path for checkpoints and outputs")


def validate_config(config):
    """Raise ``FlagError`` (a ``ValueError``) naming the first bad flag and its value."""
    check_fields(
        config,
        _CLASSIFY_INTEGERS,
        _CLASSIFY_OPTIONAL_INTEGERS,
        _CLASSIFY_NUMBERS,
        _CLASSIFY_CHOICES,
    )
    if config.groups == 0:
        _fail("groups", 0, "a positive group count, or -1 for one channel per group")
    validate_run_config(config)
    _check_dataset(config)
    if not config.model or not config.norm:
        _fail("model" if not config.model else "norm", "", "a non-empty name")
