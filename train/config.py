"""The training configuration: one dataclass, the presets, and validation.

``TrainConfig`` holds every knob of a training run; each absl flag of
``train.flags`` is one of its fields, so a run can be driven from the
command line or from Python with the same names.  Presets are named partial
configs (``PRESETS``); values given explicitly win over the preset's.

``make_config`` is the one precedence rule of every script (defaults,
preset, the script's defaults, explicit values).  ``validate_config`` is the
single place that rejects a bad configuration, with a ``FlagError`` (a
``ValueError``; scripts exit with status 2) naming the flag and the value,
before any data is read or any variable is created.
"""

import dataclasses

from gn_keras import _checks

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCHEDULES = ("step", "cosine", "constant")
AUGMENTATIONS = ("auto", "none", "crop_flip", "inception")
DATASET_KINDS = ("digits", "synthetic", "folder", "imagenet_tfrecord")


@dataclasses.dataclass
class TrainConfig:
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
    # Optimizer and loss.
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay_norm_params: bool = True
    label_smoothing: float = 0.0
    # Execution.
    strategy: str = "auto"
    tpu: str = ""
    worker_wait_timeout: int = 0
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

    def as_dict(self):
        """The config as JSON-ready plain values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


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


def make_config(preset=None, script_defaults=None, **explicit):
    """A validated ``TrainConfig``: the one precedence rule of every script.

    Later wins: ``TrainConfig``'s defaults, the ``preset``'s recipe, the
    calling script's own defaults (``script_defaults``, e.g. gn-finetune's
    batch of 2 or a study's model), then the values given explicitly (the
    flags present on the command line).
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    if preset is not None:
        _checks.check_choice(preset, "--preset", tuple(PRESETS))
        values.update(PRESETS[preset])
        values["preset"] = preset
    for layer in (script_defaults or {}, explicit):
        unknown = sorted(set(layer) - fields)
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s): {unknown}.")
        values.update(layer)
    config = TrainConfig(**values)
    validate_config(config)
    return config


def dataset_kind(dataset):
    """``'tfds'`` for ``tfds:NAME``, else the dataset name itself."""
    return "tfds" if dataset.startswith("tfds:") else dataset


def _fail(flag, value, expected):
    raise _checks.invalid(f"--{flag}", value, expected)


def _check_dataset(config):
    kind = dataset_kind(config.dataset)
    if kind == "tfds":
        if not config.dataset[len("tfds:") :]:
            _fail("dataset", config.dataset, "a TFDS name after 'tfds:', e.g. tfds:cifar10")
        return
    if kind not in DATASET_KINDS:
        _fail("dataset", config.dataset, f"one of {', '.join(DATASET_KINDS)} or tfds:NAME")
    if kind in ("folder", "imagenet_tfrecord") and not config.data_dir:
        raise _checks.FlagError(
            f"--dataset={config.dataset} needs --data_dir: the directory holding "
            + (
                "one sub-folder of images per class."
                if kind == "folder"
                else "the ImageNet TFRecord shards (train-*-of-*, validation-*-of-*)."
            )
        )


def _check_schedule(config):
    _checks.check_choice(config.lr_schedule, "--lr_schedule", LR_SCHEDULES)
    boundaries = config.lr_boundaries
    numeric = all(_checks.is_number(b) for b in boundaries)
    if (
        not numeric
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
_INTEGERS = {
    "groups": -1,
    "batch_size_per_replica": 1,
    "epochs": 1,
    "lr_reference_batch": 1,
    "seed": 0,
    "image_size": 8,
    "checkpoint_every_steps": 0,
    "keep_checkpoints": 1,
    "log_every_steps": 1,
    "steps_per_loop": 1,
    "worker_wait_timeout": 0,
    "tfrecord_label_offset": 0,
}
_OPTIONAL_INTEGERS = {"group_size": 1, "steps_per_epoch": 1, "eval_steps": 1, "num_classes": 2}
# field -> (low, high, low_open): the closed or half-open interval allowed.
_NUMBERS = {
    "base_lr": (0.0, None, True),
    "momentum": (0.0, 1.0, False),
    "weight_decay": (0.0, None, False),
    "label_smoothing": (0.0, 1.0, False),
    "warmup_epochs": (0.0, None, False),
    "lr_decay_factor": (0.0, 1.0, True),
}
_CHOICES = {
    "strategy": STRATEGIES,
    "mixed_precision": PRECISIONS,
    "augment": AUGMENTATIONS,
}


def validate_config(config):
    """Raise ``FlagError`` (a ``ValueError``) naming the first bad flag and its value."""
    for name, minimum in _INTEGERS.items():
        _checks.check_int(getattr(config, name), f"--{name}", minimum=minimum)
    if config.groups == 0:
        _fail("groups", 0, "a positive group count, or -1 for one channel per group")
    for name, minimum in _OPTIONAL_INTEGERS.items():
        _checks.check_int(getattr(config, name), f"--{name}", minimum=minimum, optional=True)
    for name, (low, high, low_open) in _NUMBERS.items():
        _checks.check_number(
            getattr(config, name), f"--{name}", low=low, high=high, low_open=low_open
        )
    for name, choices in _CHOICES.items():
        _checks.check_choice(getattr(config, name), f"--{name}", choices)
    _check_schedule(config)
    _check_dataset(config)
    if not config.model_dir:
        _fail("model_dir", config.model_dir, "a directory path for checkpoints and outputs")
    if not config.model or not config.norm:
        _fail("model" if not config.model else "norm", "", "a non-empty name")
