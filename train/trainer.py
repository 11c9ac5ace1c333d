"""The training machinery shared by every task: set-up, the loop, the outputs.

``run(task, config)`` is a whole job for any ``gn_keras.train.task.Task``:
seed and dtype policy → strategy (created once) → the task's data → model
and optimizer in the strategy's scope → ``train.steps.StepRunner`` →
``train.loop.run_epochs`` with ``train.checkpoints`` and ``train.outputs``
→ the task's export, staged and swapped in → a barrier for multi-worker
jobs.  ``evaluate_only(task, config)`` evaluates a run's newest checkpoint
under the same seed, policy and strategy.  ``prepare`` stops before the
first step (benchmarks use it).

The config is any object with the fields of ``train.config.TrainConfig``'s
execution, optimizer and output settings; a task's own config adds fields.
"""

import contextlib
import dataclasses
import os

import keras
import tensorflow as tf

from gn_keras.train import checkpoints, cluster, loop, outputs, settings, steps, workdir
from gn_keras.train import optimizer as optimizer_lib
from gn_keras.train import strategy as strategy_lib

EVAL_FILE = "eval.json"  # written by evaluate_only


@dataclasses.dataclass
class Prepared:
    """Everything a run trains with, before any step is taken."""

    task: object
    data: object  # train.task.TaskData
    plan: loop.LoopPlan
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    runner: steps.StepRunner


def prepare(task, config, strategy, data=None):
    """Data, model, optimizer and compiled steps of a run (no outputs yet).

    The model, optimizer and metrics are built in ``strategy``'s scope; the
    optimizer is built too, so a checkpoint restores into existing slots.
    ``data`` is the task's ``TaskData`` when the caller made it already.
    """
    if data is None:
        data = task.make_data(config, strategy)
    plan = loop.LoopPlan(
        epochs=config.epochs,
        steps_per_epoch=data.steps_per_epoch,
        eval_steps=data.eval_steps,
        global_batch_size=data.global_batch_size,
        checkpoint_every_steps=config.checkpoint_every_steps,
        log_every_steps=config.log_every_steps,
        steps_per_loop=config.steps_per_loop,
    )
    with strategy.scope():
        model = task.build_model(config, data)
        schedule = optimizer_lib.make_schedule(config, data.global_batch_size, plan.steps_per_epoch)
        optimizer = optimizer_lib.make_optimizer(config, schedule)
        optimizer.build(model.trainable_variables)
        evaluator = task.make_evaluator(data)
    runner = steps.StepRunner(
        strategy,
        model,
        optimizer,
        task=task,
        global_batch_size=data.global_batch_size,
        evaluator=evaluator,
        weight_decay=config.weight_decay,
        decayed_variables=optimizer_lib.decayed_variables(model, config.decay_norm_params),
        jit_compile=config.jit_compile,
    )
    return Prepared(task, data, plan, model, optimizer, runner)


def run_info(config, strategy, prepared):
    """The facts of a run that ``results.json`` records next to its flags."""
    return {
        "task": prepared.task.name,
        "strategy": strategy_lib.strategy_name(strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "num_workers": strategy_lib.num_workers(strategy),
        "global_batch_size": prepared.data.global_batch_size,
        "peak_learning_rate": optimizer_lib.peak_learning_rate(
            config, prepared.data.global_batch_size
        ),
        "steps_per_epoch": prepared.plan.steps_per_epoch,
        "eval_steps": prepared.plan.eval_steps,
        **prepared.data.info,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def _checked_callbacks(callbacks):
    """``callbacks=`` as a list; anything but Keras callbacks is refused."""
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(callbacks, list | tuple):
        raise ValueError(
            f"callbacks={callbacks!r} is invalid: expected a list of keras.callbacks.Callback."
        )
    for callback in callbacks:
        if not isinstance(callback, keras.callbacks.Callback):
            raise ValueError(f"callbacks: {callback!r} is not a keras.callbacks.Callback.")
    return list(callbacks)


def _run_in(task, config, strategy, callbacks, data):
    # Before anything is built or written: a rerun must not mix settings.
    shaping = settings.shaping_settings(config, data.global_batch_size)
    schedule_changes = settings.check(config.model_dir, shaping, extend_epochs=config.extend_epochs)
    prepared = prepare(task, config, strategy, data)
    # Stored once the model is built: a run that cannot start leaves no settings.
    if strategy_lib.is_chief(strategy):
        settings.record(config.model_dir, shaping, schedule_changes)
    evaluator = prepared.runner.evaluator
    run_outputs = outputs.RunOutputs(
        config.model_dir,
        strategy,
        config.as_dict(),
        prepared.data.preprocessing,
        {**run_info(config, strategy, prepared), "schedule_changes": schedule_changes},
        metric=evaluator.primary_metric,
        lower_is_better=evaluator.lower_is_better,
    )
    checkpointer = checkpoints.Checkpointer(
        strategy,
        prepared.model,
        prepared.optimizer,
        run_outputs.paths["checkpoints"],
        max_to_keep=config.keep_checkpoints,
    )
    training_run = loop.TrainingRun(
        prepared.runner, prepared.data, checkpointer, run_outputs, prepared.plan
    )
    results = loop.run_epochs(training_run, callbacks)

    def export(model, directory, verify):
        task.export(model, directory, prepared.data, verify)

    run_outputs.export(prepared.model, export)
    strategy_lib.wait_for_all_workers(strategy)
    return results


def run(task, config, *, strategy=None, callbacks=None):
    """Run a whole training job of ``task``; return the ``results.json`` contents.

    Args:
      task: a ``gn_keras.train.task.Task``.
      config: the run's validated config.
      strategy: an existing ``tf.distribute.Strategy``; by default one is
        created from ``config.strategy`` (a process can only create a
        multi-worker strategy once, so callers running several jobs pass it).
      callbacks: a list of ``keras.callbacks.Callback`` (see ``train.loop``).
    """
    callbacks = _checked_callbacks(callbacks)
    with _seed_and_precision(config):
        if strategy is None:
            strategy = strategy_lib.strategy_for(config)
        # The data first: a bad --data_dir is refused before --model_dir is created.
        data = task.make_data(config, strategy)
        with (
            workdir.claim(config.model_dir, writes=strategy_lib.is_chief(strategy)),
            cluster.lost_workers_reported(strategy, config.model_dir),
        ):
            return _run_in(task, config, strategy, callbacks, data)


def evaluate_only(task, config, *, strategy=None):
    """Evaluate the newest checkpoint in ``--model_dir`` (or the model as built).

    The run's seed, precision policy and strategy apply as in training, so a
    run trained under ``mixed_bfloat16`` is evaluated under it.  Writes
    ``<model_dir>/eval.json`` (``EVAL_FILE``) on the chief; returns
    ``(metrics, epoch, step_in_epoch)``, ``epoch`` None without a checkpoint.
    """
    with _seed_and_precision(config):
        workdir.check_model_dir(config.model_dir)
        strategy = strategy or strategy_lib.strategy_for(config)
        data = task.make_data(config, strategy)
        prepared = prepare(task, config, strategy, data)
        checkpoint_dir = outputs.run_paths(config.model_dir)["checkpoints"]
        epoch = step = None
        if os.path.isdir(checkpoint_dir):
            checkpointer = checkpoints.Checkpointer(
                strategy, prepared.model, prepared.optimizer, checkpoint_dir
            )
            if checkpointer.manager.latest_checkpoint:
                epoch, step = checkpointer.restore()
        metrics = loop.evaluate(prepared.runner, data, data.eval_steps)
    if strategy_lib.is_chief(strategy):
        os.makedirs(config.model_dir, exist_ok=True)
        payload = {
            "epoch": epoch,
            "step_in_epoch": step,
            "mixed_precision": config.mixed_precision,
            "val": metrics,
        }
        outputs.write_json_atomically(os.path.join(config.model_dir, EVAL_FILE), payload)
    return metrics, epoch, step


@contextlib.contextmanager
def _seed_and_precision(config):
    """The run's seed and dtype policy for the block; the previous policy after it."""
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
