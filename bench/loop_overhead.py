"""The training loop's own overhead: our loop against Keras ``fit``, same model and data.

Setting (issue 11): a GN ResNet-20 (G=8) at 16 px, batch 32, on in-memory
synthetic images, one device.  Contenders, each a fresh model trained for
``--steps`` steps per timed round:

* ``ours_k<K>``: the real epoch loop of ``gn_keras.train.loop`` (progress,
  TensorBoard step summaries, preemption check, the task's metrics) with
  ``--steps_per_loop=K``, for each K of ``--steps_per_loop``;
* ``keras_fit``: ``Model.fit(steps_per_execution=K_max)`` with SGD and the
  same cross-entropy, on the same tf.data batches.

Rounds are interleaved with a rotating order, so load from other processes
on a shared machine is spread over all contenders; the first round of each
(tracing) is not timed.  Prints images/s medians and the ratio of each of
ours to ``keras_fit``, and writes them with the date and machine to
``bench/results/loop_overhead.json``::

    python bench/loop_overhead.py                  # ~3 min on 2 cores
    python bench/loop_overhead.py --rounds=5 --steps=320
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GN_KERAS_KERNELS", "require")

import datetime  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from machine import machine_info  # noqa: E402  (bench/ is the script's directory)

from gn_keras.train import checkpoints, classify, loop, outputs  # noqa: E402
from gn_keras.train import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 3, "Timed rounds per contender (median reported).", lower_bound=1)
flags.DEFINE_integer("steps", 160, "Training steps per round.", lower_bound=1)
flags.DEFINE_list("steps_per_loop", ["1", "16"], "Our loop's --steps_per_loop values.")
flags.DEFINE_string("json", "bench/results/loop_overhead.json", "Where to write the report.")

BATCH_SIZE = 32


def _config(steps, steps_per_loop, model_dir):
    return config_lib.make_config(
        model="resnet20",
        norm="gn",
        groups=8,
        dataset="synthetic",
        num_classes=10,
        image_size=16,
        batch_size_per_replica=BATCH_SIZE,
        steps_per_epoch=steps,
        eval_steps=1,
        lr_schedule="constant",
        warmup_epochs=0,
        strategy="one_device",
        steps_per_loop=steps_per_loop,
        model_dir=model_dir,
    )


def ours(steps, steps_per_loop, work_dir):
    """A callable training one epoch of ``steps`` steps through the real loop."""
    config = _config(steps, steps_per_loop, os.path.join(work_dir, f"k{steps_per_loop}"))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    prepared = classify.prepare(config, strategy)
    run_outputs = outputs.RunOutputs(
        config.model_dir, strategy, config.as_dict(), prepared.data.preprocessing, {}
    )
    checkpointer = checkpoints.Checkpointer(
        strategy, prepared.model, prepared.optimizer, run_outputs.paths["checkpoints"]
    )
    run = loop.TrainingRun(prepared.runner, prepared.data, checkpointer, run_outputs, prepared.plan)
    epochs = iter(range(10**6))
    return lambda: loop._train_epoch(run, next(epochs), 0)


def keras_fit(steps, steps_per_execution, work_dir):
    """A callable training ``steps`` steps of the same model and data with ``Model.fit``."""
    config = _config(steps, 1, os.path.join(work_dir, "fit"))
    # Keras fit runs under the default strategy, where the model must live too.
    prepared = classify.prepare(config, tf.distribute.get_strategy())
    dataset = prepared.data.train_dataset_fn(0, 0)(tf.distribute.InputContext())
    model = prepared.model
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return lambda: model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)


def interleaved_rounds(calls, rounds):
    """Wall seconds of each timed round per contender (an untimed first round each)."""
    names = list(calls)
    for call in calls.values():
        call()
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - started)
    return times


def main(argv):
    del argv
    started = datetime.datetime.now(datetime.UTC)
    machine = machine_info()
    loops = [int(k) for k in FLAGS.steps_per_loop]
    with tempfile.TemporaryDirectory() as work_dir:
        calls = {f"ours_k{k}": ours(FLAGS.steps, k, work_dir) for k in loops}
        calls["keras_fit"] = keras_fit(FLAGS.steps, max(loops), work_dir)
        times = interleaved_rounds(calls, FLAGS.rounds)
    images = FLAGS.steps * BATCH_SIZE
    rows = {name: images / statistics.median(seconds) for name, seconds in times.items()}
    ratios = {
        f"{name}/keras_fit": rows[name] / rows["keras_fit"] for name in rows if name != "keras_fit"
    }
    print("| contender | images/s (median) |\n|---|---|")
    for name, speed in rows.items():
        print(f"| {name} | {speed:.0f} |")
    for name, ratio in ratios.items():
        print(f"{name} images/s ratio: {ratio:.3f}")
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "setting": {
            "model": "resnet20",
            "norm": "gn",
            "groups": 8,
            "image_size": 16,
            "batch_size": BATCH_SIZE,
            "steps_per_round": FLAGS.steps,
            "rounds": FLAGS.rounds,
            "keras_fit_steps_per_execution": max(loops),
        },
        "round_seconds": times,
        "images_per_sec": rows,
        "ratios": ratios,
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    outputs.write_json_atomically(FLAGS.json, report)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    app.run(main)
