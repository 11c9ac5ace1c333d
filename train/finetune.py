"""``python -m gn_keras.train.finetune`` (console script ``gn-finetune``): transfer a trained model.

Starts from ``--trained_model`` (a ``.keras`` file, a SavedModel written by
``gn_keras.export``, or a training ``--model_dir``), gives it a new head for
the classes of ``--dataset``, optionally freezes the stem and first stages
(``--freeze_at``, Detectron's FREEZE_AT) and turns BN into BN*
(``--freeze_bn``; GN is left as it is), then trains with the one training
loop of ``train.classify`` — same data pipeline, strategy, checkpoints,
resume and outputs (``results.json``, ``best.keras``, ``saved_model/``, …) in
``--model_dir``, plus ``finetune.json`` recording what was frozen.

Every training flag of ``train.classify`` applies, with the paper's
fine-tuning defaults (§4.2): ``--batch_size_per_replica=2`` and weight decay
0 on γ and β (``--nodecay_norm_params``).  Architecture flags (``--model``,
``--norm``, ``--groups``, …) are refused: the network is the pre-trained one.
Rerunning the same command resumes from the latest checkpoint (the newest
intact one, as ``gn-train`` does: see ``train.checkpoints``).
"""

import dataclasses
import os

from absl import flags, logging

from gn_keras import _checks, convert, load, transfer
from gn_keras._checks import FlagError
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.train import classification, classify, cli, workdir
from gn_keras.train import flags as flags_lib
from gn_keras.train import outputs as outputs_lib

# The paper fine-tunes with 1–2 images per GPU and no weight decay on γ, β
# (§4.2: "we use a weight decay of 0 for the γ and β parameters").
FINETUNE_DEFAULTS = {
    "batch_size_per_replica": 2,
    "decay_norm_params": False,
    "model_dir": "runs/finetune",
}
ARCHITECTURE_FLAGS = ("model", "norm", "groups", "group_size", "zero_init_residual")
FINETUNE_FILE = "finetune.json"


@dataclasses.dataclass
class FinetuneOptions:
    """What fine-tuning adds to a ``TrainConfig``."""

    trained_model: str
    freeze_at: int = 0
    freeze_bn: bool = False

    def __post_init__(self):
        if not self.trained_model:
            raise FlagError(
                "--trained_model is required: a .keras file, a SavedModel "
                "directory or a training --model_dir."
            )
        _checks.check_int(
            self.freeze_at,
            "--freeze_at",
            minimum=0,
            maximum=transfer.MAX_FREEZE_AT,
            expected=f"an integer in 0..{transfer.MAX_FREEZE_AT} (0: nothing, 1: stem, "
            "2: stem+res2, ...)",
        )
        _checks.check_bool(self.freeze_bn, "--freeze_bn")


def check_transfer(pretrained, source, preprocessing, pretrained_preprocessing, config):
    """Refuse data the pre-trained network cannot take; warn on other stats."""
    expected = (*preprocessing["image_size"], preprocessing["channels"])
    actual = tuple(pretrained.inputs[0].shape[1:])
    if actual != expected:
        raise FlagError(
            f"--trained_model={source} takes images of shape {actual} but "
            f"--dataset={config.dataset} with --image_size={config.image_size} gives "
            f"{expected}; set --image_size to the pre-trained size and use data with "
            f"{actual[-1]} channel(s)."
        )
    classes = preprocessing["num_classes"]
    if config.num_classes is not None and config.num_classes != classes:
        raise FlagError(
            f"--num_classes={config.num_classes} but --dataset={config.dataset} has "
            f"{classes} classes; drop --num_classes or fix the data."
        )
    for key in ("mean", "std"):
        if pretrained_preprocessing[key] != preprocessing[key]:
            logging.warning(
                "The pre-trained model was trained with %s=%s but --dataset=%s "
                "normalizes with %s=%s; fine-tuning uses the latter.",
                key,
                pretrained_preprocessing[key],
                config.dataset,
                key,
                preprocessing[key],
            )


def make_builder(options, report):
    """``build_model(config, preprocessing)`` for ``train.classify.train``.

    Loads the pre-trained model (inside the strategy's scope, so its
    variables are distributed), checks it against the data, converts BN to
    BN*, replaces the head and freezes stages; ``report`` receives what was
    done, for ``finetune.json``.
    """

    def build_model(config, preprocessing):
        pretrained = load.load_model(options.trained_model)
        check_transfer(
            pretrained,
            options.trained_model,
            preprocessing,
            load.load_preprocessing(options.trained_model),
            config,
        )
        model = pretrained
        if options.freeze_bn:  # warns (and copies) when there is no BN
            model = convert.freeze_batchnorm(model)
        frozen_bn = sum(isinstance(layer, FrozenBatchNormalization) for layer in model.layers)
        model = transfer.replace_head(model, preprocessing["num_classes"])
        frozen = transfer.freeze_stages(model, options.freeze_at)
        report.update(
            trained_model=os.path.abspath(options.trained_model),
            freeze_at=options.freeze_at,
            freeze_bn=options.freeze_bn,
            frozen_batchnorm_layers=frozen_bn,
            frozen_layers=frozen,
            num_classes=preprocessing["num_classes"],
        )
        return model

    return build_model


def check_image_model(source):
    """Refuse a model of clips (a gn-video run) in one line that says what does take it.

    gn-video's ``preprocessing.json`` says ``"task": "video"``; image-size
    advice would not help with those.
    """
    if load.load_preprocessing(source).get("task") == "video":
        raise FlagError(
            f"--trained_model={source} is a video model (gn-video), and gn-finetune "
            "fine-tunes image models: train a video model on with gn-video in its own "
            "--model_dir (--extend_epochs for more epochs), or start a new video model "
            "from a 2D image model with gn-video --trained_model."
        )


def finetune(config, options, *, strategy=None):
    """Fine-tune ``options.trained_model`` with ``config``; return results.json's dict."""
    # Fail on a missing, unreadable or wrong kind of model before any data is read.
    workdir.check_model_dir(config.model_dir)
    load.resolve_model_path(options.trained_model)
    check_image_model(options.trained_model)
    # A rerun resumes through classify.train's Checkpointer, which skips a
    # damaged newest checkpoint as gn-train does (train.checkpoints).
    report = {}
    # The network comes from --trained_model; results.json records that
    # instead of the zoo's name and norm.
    config = dataclasses.replace(
        config, model=f"pretrained:{options.trained_model}", norm="pretrained"
    )
    results = classify.train(config, strategy=strategy, build_model=make_builder(options, report))
    if report:
        os.makedirs(config.model_dir, exist_ok=True)
        outputs_lib.write_json_atomically(os.path.join(config.model_dir, FINETUNE_FILE), report)
    return results


def config_from_flags(flag_values):
    """The training config of a fine-tuning run: fine-tuning defaults, then flags."""
    given = [name for name in ARCHITECTURE_FLAGS if flag_values[name].present]
    if given:
        raise FlagError(
            f"--{given[0]} is not used by train.finetune: the network comes from --trained_model."
        )
    return flags_lib.config_from_flags(flag_values, script_defaults=FINETUNE_DEFAULTS)


def define_flags(flag_values=flags.FLAGS):
    flags_lib.define_flags(flag_values)
    for name, value in FINETUNE_DEFAULTS.items():  # so --help shows them
        flag_values.set_default(name, value)
    flags.DEFINE_string(
        "trained_model",
        None,
        "The model to start from: a .keras file, a "
        "SavedModel written by gn_keras.export, or a training --model_dir.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "freeze_at",
        0,
        "Freeze the stem and first stages (Detectron FREEZE_AT): 0 nothing, 1 stem, "
        f"2 stem+res2, ... {transfer.MAX_FREEZE_AT} backbone.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "freeze_bn",
        False,
        "Turn every BatchNormalization into BN* (frozen affine, §4.2); GN layers are kept.",
        flag_values=flag_values,
    )


def main(argv):
    del argv  # cli.run_command allows no positional arguments
    values = flags.FLAGS
    config = config_from_flags(values)  # a ValueError is one line (cli.guard_main)
    options = FinetuneOptions(values.trained_model, values.freeze_at, values.freeze_bn)
    results = finetune(config, options)
    if results.get("outputs"):
        label = classification.ClassificationEvaluator.primary_metric_label
        print(cli.describe_outputs(results, label))
        print(f"  fine-tuning:    {os.path.join(config.model_dir, FINETUNE_FILE)}")


def run():
    """Console entry point ``gn-finetune``."""
    cli.run_command(main, "gn-finetune", define_flags)


if __name__ == "__main__":
    run()
