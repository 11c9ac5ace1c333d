"""The training loop's own overhead: our loop against Keras ``fit``, same model and data.

Setting (issue 11): a GN ResNet-20 (G=8) at 16 px, batch 32, on in-memory
synthetic images, one device.  A round is one epoch of ``--steps`` steps;
every contender trains the same work per step:

* ``ours_k<K>``: the real epoch loop of ``gn_keras.train.loop`` (progress,
  TensorBoard step summaries every ``--log_every_steps``, preemption check,
  the task's loss/top-1/top-5 metrics, the coupled L2 of ``--weight_decay``)
  with ``--steps_per_loop=K``, for each K of ``--steps_per_loop``, on the
  run's one training iterator (``train.iterators.TrainInput``);
* ``keras_fit``: one ``Model.fit(steps_per_execution=K_max)`` of all the
  rounds, on the same tf.data batches, with the same SGD, cross-entropy,
  top-1/top-5 metrics and L2 term.  ``fit`` also keeps one iterator for all
  its epochs; an epoch is timed from ``on_epoch_begin`` to ``on_epoch_end``.

Rounds are interleaved with a rotating order (the other contenders run
inside ``fit``'s ``on_epoch_end``), so load from other processes on a shared
machine is spread over all of them; the first round of each (tracing) is
not timed.  Wall and process CPU seconds are both kept: on a loaded machine
the CPU time ratio is the steadier one.  Prints the medians, the ratios of
each of ours to ``keras_fit`` (of the medians, and the median of the
per-round ratios: a round's contenders run back to back, under about the
same load), and writes them with the date, the machine and its load to
``bench/results/loop_overhead.json``::

    python bench/loop_overhead.py                  # ~6 min on 2 cores
    python bench/loop_overhead.py --rounds=9 --weight_decay=0
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GN_KERAS_KERNELS", "require")

import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import report  # noqa: E402  (bench/ is the script's directory)
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from gn_keras.train import checkpoints, classification, classify, iterators, loop, outputs  # noqa: E402
from gn_keras.train import config as config_lib  # noqa: E402
from gn_keras.train import optimizer as optimizer_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 7, "Timed rounds per contender (median reported).", lower_bound=1)
flags.DEFINE_integer("steps", 160, "Training steps per round.", lower_bound=1)
flags.DEFINE_list("steps_per_loop", ["1", "16"], "Our loop's --steps_per_loop values.")
flags.DEFINE_integer(
    "log_every_steps",
    config_lib.TrainConfig.log_every_steps,
    "Our loop's --log_every_steps (chunks start at logged steps).",
    lower_bound=1,
)
flags.DEFINE_float(
    "weight_decay", config_lib.TrainConfig.weight_decay, "Coupled L2 on both sides.", lower_bound=0
)
flags.DEFINE_string(
    "json", None, "Where to write the report (default: bench/results/loop_overhead.json)."
)

BATCH_SIZE = 32
TABLE_COLUMNS = (
    ("images/s (median wall)", "images_per_sec", ".0f"),
    ("CPU ms per image (median)", lambda row: 1e3 * row["cpu_seconds_per_image"], ".2f"),
)


def _config(steps, steps_per_loop, model_dir):
    return config_lib.make_config(
        model="resnet20",
        norm="gn",
        groups=8,
        dataset="synthetic",
        num_classes=10,
        image_size=16,
        batch_size_per_replica=BATCH_SIZE,
        epochs=FLAGS.rounds + 1,
        steps_per_epoch=steps,
        eval_steps=1,
        lr_schedule="constant",
        warmup_epochs=0,
        weight_decay=FLAGS.weight_decay,
        strategy="one_device",
        steps_per_loop=steps_per_loop,
        log_every_steps=FLAGS.log_every_steps,
        model_dir=model_dir,
    )


def _clocks():
    return time.perf_counter(), time.process_time()


def ours(steps, steps_per_loop, work_dir, times):
    """A callable training the next epoch of ``steps`` steps through the real loop."""
    config = _config(steps, steps_per_loop, os.path.join(work_dir, f"k{steps_per_loop}"))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    prepared = classify.prepare(config, strategy)
    evaluator = prepared.runner.evaluator
    run_outputs = outputs.RunOutputs(
        config.model_dir,
        strategy,
        config.as_dict(),
        prepared.data.preprocessing,
        {},
        metric=evaluator.primary_metric,
        lower_is_better=evaluator.lower_is_better,
    )
    checkpointer = checkpoints.Checkpointer(
        strategy, prepared.model, prepared.optimizer, run_outputs.paths["checkpoints"]
    )
    run = loop.TrainingRun(prepared.runner, prepared.data, checkpointer, run_outputs, prepared.plan)
    train_input = iterators.TrainInput(strategy, prepared.data, prepared.plan)
    epochs = iter(range(config.epochs))

    def one_epoch(timed=True):
        wall, cpu = _clocks()
        loop._train_epoch(run, train_input, next(epochs), 0)
        if timed:
            times["wall"].append(time.perf_counter() - wall)
            times["cpu"].append(time.process_time() - cpu)

    return one_epoch


class _CoupledL2Model(keras.Model):
    """The zoo model under ``fit``, with our loop's L2 term added to its loss."""

    def __init__(self, inner, penalty):
        super().__init__(name="fit_model")
        self.inner = inner
        self.penalty = penalty

    def call(self, images, training=False):
        return self.inner(images, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss + self.penalty()


class _Interleaved(keras.callbacks.Callback):
    """Times ``fit``'s epochs; runs the other contenders' rounds in between.

    ``fit``'s epoch 0 is its untimed first round; epoch ``r + 1`` is round
    ``r``.  Round ``r`` runs the contenders in ``order(r)``; those before
    ``keras_fit`` run at the end of epoch ``r``, those after it at the end
    of epoch ``r + 1``.
    """

    def __init__(self, others, order, rounds, times):
        super().__init__()
        self.others, self.order, self.rounds, self.times = others, order, rounds, times

    def _split(self, round_index):
        names = self.order(round_index)
        at = names.index("keras_fit")
        return names[:at], names[at + 1 :]

    def on_epoch_begin(self, epoch, logs=None):
        self.started = _clocks()

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu = self.started
        if epoch > 0:
            self.times["wall"].append(time.perf_counter() - wall)
            self.times["cpu"].append(time.process_time() - cpu)
        after = self._split(epoch - 1)[1] if epoch > 0 else []
        before = self._split(epoch)[0] if epoch < self.rounds else []
        for name in after + before:
            self.others[name]()


def keras_fit(steps, steps_per_execution, work_dir, others, order, times):
    """``fit`` of all rounds, with ``others`` (name → callable) interleaved."""
    config = _config(steps, 1, os.path.join(work_dir, "fit"))
    # Keras fit runs under the default strategy, where the model must live too.
    prepared = classify.prepare(config, tf.distribute.get_strategy())
    dataset = prepared.data.train_dataset_fn(0, 0)(tf.distribute.InputContext())
    decayed = optimizer_lib.decayed_variables(prepared.model, config.decay_norm_params)
    model = _CoupledL2Model(
        prepared.model, lambda: optimizer_lib.l2_penalty(decayed, config.weight_decay)
    )
    metrics = classification.make_metrics(10)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[metrics["top1_error"], metrics["top5_error"]],
        steps_per_execution=steps_per_execution,
    )
    callback = _Interleaved(others, order, FLAGS.rounds, times)
    model.fit(
        dataset,
        epochs=FLAGS.rounds + 1,
        steps_per_epoch=steps,
        shuffle=False,  # the dataset shuffles itself; fit would warn it ignores this
        verbose=0,
        callbacks=[callback],
    )


def measure(loops, work_dir):
    """Wall and CPU seconds of each timed round per contender."""
    names = [f"ours_k{k}" for k in loops] + ["keras_fit"]
    times = {name: {"wall": [], "cpu": []} for name in names}
    others = {f"ours_k{k}": ours(FLAGS.steps, k, work_dir, times[f"ours_k{k}"]) for k in loops}
    for call in others.values():
        call(timed=False)

    def order(round_index):
        shift = round_index % len(names)
        return names[shift:] + names[:shift]

    keras_fit(FLAGS.steps, max(loops), work_dir, others, order, times["keras_fit"])
    return times


def summarize(times):
    images = FLAGS.steps * BATCH_SIZE
    rows = {
        name: {
            "images_per_sec": images / statistics.median(measured["wall"]),
            "cpu_seconds_per_image": statistics.median(measured["cpu"]) / images,
        }
        for name, measured in times.items()
    }
    ratios = {
        f"{name}/keras_fit": {
            **report.ratio(rows, name, "keras_fit", {"images_per_sec": "images_per_sec"}),
            # CPU seconds per image, inverted: fit's over ours is ours/fit in images per second.
            **report.ratio(
                rows, "keras_fit", name, {"cpu_images_per_sec": "cpu_seconds_per_image"}
            ),
            "paired_images_per_sec": _paired(times["keras_fit"]["wall"], times[name]["wall"]),
            "paired_cpu_images_per_sec": _paired(times["keras_fit"]["cpu"], times[name]["cpu"]),
        }
        for name in rows
        if name != "keras_fit"
    }
    return rows, ratios


def _paired(fit_seconds, our_seconds):
    """Median over rounds of fit's time over ours in the same round (run back to back)."""
    return statistics.median(f / o for f, o in zip(fit_seconds, our_seconds))


def main(argv):
    del argv
    started, machine = report.start()
    loops = [int(k) for k in FLAGS.steps_per_loop]
    with tempfile.TemporaryDirectory() as work_dir:
        times = measure(loops, work_dir)
    rows, ratios = summarize(times)
    print(
        f"GN ResNet-20, {FLAGS.rounds} rounds of {FLAGS.steps} steps; "
        f"{report.header(started, machine)}"
    )
    report.print_table(rows, TABLE_COLUMNS)
    for name, ratio in ratios.items():
        print(
            f"{name}: images/s ratio {ratio['images_per_sec']:.3f} (wall), "
            f"{ratio['cpu_images_per_sec']:.3f} (CPU time); median of per-round ratios "
            f"{ratio['paired_images_per_sec']:.3f} (wall), "
            f"{ratio['paired_cpu_images_per_sec']:.3f} (CPU time)"
        )
    settings = {
        "model": "resnet20",
        "norm": "gn",
        "groups": 8,
        "image_size": 16,
        "batch_size": BATCH_SIZE,
        "steps_per_round": FLAGS.steps,
        "rounds": FLAGS.rounds,
        "log_every_steps": FLAGS.log_every_steps,
        "weight_decay": FLAGS.weight_decay,
        "keras_fit_steps_per_execution": max(loops),
    }
    path = FLAGS.json or report.default_path("loop_overhead.json")
    report.write_result(
        path, settings, rows, ratios, started=started, machine=machine, round_seconds=times
    )


if __name__ == "__main__":
    app.run(main)
