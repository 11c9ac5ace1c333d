"""Mask R-CNN training throughput: GN against BN*, one train step at a time, side by side.

Each contender is the real training step of ``gn-detect`` (``trainer.prepare``
on ``DetectionTask``: the shapes input pipeline with RPN targets, the model,
SGD with coupled L2, ``strategy.run``) on one device:

* ``gn``: GN in the backbone, FPN, 4conv1fc box head and mask head (the
  paper's Table 6 "GN" row);
* ``frozen_bn``: BN* in the backbone, no norm in FPN and heads, the same
  4conv1fc head (Table 5's BN* row), i.e. the Detectron baseline.

Everything else is the main job's model (``gn-detect`` with no flags) at
``--image_size`` (shapes images of that size).  Steps of both contenders are
interleaved with a rotating order (``bench/train_throughput.py``'s timing,
reused with its ``--steps``, ``--warmup_steps``, ``--batch_size`` and
``--mixed_precision`` flags), so load from other processes is spread over
both.  Prints median wall and CPU step times and the GN/BN* ratios, and writes
them with the date and machine to ``bench/results/detect_throughput.json``::

    python bench/detect_throughput.py                       # 128 px, batch 2
    python bench/detect_throughput.py --image_size=256 --backbone=resnet50
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GN_KERAS_KERNELS", "require")  # measure the compiled GN kernel

import datetime  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from machine import machine_info  # noqa: E402  (bench/ is the script's directory)
from train_throughput import interleaved_times, summarize  # noqa: E402  (its flags too)

from gn_keras.train import detect, outputs, trainer  # noqa: E402
from gn_keras.train.detection import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "resnet18_narrow", "Zoo backbone of both contenders.")
FLAGS.set_default("batch_size", 2)
FLAGS.set_default("image_size", 128)
FLAGS.set_default("steps", 20)

CONTENDERS = {
    "gn": {"backbone_norm": "gn", "fpn_norm": "gn", "box_head_norm": "gn", "mask_head_norm": "gn"},
    "frozen_bn": {
        "backbone_norm": "frozen_bn",
        "fpn_norm": "none",
        "box_head_norm": "none",
        "mask_head_norm": "none",
    },
}


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
    started = datetime.datetime.now(datetime.UTC)
    machine = machine_info()
    keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    with tempfile.TemporaryDirectory() as data_dir:
        calls = {name: contender(norms, data_dir) for name, norms in CONTENDERS.items()}
        rows = summarize(
            interleaved_times(calls, FLAGS.steps, FLAGS.warmup_steps), FLAGS.batch_size
        )
    gn, bn = rows["gn"], rows["frozen_bn"]
    ratio = {
        "wall": gn["median_step_s"] / bn["median_step_s"],
        "cpu": gn["median_cpu_step_s"] / bn["median_cpu_step_s"],
    }
    print(
        f"Mask R-CNN {FLAGS.backbone}-FPN, {FLAGS.mixed_precision}, batch {FLAGS.batch_size}, "
        f"{FLAGS.image_size} px, {FLAGS.steps} interleaved steps; {started:%Y-%m-%d %H:%M} UTC "
        f"on {machine['cpu']} ({machine['logical_cpus']} CPUs, "
        f"load {machine.get('load_average_at_start')})"
    )
    print("| contender | median step s | CPU s/step | images/s | first step s |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['median_step_s']:.3f} | {row['median_cpu_step_s']:.3f} "
            f"| {row['images_per_sec']:.1f} | {row['first_step_s']:.1f} |"
        )
    print(
        f"GN/BN* step time: wall {ratio['wall']:.3f}, CPU {ratio['cpu']:.3f} (goal: wall <= 1.05)"
    )
    report = {
        "date": started.isoformat(),
        "machine": machine,
        "settings": {
            "backbone": FLAGS.backbone,
            "image_size": FLAGS.image_size,
            "batch_size": FLAGS.batch_size,
            "steps": FLAGS.steps,
            "warmup_steps": FLAGS.warmup_steps,
            "mixed_precision": FLAGS.mixed_precision,
            "contenders": CONTENDERS,
        },
        "results": rows,
        "ratio_gn_over_frozen_bn": ratio,
    }
    path = FLAGS.json or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "detect_throughput.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    outputs.write_json_atomically(path, report)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
