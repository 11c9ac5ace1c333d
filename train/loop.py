"""The one training loop: epochs of distributed steps, evaluation, checkpoints.

``run_epochs`` drives a ``train.steps.StepRunner`` for whatever strategy it
was built with.  Per epoch it builds the epoch's distributed dataset
(``strategy.distribute_datasets_from_function``), runs the steps with a
``keras.utils.Progbar``, evaluates, hands the epoch record to
``train.outputs.RunOutputs`` and then checkpoints through
``train.checkpoints.Checkpointer`` — results first, so an interruption
between the two re-runs the epoch and replaces its record rather than
losing it.  It starts from wherever the checkpoint says: completed epochs
are never repeated, and a partly trained epoch resumes at its next batch.

Keras callbacks (a ``keras.callbacks.CallbackList``) get ``on_train_begin``,
``on_epoch_begin``, ``on_epoch_end`` and ``on_train_end`` (no batch hooks),
on every worker as ``Model.fit`` does.  ``on_epoch_end`` comes after the
epoch's results and before its checkpoint, so what a callback records is
never lost to an interruption; the price is that an epoch interrupted in
between is run, and reported, again.  A resumed run reports only the epochs
it runs, so a callback that accumulates must merge with what an earlier
attempt stored, keyed by epoch.
"""

import dataclasses
import sys
import time

import keras

from gn_keras.train import optimizer as optimizer_lib


@dataclasses.dataclass
class LoopPlan:
    """How long to train and how often to log and checkpoint."""

    epochs: int
    steps_per_epoch: int
    eval_steps: int
    global_batch_size: int
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10


def _train_epoch(runner, pipeline, checkpointer, outputs, plan, epoch, first_step):
    strategy = runner.strategy
    dataset = strategy.distribute_datasets_from_function(
        pipeline.train_dataset_fn(epoch, skip_steps=first_step)
    )
    iterator = iter(dataset)
    runner.reset(runner.train_metrics)
    progress = keras.utils.Progbar(
        plan.steps_per_epoch, stateful_metrics=["lr"], verbose=_progress_verbosity(outputs.is_chief)
    )
    started = time.perf_counter()
    for step in range(first_step, plan.steps_per_epoch):
        global_step = epoch * plan.steps_per_epoch + step
        learning_rate = optimizer_lib.current_learning_rate(runner.optimizer)
        loss = float(runner.train_step(iterator))
        progress.update(step + 1, [("loss", loss), ("lr", learning_rate)])
        if global_step % plan.log_every_steps == 0:
            outputs.log_step(global_step, loss, learning_rate)
        done = step + 1
        if done == plan.steps_per_epoch:
            break  # the epoch-end checkpoint follows evaluation and results
        if plan.checkpoint_every_steps and done % plan.checkpoint_every_steps == 0:
            checkpointer.save(epoch, done, global_step + 1)
        checkpointer.after_step(epoch, done)
    seconds = time.perf_counter() - started
    trained = plan.steps_per_epoch - first_step
    return runner.results(runner.train_metrics), trained * plan.global_batch_size / seconds


def _progress_verbosity(is_chief):
    """A live bar on a terminal; one plain line per epoch in a log file.

    Keras's bar redraws itself with control codes whenever ``posix`` is
    imported, terminal or not, which fills redirected logs with them.
    """
    if not is_chief:
        return 0
    return 1 if sys.stdout.isatty() else 2


def evaluate(runner, pipeline, eval_steps):
    """Metrics of the model on the validation set (padded examples ignored)."""
    dataset = runner.strategy.distribute_datasets_from_function(
        pipeline.eval_dataset_fn(eval_steps)
    )
    iterator = iter(dataset)
    runner.reset(runner.eval_metrics)
    for _ in range(eval_steps):
        runner.eval_step(iterator)
    return runner.results(runner.eval_metrics)


def epoch_logs(record):
    """Keras-style logs of an epoch record: train metrics, then ``val_``-prefixed."""
    return {**record["train"], **{f"val_{name}": value for name, value in record["val"].items()}}


def run_epochs(runner, pipeline, checkpointer, outputs, plan, callbacks=()):
    """Train from the latest checkpoint to ``plan.epochs``; return the results.

    ``callbacks``: ``keras.callbacks.Callback``s, given ``runner.model`` and
    called as the module doc says, with ``epoch_logs`` of each epoch.
    """
    callbacks = keras.callbacks.CallbackList(
        list(callbacks), model=runner.model, epochs=plan.epochs, steps=plan.steps_per_epoch
    )
    start_epoch, start_step = checkpointer.restore()
    outputs.resume(start_epoch)
    if outputs.is_chief and (start_epoch or start_step):
        print(f"Resuming at epoch {start_epoch}, step {start_step} from {checkpointer.directory}")
    callbacks.on_train_begin()
    logs = None
    for epoch in range(start_epoch, plan.epochs):
        first_step = start_step if epoch == start_epoch else 0
        if outputs.is_chief:
            print(f"Epoch {epoch + 1}/{plan.epochs}")
        callbacks.on_epoch_begin(epoch)
        learning_rate = optimizer_lib.current_learning_rate(runner.optimizer)
        started = time.perf_counter()
        train_metrics, images_per_sec = _train_epoch(
            runner, pipeline, checkpointer, outputs, plan, epoch, first_step
        )
        val_metrics = evaluate(runner, pipeline, plan.eval_steps)
        record = {
            "epoch": epoch,
            "train": train_metrics,
            "val": val_metrics,
            "learning_rate": learning_rate,
            "images_per_sec": images_per_sec,
            "seconds": time.perf_counter() - started,
            "resumed_at_step": first_step,
        }
        if outputs.is_chief:
            print(
                f"  val top-1 error {val_metrics['top1_error']:.4f}, "
                f"top-5 error {val_metrics['top5_error']:.4f}, "
                f"{images_per_sec:.1f} images/s"
            )
        outputs.end_epoch(record, runner.model)
        logs = epoch_logs(record)
        callbacks.on_epoch_end(epoch, logs)
        checkpointer.save(epoch + 1, 0, (epoch + 1) * plan.steps_per_epoch)
    callbacks.on_train_end(logs)
    outputs.write_results()
    return outputs.results
