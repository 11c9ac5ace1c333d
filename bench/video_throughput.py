"""Video training throughput: one train step of an I3D model with GN against BN, side by side.

Each contender is the real training step of ``gn-video`` (``trainer.prepare``
with a ``VideoTask``: the moving_shapes clip pipeline, the model, SGD with
coupled L2, ``strategy.run``) on one device, for every normalization in
``--norms`` and every policy in ``--precisions`` (float32 and bfloat16 by
default).  All contenders are built first; then their steps are
interleaved with a rotating order (``train_throughput.interleaved_times``),
so load from other processes on a shared machine is spread over all of
them.  The script prints median step times, clips/s and the GN/BN wall and
CPU ratios per policy, and writes them with the date and machine
(``report.py``) to ``bench/results/video_throughput.json``::

    python bench/video_throughput.py                      # ResNet-50 I3D, 8x64x64 clips
    python bench/video_throughput.py --model=resnet20_i3d --frames=8 --crop_size=32
    python bench/video_throughput.py --steps=2 --warmup_steps=1 --json=/tmp/v.json

The goal is GN/BN <= 1.0 in wall clock, as for the 2D ResNet-50.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GN_KERAS_KERNELS", "require")  # measure the compiled GN kernels

import keras  # noqa: E402
import report  # noqa: E402  (bench/ is the script's directory)
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from train_throughput import interleaved_times, summarize  # noqa: E402

from gn_keras.train import trainer  # noqa: E402
from gn_keras.train.video import config as video_config  # noqa: E402
from gn_keras.train.video import task as video_task  # noqa: E402

FLAGS = flags.FLAGS
# train_throughput's flags, with this benchmark's defaults (--batch_size counts clips).
FLAGS.set_default("steps", 8)
FLAGS.set_default("batch_size", 4)
FLAGS.set_default("norms", ["gn", "bn"])
flags.DEFINE_string("model", "resnet50_i3d", "The zoo's 3D model.")
flags.DEFINE_integer("frames", 8, "Frames per clip.", lower_bound=1)
flags.DEFINE_integer("crop_size", 64, "Square crop in pixels.", lower_bound=8)
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies.")
UNUSED_FLAGS = ("image_size", "pipelines", "mixed_precision")


def contender(norm, precision):
    """A zero-argument callable running one synced training step of ``norm`` under ``precision``."""
    keras.mixed_precision.set_global_policy(precision)
    config = video_config.make_config(
        model=FLAGS.model,
        norm=norm,
        groups=8 if FLAGS.model == "resnet20_i3d" else 32,
        mixed_precision=precision,
        frames=FLAGS.frames,
        crop_size=FLAGS.crop_size,
        train_short_side=(FLAGS.crop_size, FLAGS.crop_size * 5 // 4),
        eval_short_side=FLAGS.crop_size,
        batch_size_per_replica=FLAGS.batch_size,
        warmup_epochs=0,
        lr_schedule="constant",
        strategy="one_device",
    )
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    task = video_task.VideoTask(video_config.clip_spec(config))
    run = trainer.prepare(task, config, strategy)
    iterator = iter(strategy.distribute_datasets_from_function(run.data.train_dataset_fn(0, 0)))
    return lambda: float(run.runner.train_step(iterator))


def main(argv):
    del argv
    given = [name for name in UNUSED_FLAGS if FLAGS[name].present]
    if given:
        raise app.UsageError(f"--{given[0]} is not used here (see --precisions, --crop_size).")
    started, machine = report.start()
    calls = {
        f"{precision}/{norm}": contender(norm, precision)
        for precision in FLAGS.precisions
        for norm in FLAGS.norms
    }
    rows = summarize(interleaved_times(calls, FLAGS.steps, FLAGS.warmup_steps), FLAGS.batch_size)
    found = report.ratios(rows, FLAGS.precisions, [("gn", "bn")])
    print(
        f"{FLAGS.model}, {FLAGS.batch_size} clips of {FLAGS.frames}x{FLAGS.crop_size}^2, "
        f"{FLAGS.steps} steps; {report.header(started, machine)}"
    )
    report.print_step_report(rows, found, "policy/norm", "clips/s", ".2f")
    settings = {
        "model": FLAGS.model,
        "clips_per_step": FLAGS.batch_size,
        "frames": FLAGS.frames,
        "crop_size": FLAGS.crop_size,
        "steps": FLAGS.steps,
        "warmup_steps": FLAGS.warmup_steps,
        "precisions": FLAGS.precisions,
        "data": "moving_shapes through the gn-video pipeline",
    }
    path = FLAGS.json or report.default_path("video_throughput.json")
    report.write_result(path, settings, rows, found, started=started, machine=machine)


if __name__ == "__main__":
    app.run(main)
