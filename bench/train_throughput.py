"""Training throughput: ResNet-50 with BN, our GN and Keras's GN, one train step at a time.

Each contender is the real training step of ``train.classify`` (``prepare``:
input pipeline, model, SGD with coupled L2, ``strategy.run``) on one
device.  Two input pipelines are measured:

* ``synthetic``: random RGB images already in memory (model cost only);
* ``digits``: sklearn's digits through the full tf.data pipeline
  (upsampled to the same size, one channel), i.e. the model plus real input.

Every step's wall time and this process's CPU time are recorded; steps of
all contenders are interleaved with a rotating order, so load from other
processes on a shared machine is spread over all of them.  The script
prints a Markdown table of median step times and images/s plus the GN/BN
and ours/Keras-GN step-time ratios, and writes everything, with the date and
machine, to a JSON file::

    python bench/train_throughput.py                 # batch 8, 112 px, ~10 min on 2 cores
    python bench/train_throughput.py --steps=3 --norms=gn,bn --pipelines=synthetic
    python bench/train_throughput.py --mixed_precision=mixed_bfloat16 --pipelines=synthetic

``--mixed_precision`` sets the Keras dtype policy for every contender (the
normalizations keep float32 statistics under it); the report goes to
``bench/results/train_throughput_<policy>.json`` unless ``--json`` says otherwise.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# "gn" measures the compiled kernels (gn_keras/kernels); GN_KERAS_KERNELS=off
# measures the TensorFlow-ops fallback instead.
os.environ.setdefault("GN_KERAS_KERNELS", "require")

import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import report  # noqa: E402  (bench/ is the script's directory)
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from gn_keras.train import classify  # noqa: E402
from gn_keras.train import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 10, "Timed steps per contender.", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per contender (tracing).", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "Images per step.", lower_bound=1)
flags.DEFINE_integer("image_size", 112, "Square input size.", lower_bound=32)
flags.DEFINE_list("norms", ["bn", "gn", "keras_gn"], "Normalizations to compare.")
flags.DEFINE_list("pipelines", ["synthetic", "digits"], "Input pipelines to measure.")
flags.DEFINE_enum(
    "mixed_precision",
    "float32",
    list(config_lib.PRECISIONS),
    "Keras dtype policy of every contender.",
)
flags.DEFINE_string(
    "json",
    None,
    "Where to write the results (default: bench/results/train_throughput_<mixed_precision>.json).",
)

RATIOS = (("gn", "bn"), ("gn", "keras_gn"))


def contender(norm, pipeline, batch_size, image_size, mixed_precision):
    """A zero-argument callable running one training step, synced.

    The caller sets the global dtype policy to ``mixed_precision`` first: the
    model is built under it, as ``train.classify.train`` does.
    """
    config = config_lib.make_config(
        mixed_precision=mixed_precision,
        model="resnet50",
        norm=norm,
        groups=32,
        dataset=pipeline,
        image_size=image_size,
        batch_size_per_replica=batch_size,
        num_classes=1000 if pipeline == "synthetic" else None,
        weight_decay=1e-4,
        lr_reference_batch=256,
        warmup_epochs=0,
        lr_schedule="constant",
        strategy="one_device",
    )
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    run = classify.prepare(config, strategy)
    iterator = iter(strategy.distribute_datasets_from_function(run.data.train_dataset_fn(0, 0)))
    return lambda: float(run.runner.train_step(iterator))


def interleaved_times(calls, steps, warmup_steps):
    """Per contender, the wall and CPU seconds of each timed step.

    ``first`` is the wall time of the first, untimed step: tracing, and
    compiling whatever the step compiles.
    """
    names = list(calls)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for name, call in calls.items():
        started = time.perf_counter()
        call()
        times[name]["first"] = time.perf_counter() - started
        for _ in range(warmup_steps - 1):
            call()
    for round_index in range(steps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            calls[name]()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def summarize(times, batch_size):
    rows = {}
    for name, measured in times.items():
        wall, cpu = statistics.median(measured["wall"]), statistics.median(measured["cpu"])
        rows[name] = {
            "median_step_s": wall,
            "median_cpu_step_s": cpu,
            "images_per_sec": batch_size / wall,
            "steps": len(measured["wall"]),
            "first_step_s": measured["first"],
        }
    return rows


def main(argv):
    del argv
    started, machine = report.start()
    keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    calls = {
        f"{pipeline}/{norm}": contender(
            norm, pipeline, FLAGS.batch_size, FLAGS.image_size, FLAGS.mixed_precision
        )
        for pipeline in FLAGS.pipelines
        for norm in FLAGS.norms
    }
    rows = summarize(interleaved_times(calls, FLAGS.steps, FLAGS.warmup_steps), FLAGS.batch_size)
    found = report.ratios(rows, FLAGS.pipelines, RATIOS)
    print(
        f"ResNet-50, {FLAGS.mixed_precision}, batch {FLAGS.batch_size}, {FLAGS.image_size} px, "
        f"{FLAGS.steps} steps; {report.header(started, machine)}"
    )
    report.print_step_report(rows, found, "pipeline/norm", "images/s", ".1f")
    settings = {
        "model": "resnet50",
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "steps": FLAGS.steps,
        "mixed_precision": FLAGS.mixed_precision,
        "warmup_steps": FLAGS.warmup_steps,
    }
    path = FLAGS.json or report.default_path(f"train_throughput_{FLAGS.mixed_precision}.json")
    report.write_result(path, settings, rows, found, started=started, machine=machine)


if __name__ == "__main__":
    app.run(main)
