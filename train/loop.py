"""The one training loop of every task: epochs of distributed steps, evaluation, checkpoints.

``run_epochs`` drives a ``TrainingRun``: a ``train.steps.StepRunner`` for
whatever strategy and task it was built with, the task's data, the
``train.checkpoints.Checkpointer`` and the ``train.outputs.RunOutputs``.  Per
epoch it takes the epoch's batches from the run's training iterator
(``train.iterators``: one distributed iterator serves many epochs, as
building and deleting one per epoch costs seconds), runs the steps in chunks
of at most ``steps_per_loop`` per call, evaluates, hands the
``train.records.EpochRecord`` to the outputs and then checkpoints — results
first, so an interruption between the two re-runs the epoch and replaces its
record rather than losing it.  It starts from wherever the checkpoint says:
completed epochs are never repeated, and a partly trained epoch resumes at
its next batch.

A chunk never crosses a log point, a step checkpoint or the end of the
epoch, so resuming stays exact at any checkpointed step; the loss and the
learning rate are read (a host sync) only at log points, where the progress
line, TensorBoard and the preemption check run.

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

from gn_keras.train import iterators
from gn_keras.train import optimizer as optimizer_lib
from gn_keras.train import records as records_lib


@dataclasses.dataclass
class LoopPlan:
    """How long to train and how often to log and checkpoint."""

    epochs: int
    steps_per_epoch: int
    eval_steps: int
    global_batch_size: int
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10
    steps_per_loop: int = 1

    def chunk_end(self, epoch, step):
        """Where the chunk of steps starting at ``step`` of ``epoch`` stops.

        Chunks start at each step whose global index is a multiple of
        ``log_every_steps`` (that step's loss and learning rate are logged:
        the first of a chunk) and stop at each step checkpoint.
        """
        end = min(step + self.steps_per_loop, self.steps_per_epoch)
        first_index = epoch * self.steps_per_epoch
        every = self.log_every_steps
        end = min(end, ((first_index + step) // every + 1) * every - first_index)
        if self.checkpoint_every_steps:
            every = self.checkpoint_every_steps
            end = min(end, (step // every + 1) * every)
        return end


@dataclasses.dataclass
class TrainingRun:
    """The collaborators of one run, as the loop uses them."""

    runner: object  # train.steps.StepRunner
    data: object  # train.task.TaskData
    checkpointer: object  # train.checkpoints.Checkpointer
    outputs: object  # train.outputs.RunOutputs
    plan: LoopPlan


def _progress_verbosity(is_chief):
    """A live bar on a terminal; one plain line per epoch in a log file.

    Keras's bar redraws itself with control codes whenever ``posix`` is
    imported, terminal or not, which fills redirected logs with them.
    """
    if not is_chief:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _train_epoch(run, train_input, epoch, first_step):
    """Train ``epoch`` from ``first_step``: (train metrics, examples/s).

    ``train_input``: the run's ``train.iterators.TrainInput``.
    """
    runner, plan, checkpointer = run.runner, run.plan, run.checkpointer
    iterator = train_input.epoch_iterator(epoch, first_step)
    started = time.perf_counter()
    runner.reset_train_metrics()
    progress = keras.utils.Progbar(
        plan.steps_per_epoch,
        stateful_metrics=["lr"],
        verbose=_progress_verbosity(run.outputs.is_chief),
    )
    step = first_step
    while step < plan.steps_per_epoch:
        end = plan.chunk_end(epoch, step)
        first_index = epoch * plan.steps_per_epoch + step
        logged = first_index % plan.log_every_steps == 0
        if logged or end == plan.steps_per_epoch:
            learning_rate = optimizer_lib.current_learning_rate(runner.optimizer)
        first_loss = runner.train_steps(iterator, end - step)  # the chunk's first step
        step = end
        if logged or step == plan.steps_per_epoch:
            first_loss = float(first_loss)
            # Labelled: beside the epoch's "train loss without L2", a bare "loss"
            # read as if L2 lowered it.  Progbar's final line shows the last
            # value it was given (its running mean only while the epoch goes).
            progress.update(step, [("last-step loss with L2", first_loss), ("lr", learning_rate)])
        if logged:
            run.outputs.log_step(first_index, first_loss, learning_rate)
        if step == plan.steps_per_epoch:
            break  # the epoch-end checkpoint follows evaluation and results
        if plan.checkpoint_every_steps and step % plan.checkpoint_every_steps == 0:
            checkpointer.save(epoch, step, epoch * plan.steps_per_epoch + step)
        checkpointer.after_step(epoch, step, epoch * plan.steps_per_epoch + step)
    seconds = time.perf_counter() - started
    trained = plan.steps_per_epoch - first_step
    return runner.train_results(), trained * plan.global_batch_size / seconds


def evaluate(runner, data, eval_steps, eval_input=None):
    """Validation metrics of the model: the task's evaluator over ``eval_steps`` batches.

    ``eval_input``: the run's ``train.iterators.EvalInput`` (default: a new one).
    """
    evaluator = runner.evaluator
    if eval_input is None:
        eval_input = iterators.EvalInput(runner.strategy, data, eval_steps)
    iterator = eval_input.iterator()
    evaluator.reset()
    for _ in range(eval_steps):
        outputs = runner.eval_step(iterator)
        if outputs is not None:
            evaluator.accumulate(outputs)
    return evaluator.result()


def _run_epoch(run, inputs, epoch, first_step):
    learning_rate = optimizer_lib.current_learning_rate(run.runner.optimizer)
    started = time.perf_counter()
    train_input, eval_input = inputs
    train_metrics, examples_per_sec = _train_epoch(run, train_input, epoch, first_step)
    val_metrics = evaluate(run.runner, run.data, run.plan.eval_steps, eval_input)
    return records_lib.EpochRecord(
        epoch=epoch,
        train=train_metrics,
        val=val_metrics,
        learning_rate=learning_rate,
        images_per_sec=examples_per_sec,
        seconds=time.perf_counter() - started,
        resumed_at_step=first_step,
    )


def _describe(record, metric):
    shown = ", ".join(
        f"{name} {value:.4f}"
        for name, value in record.val.items()
        if name != "loss" or metric == "loss"
    )
    # The progress bar's loss is what the optimizer minimised (L2 term
    # included); results.json's train loss, shown here too, excludes it.
    train_loss = record.train.get("loss")
    data_loss = "" if train_loss is None else f"train loss without L2 {train_loss:.4f}; "
    return f"  {data_loss}val {shown}; {rate_text(record.images_per_sec)}"


def rate_text(per_second, unit="example"):
    """``"12.5 examples/s"``, or below one a second ``"125.0 s/example"``.

    A slow run (a detector at full size on a CPU) reads as ``0.0`` per
    second otherwise.
    """
    if 0 < per_second < 1:
        return f"{1 / per_second:.1f} s/{unit}"
    return f"{per_second:.1f} {unit}s/s"


def run_epochs(run, callbacks=()):
    """Train from the latest checkpoint to ``run.plan.epochs``; return the results.

    ``callbacks``: ``keras.callbacks.Callback``s, given ``run.runner.model``
    and called as the module doc says, with each epoch's ``EpochRecord.logs()``.
    """
    plan, outputs, checkpointer = run.plan, run.outputs, run.checkpointer
    callbacks = keras.callbacks.CallbackList(
        list(callbacks), model=run.runner.model, epochs=plan.epochs, steps=plan.steps_per_epoch
    )
    start_epoch, start_step = checkpointer.restore()
    outputs.resume(start_epoch)
    if outputs.is_chief and (start_epoch or start_step):
        # Epochs are printed 1-based, as "Epoch N/E"; results.json stays 0-based.
        print(
            f"Resuming at epoch {start_epoch + 1}, step {start_step} from {checkpointer.directory}"
        )
    callbacks.on_train_begin()
    strategy = run.runner.strategy
    inputs = (
        iterators.TrainInput(strategy, run.data, plan),
        iterators.EvalInput(strategy, run.data, plan.eval_steps),
    )
    logs = None
    for epoch in range(start_epoch, plan.epochs):
        first_step = start_step if epoch == start_epoch else 0
        if outputs.is_chief:
            print(f"Epoch {epoch + 1}/{plan.epochs}")
        callbacks.on_epoch_begin(epoch)
        record = _run_epoch(run, inputs, epoch, first_step)
        if outputs.is_chief:
            print(_describe(record, outputs.metric))
        outputs.end_epoch(record, run.runner.model)
        logs = record.logs()
        callbacks.on_epoch_end(epoch, logs)
        checkpointer.save(epoch + 1, 0, (epoch + 1) * plan.steps_per_epoch)
    callbacks.on_train_end(logs)
    outputs.write_results()
    return outputs.results
