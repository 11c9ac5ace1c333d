"""absl flags for the training scripts: one flag per config field.

``RUN_FLAG_SPECS`` are the flags of the ``RunConfig`` fields every task
shares; ``CLASSIFY_FLAG_SPECS`` classification's own.  A task's script
defines its flags with ``define_config_flags(flag_values, ItsConfig,
{**ITS_SPECS, **RUN_FLAG_SPECS})`` and reads them back with
``explicit_values`` and ``config.make_task_config``.

Defaults come from ``TrainConfig`` itself, so the dataclass stays the one
source of truth, and the names a help text lists come from their registries
(``models.available()``, ``norms.available()``, the config's tuples).
``config_from_flags`` turns parsed flags into a validated config by
``config.make_config``'s precedence: defaults, then ``--preset``, then the
script's own defaults, then every flag given explicitly on the command line
(so ``--preset=paper_imagenet --epochs=2`` keeps the preset's recipe but
trains 2 epochs).
"""

import dataclasses

from absl import flags

from gn_keras import _checks, models, norms
from gn_keras.train import config as config_lib

# name -> (kind, help); kind picks the absl DEFINE_* and, for enums, the
# allowed values.  RUN_FLAG_SPECS are the flags of every task's RunConfig
# fields; each task adds its own (and its --preset).
RUN_FLAG_SPECS = {
    "batch_size_per_replica": ("integer", "Images per replica per step."),
    "epochs": ("integer", "Training epochs."),
    "steps_per_epoch": (
        "integer",
        "Steps per epoch (default: one pass over the training set; the data repeats if more).",
    ),
    "eval_steps": ("integer", "Cap on evaluation steps (default: the whole validation set)."),
    "base_lr": ("float", "Learning rate at --lr_reference_batch images per step."),
    "lr_reference_batch": (
        "integer",
        "Global batch at which the lr is --base_lr (lr = base_lr * global_batch / reference).",
    ),
    "lr_schedule": (config_lib.LR_SCHEDULES, "Learning-rate schedule after warm-up."),
    "lr_boundaries": (
        "list",
        "Epochs at which the step schedule multiplies the lr by --lr_decay_factor.",
    ),
    "lr_decay_factor": ("float", "Factor applied at each step-schedule boundary."),
    "warmup_epochs": ("float", "Linear warm-up length in epochs."),
    "momentum": ("float", "SGD momentum."),
    "weight_decay": ("float", "Coupled L2 (added to the gradient before momentum)."),
    "decay_norm_params": ("bool", "Apply --weight_decay to normalization gamma/beta too."),
    "strategy": (config_lib.STRATEGIES, "tf.distribute strategy; multi_worker reads TF_CONFIG."),
    "tpu": ("string", "TPU address for --strategy=tpu ('' for a local TPU)."),
    "worker_wait_timeout": (
        "integer",
        "Multi-worker: seconds to wait for every TF_CONFIG worker to start before giving up "
        "(0: no limit).",
    ),
    "cpu_replicas": (
        "integer",
        "Split the CPU into N logical devices and mirror over them (--strategy=mirrored or "
        "auto), to try distribution on a machine without GPUs (0: off).",
    ),
    "mixed_precision": (config_lib.PRECISIONS, "Keras dtype policy."),
    "jit_compile": ("bool", "XLA-compile the per-replica step."),
    "seed": ("integer", "Seed for weights, data order and augmentation."),
    "model_dir": ("string", "Where checkpoints, logs, results and models go."),
    "checkpoint_every_steps": ("integer", "Also checkpoint every N steps (0: epoch ends only)."),
    "keep_checkpoints": ("integer", "How many checkpoints to keep."),
    "log_every_steps": ("integer", "TensorBoard step-summary interval."),
    "extend_epochs": (
        "bool",
        "Allow a larger --epochs than the run in --model_dir started with; its lr schedule is "
        "rebuilt for the new length from the current step (recorded in results.json).",
    ),
    "steps_per_loop": (
        "integer",
        "Training steps per compiled call (orbit's steps_per_loop); the loss is read and "
        "logged only every --log_every_steps.",
    ),
}
CLASSIFY_FLAG_SPECS = {
    "model": ("string", f"Model name from the model zoo: {', '.join(models.available())}."),
    "norm": ("string", f"Normalization: {', '.join(norms.available())}."),
    "groups": (
        "integer",
        "GN groups G (-1: one channel per group). Default 8 suits "
        "CIFAR-style ResNets whose first stage has 16 channels.",
    ),
    "group_size": ("integer", "GN channels per group; replaces --groups when set."),
    "zero_init_residual": ("bool", "Zero-init the last norm's gamma in each residual block."),
    "dataset": ("string", f"{' | '.join(config_lib.DATASET_KINDS)} | tfds:NAME."),
    "data_dir": ("string", "Data location for folder/imagenet_tfrecord; TFDS data_dir."),
    "image_size": ("integer", "Square input size in pixels."),
    "augment": (config_lib.AUGMENTATIONS, "Training augmentation; auto picks by dataset."),
    "num_classes": (
        "integer",
        "Class count for synthetic/imagenet_tfrecord (others read it from the data).",
    ),
    "tfrecord_label_offset": (
        "integer",
        "Subtracted from image/class/label; standard ImageNet shards store 1..1000.",
    ),
    "label_smoothing": ("float", "Label smoothing of the cross-entropy."),
    "channels": (
        "integer",
        "--dataset=folder: channels to read the images as (1: grey, 3: RGB; converted as "
        "needed), e.g. 1 to fine-tune a model trained on the grey digits.",
    ),
    "on_bad_image": (
        config_lib.ON_BAD_IMAGE,
        "--dataset=folder: what to do with files that cannot be decoded (found when the tree "
        "is scanned): skip them with a warning naming them, or fail naming them.",
    ),
    "preset": (tuple(config_lib.PRESETS), "Named recipe; explicit flags override it."),
}
_FLAG_SPECS = {**CLASSIFY_FLAG_SPECS, **RUN_FLAG_SPECS}


def define_config_flags(flag_values, config_class, specs):
    """Define one flag per field of ``config_class`` from ``specs`` (defaults from the class)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    missing = fields.symmetric_difference(specs)
    if missing:
        raise ValueError(
            f"{config_class.__name__} fields and flags disagree on: {sorted(missing)}."
        )
    defaults = config_class()
    for name, (kind, help_text) in specs.items():
        define_flag(flag_values, name, kind, getattr(defaults, name), help_text)


def define_flag(flag_values, name, kind, default, help_text):
    """Define one flag of a spec's ``kind``: a tuple of choices, "list", or an absl type."""
    if isinstance(kind, tuple):
        flags.DEFINE_enum(name, default, kind, help_text, flag_values=flag_values)
    elif kind == "list":
        flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
    else:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)


def define_flags(flag_values=flags.FLAGS):
    """Define one flag per ``TrainConfig`` field on ``flag_values``."""
    define_config_flags(flag_values, config_lib.TrainConfig, _FLAG_SPECS)


def explicit_values(flag_values, specs):
    """The values of the flags in ``specs`` given on the command line (``--preset`` aside)."""
    explicit = {}
    for name in specs:
        if name == "preset" or not flag_values[name].present:
            continue
        value = flag_values[name].value
        if name == "lr_boundaries":
            value = _checks.parse_numbers(
                "--lr_boundaries", value, float, "comma-separated epoch numbers, e.g. 30,60,90"
            )
        explicit[name] = value
    return explicit


def config_from_flags(flag_values=flags.FLAGS, script_defaults=None):
    """A validated ``TrainConfig`` from parsed flags (see ``config.make_config``).

    ``script_defaults``: the calling script's own defaults, which beat the
    preset's and lose to flags given on the command line.
    """
    explicit = explicit_values(flag_values, _FLAG_SPECS)
    return config_lib.make_config(flag_values["preset"].value, script_defaults, **explicit)
