"""Train a video classifier (the paper's §4.3): ``gn-video`` or ``python -m gn_keras.train.video``.

Command line (absl flags, one per ``VideoConfig`` field)::

    gn-video                                          # GN resnet20_i3d on moving_shapes
    gn-video --norm=bn --batch_size_per_replica=4     # BN at 4 clips per replica
    gn-video --trained_model=runs/classify            # start from a 2D gn-train model
    gn-video --preset=paper_kinetics --dataset=tfrecord --data_dir=/data/kinetics \\
        --trained_model=/models/resnet50_gn_imagenet.keras

The job is ``train.trainer.run`` with a ``VideoTask`` (strategy, steps,
epoch loop, checkpoints and resume, ``results.json``, TensorBoard,
export); validation during training is one centre clip per video.  At the
end the trained model gets the paper's 10-clip test (``final_test``), whose
top-1/top-5 go into ``results.json`` under ``"test"`` and are printed.

Errors end the job with one line (status 2 for a bad flag, 1 otherwise), as
every script does (``train.cli``).
"""

from absl import flags

from gn_keras import models
from gn_keras._checks import FlagError
from gn_keras.train import cli, trainer, workdir
from gn_keras.train import flags as flags_lib
from gn_keras.train import strategy as strategy_lib
from gn_keras.train.video import config as config_lib
from gn_keras.train.video import final_test, transfer
from gn_keras.train.video import task as task_lib

PROGRAM = "gn-video"
VIDEO_FLAG_SPECS = {
    "batch_size_per_replica": (
        "integer",
        "Clips per replica per step (the paper runs 8 and 4 clips per GPU).",
    ),
    "model": (
        "string",
        "3D model from the model zoo: "
        + ", ".join(name for name in models.available() if name.endswith("_i3d"))
        + ".",
    ),
    "norm": ("string", "Normalization (over (T, H, W) for GN, (N, T, H, W) for BN)."),
    "groups": ("integer", "GN groups G (-1: one channel per group)."),
    "group_size": ("integer", "GN channels per group; replaces --groups when set."),
    "zero_init_residual": ("bool", "Zero-init the last norm's gamma in each residual block."),
    "trained_model": (
        "string",
        "A 2D model to inflate into the 3D one (the paper's ImageNet pre-training): a gn-train "
        "--model_dir, a .keras file or a gn-export SavedModel, built with the same norm and "
        "depth. Its head is not used. Default: from scratch.",
    ),
    "dataset": (
        "string",
        f"{' | '.join(config_lib.DATASET_KINDS)} | tfds:NAME (moving_shapes is embedded).",
    ),
    "data_dir": ("string", "Data location for tfrecord/folder; TFDS data_dir."),
    "frames": ("integer", "Frames per clip (paper: 32 every 2nd frame, or 64 consecutive)."),
    "frame_stride": ("integer", "Distance between a clip's frames in the video."),
    "crop_size": ("integer", "Square crop in pixels (paper: 224)."),
    "train_short_side": ("list", "Training short-side scale range LOW,HIGH (paper: 256,320)."),
    "eval_short_side": ("integer", "Short side for validation and test clips (paper: 256)."),
    "test_clips": ("integer", "Clips per video in the final test, evenly spaced (paper: 10)."),
    "test_crops": ("integer", "Crops per test clip: 1 (centre) or 3 (along the long side)."),
    "test_batch_size_per_replica": (
        "integer",
        "Videos per replica per final-test step (each is test_clips x test_crops clips).",
    ),
    "preset": (tuple(config_lib.PRESETS), "Named recipe; explicit flags override it."),
}
_FLAG_SPECS = {**flags_lib.RUN_FLAG_SPECS, **VIDEO_FLAG_SPECS}


def define_flags(flag_values=flags.FLAGS):
    """Define one flag per ``VideoConfig`` field on ``flag_values``."""
    flags_lib.define_config_flags(flag_values, config_lib.VideoConfig, _FLAG_SPECS)


def config_from_flags(flag_values=flags.FLAGS):
    """A validated ``VideoConfig`` from parsed flags (defaults < preset < explicit flags)."""
    explicit = flags_lib.explicit_values(flag_values, _FLAG_SPECS)
    return config_lib.make_config(flag_values["preset"].value, **explicit)


def check_model_name(name):
    """Reject a ``--model`` that is not one of the zoo's 3D models, before any data is read."""
    video_models = [n for n in models.available() if n.endswith("_i3d")]
    if name not in video_models:
        raise FlagError(f"--model={name!r} is not a video model; expected one of {video_models}.")


def train(config, *, strategy=None, callbacks=None, source=None):
    """Run a whole gn-video job; return the ``results.json`` contents (with ``"test"``).

    ``strategy``, ``callbacks``: as for ``train.trainer.run``; ``source``: a
    ``VideoSource`` to use instead of ``config.dataset``.
    """
    config_lib.validate(config)
    check_model_name(config.model)
    workdir.check_model_dir(config.model_dir)
    build_model = transfer.make_builder(config) if config.trained_model else None
    task = task_lib.VideoTask(
        config_lib.clip_spec(config),
        build_model=build_model,
        source=source,
        test_batch_size_per_replica=config.test_batch_size_per_replica,
    )
    if strategy is None:
        strategy = strategy_lib.strategy_for(config)
    tester = final_test.FinalTest(task, strategy)
    results = trainer.run(task, config, strategy=strategy, callbacks=[*(callbacks or []), tester])
    return final_test.add_to_results(results, tester.results, strategy)


def main(argv):
    del argv  # run_command allows no positional arguments; a ValueError is one line
    results = train(config_from_flags(flags.FLAGS))
    print(final_test.describe(results["test"]))
    print(cli.describe_outputs(results, task_lib.MultiViewEvaluator.primary_metric_label))


def run():
    """Console entry point ``gn-video``."""
    cli.run_command(main, PROGRAM, define_flags)


if __name__ == "__main__":
    run()
