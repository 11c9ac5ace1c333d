"""Mask R-CNN training throughput: GN against BN*, one train step at a time, side by side.

Each contender is the real training step of ``gn-detect`` (``trainer.prepare``
on ``DetectionTask``: the shapes input pipeline with RPN targets, the model,
SGD with coupled L2, ``strategy.run``) on one device:

* ``gn``: GN in the backbone, FPN, 4conv1fc box head and mask head (the
  paper's Table 6 "GN" row);
* ``frozen_bn``: BN* in the backbone, no norm in FPN and heads, the same
  4conv1fc head (Table 5's BN* row), i.e. the Detectron baseline;
* ``gn_backbone``: GN where ``frozen_bn`` has BN* and nowhere else, the
  same-placement comparison (what swapping BN* for GN costs by itself).

The goal (GN/BN* ≤ 1.05 in wall clock) is on ``gn`` / ``frozen_bn``, which
includes the 14 layers the GN model normalizes beyond the baseline (FPN and
heads), as the paper's comparison does.

Everything else is the main job's model (``gn-detect`` with no flags) at
``--image_size`` (shapes images of that size).  Steps of all contenders are
interleaved with a rotating order (``bench/train_throughput.py``'s timing,
reused with its ``--steps``, ``--warmup_steps``, ``--batch_size`` and
``--mixed_precision`` flags).  Every contender reads the same sequence of
batches, so a round compares the same images; besides the ratio of median
step times the report gives the median of the per-round ratios, which load
from other processes disturbs less (a burst slows both steps of a round).
Results, with the date and machine, go to
``bench/results/detect_throughput.json``::

    python bench/detect_throughput.py                       # 128 px, batch 2
    python bench/detect_throughput.py --image_size=256 --backbone=resnet50
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GN_KERAS_KERNELS", "require")  # measure the compiled GN kernel

import tempfile  # noqa: E402

import keras  # noqa: E402
import report  # noqa: E402  (bench/ is the script's directory)
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from train_throughput import interleaved_times, summarize  # noqa: E402  (its flags too)

from gn_keras.train import detect, trainer  # noqa: E402
from gn_keras.train.detection import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "resnet18_narrow", "Zoo backbone of every contender.")
FLAGS.set_default("batch_size", 2)
FLAGS.set_default("image_size", 128)
FLAGS.set_default("steps", 40)

_NO_HEAD_NORMS = {"fpn_norm": "none", "box_head_norm": "none", "mask_head_norm": "none"}
CONTENDERS = {
    "gn": {"backbone_norm": "gn", "fpn_norm": "gn", "box_head_norm": "gn", "mask_head_norm": "gn"},
    "gn_backbone": {"backbone_norm": "gn", **_NO_HEAD_NORMS},
    "frozen_bn": {"backbone_norm": "frozen_bn", **_NO_HEAD_NORMS},
}
GOAL_PAIR = ("gn", "frozen_bn")
RATIOS = (GOAL_PAIR, ("gn_backbone", "frozen_bn"))
GOAL = 1.05


def contender(norms, data_dir):
    """A zero-argument callable running one synced training step of one contender."""
    size = FLAGS.image_size
    config = config_lib.make_config(
        **norms,
        backbone=FLAGS.backbone,
        image_size=(size, size),
        short_side=size,
        max_side=size,
        shapes_image_size=size,
        shapes_train_images=16,
        shapes_val_images=2,
        data_dir=data_dir,
        batch_size_per_replica=FLAGS.batch_size,
        mixed_precision=FLAGS.mixed_precision,
        strategy="one_device",
        model_dir=os.path.join(data_dir, "unused"),
    )
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    run = trainer.prepare(detect.make_task(config), config, strategy)
    dataset = strategy.distribute_datasets_from_function(run.data.train_dataset_fn(0, 0))
    iterator = iter(dataset)
    return lambda: float(run.runner.train_step(iterator))


def main(argv):
    del argv
    started, machine = report.start()
    keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    with tempfile.TemporaryDirectory() as data_dir:
        calls = {name: contender(norms, data_dir) for name, norms in CONTENDERS.items()}
        times = interleaved_times(calls, FLAGS.steps, FLAGS.warmup_steps)
    rows = summarize(times, FLAGS.batch_size)
    found = report.both_ratios(rows, times, [(f"{n}/{d}", n, d) for n, d in RATIOS])
    print(
        f"Mask R-CNN {FLAGS.backbone}-FPN, {FLAGS.mixed_precision}, batch {FLAGS.batch_size}, "
        f"{FLAGS.image_size} px, {FLAGS.steps} interleaved rounds; "
        f"{report.header(started, machine)}"
    )
    report.print_step_report(rows, found, "contender", "images/s", ".1f", ratio_format=".3f")
    goal = found["gn/frozen_bn (median of per-round ratios)"]["wall"]
    verdict = "met" if goal <= GOAL else "NOT met"
    print(f"GN/BN* wall (median of per-round ratios): {goal:.3f}; goal <= {GOAL}: {verdict}")
    settings = {
        "backbone": FLAGS.backbone,
        "image_size": FLAGS.image_size,
        "batch_size": FLAGS.batch_size,
        "steps": FLAGS.steps,
        "warmup_steps": FLAGS.warmup_steps,
        "mixed_precision": FLAGS.mixed_precision,
        "contenders": CONTENDERS,
        "goal": f"gn/frozen_bn wall <= {GOAL}",
    }
    path = FLAGS.json or report.default_path("detect_throughput.json")
    report.write_result(
        path, settings, rows, found, started=started, machine=machine, round_times=times
    )


if __name__ == "__main__":
    app.run(main)
