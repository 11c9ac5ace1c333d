"""Train an image classifier with any normalization on any tf.distribute strategy.

Command line (absl flags, see ``train.flags``; also the ``gn-train`` script)::

    python -m gn_keras.train.classify                       # GN ResNet-20 on digits
    python -m gn_keras.train.classify --preset=paper_imagenet --data_dir=/data/imagenet

From Python, ``train(config)`` runs the same job and returns the results
dict that is also written to ``<model_dir>/results.json``.

A bad flag or argument ends this and the other scripts (``gn-finetune``,
``gn-study``, ``gn-export``) with one line on stderr and exit status 2
(``run_command``, ``exit_with_error``).

The order of a run: config → strategy (created once) → data → model and
optimizer (in the strategy's scope) → the loop of ``train.loop`` → the
SavedModel.
"""

import dataclasses
import sys

import keras
import tensorflow as tf
from absl import flags, logging

from gn_keras.train import checkpoints, cli, data, loop, outputs, steps
from gn_keras.train import config as config_lib
from gn_keras.train import flags as flags_lib
from gn_keras.train import optimizer as optimizer_lib
from gn_keras.train import strategy as strategy_lib


def build_zoo_model(config, preprocessing):
    """The model-zoo network named by ``--model``, producing logits."""
    from gn_keras import models

    height, width = preprocessing["image_size"]
    return models.build(
        config.model,
        norm=config.norm,
        num_classes=preprocessing["num_classes"],
        input_shape=(height, width, preprocessing["channels"]),
        # --group_size decides when given; an explicit groups would contradict it.
        groups=None if config.group_size else config.groups,
        group_size=config.group_size,
        zero_init_residual=config.zero_init_residual,
    )


def check_model_name(name):
    """Reject an unknown ``--model`` before any data is read."""
    from gn_keras import models

    if name not in models.available():
        raise ValueError(
            f"--model={name!r} is unknown; expected one of {', '.join(sorted(models.available()))}."
        )


def _run_info(config, strategy, source, pipeline, plan):
    global_batch_size = plan.global_batch_size
    return {
        "strategy": strategy_lib.resolve_strategy_name(config.strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "num_workers": strategy_lib.num_workers(strategy),
        "global_batch_size": global_batch_size,
        "peak_learning_rate": optimizer_lib.peak_learning_rate(config, global_batch_size),
        "steps_per_epoch": plan.steps_per_epoch,
        "eval_steps": plan.eval_steps,
        "augment": pipeline.augment,
        "num_train_examples": source.num_train,
        "num_eval_examples": source.num_eval,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


@dataclasses.dataclass
class Prepared:
    """Everything a run trains with, before any step is taken."""

    source: object
    pipeline: data.InputPipeline
    plan: loop.LoopPlan
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    runner: steps.StepRunner


def prepare(config, strategy, build_model=build_zoo_model):
    """Data, model, optimizer and compiled steps of a run (no outputs yet).

    The model and optimizer are built in ``strategy``'s scope; the optimizer
    is built too, so a checkpoint restores into existing slots.
    """
    source = data.make_source(config)
    pipeline = data.InputPipeline(source, config)
    global_batch_size = config.batch_size_per_replica * strategy.num_replicas_in_sync
    plan = loop.LoopPlan(
        epochs=config.epochs,
        steps_per_epoch=data.steps_per_epoch(config, source, global_batch_size),
        eval_steps=data.eval_steps(config, source, global_batch_size),
        global_batch_size=global_batch_size,
        checkpoint_every_steps=config.checkpoint_every_steps,
        log_every_steps=config.log_every_steps,
    )
    with strategy.scope():
        model = build_model(config, pipeline.preprocessing())
        schedule = optimizer_lib.make_schedule(config, global_batch_size, plan.steps_per_epoch)
        optimizer = optimizer_lib.make_optimizer(config, schedule)
        optimizer.build(model.trainable_variables)
    runner = steps.StepRunner(
        strategy,
        model,
        optimizer,
        global_batch_size=global_batch_size,
        num_classes=source.num_classes,
        label_smoothing=config.label_smoothing,
        weight_decay=config.weight_decay,
        decayed_variables=optimizer_lib.decayed_variables(model, config.decay_norm_params),
        jit_compile=config.jit_compile,
    )
    return Prepared(source, pipeline, plan, model, optimizer, runner)


def _checked_callbacks(callbacks):
    """The ``callbacks=`` of ``train`` as a list; anything but Keras callbacks is refused."""
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(callbacks, (list, tuple)):
        raise ValueError(
            f"callbacks={callbacks!r} is invalid: expected a list of keras.callbacks.Callback."
        )
    for callback in callbacks:
        if not isinstance(callback, keras.callbacks.Callback):
            raise ValueError(f"callbacks: {callback!r} is not a keras.callbacks.Callback.")
    return list(callbacks)


def _train_in(config, strategy, build_model, callbacks):
    run = prepare(config, strategy, build_model)
    run_outputs = outputs.RunOutputs(
        config.model_dir,
        strategy,
        config.as_dict(),
        run.pipeline.preprocessing(),
        _run_info(config, strategy, run.source, run.pipeline, run.plan),
    )
    checkpointer = checkpoints.Checkpointer(
        strategy,
        run.model,
        run.optimizer,
        run_outputs.paths["checkpoints"],
        max_to_keep=config.keep_checkpoints,
    )
    results = loop.run_epochs(
        run.runner, run.pipeline, checkpointer, run_outputs, run.plan, callbacks
    )
    run_outputs.export(run.model)
    strategy_lib.wait_for_all_workers(strategy)
    return results


def train(config, *, strategy=None, build_model=None, callbacks=None):
    """Run a whole training job; return the ``results.json`` contents.

    Args:
      config: a ``train.config.TrainConfig`` (validated again here).
      strategy: an existing ``tf.distribute.Strategy``; by default one is
        created from ``config.strategy`` (a process can only create a
        multi-worker strategy once, so callers running several jobs pass it).
      build_model: ``f(config, preprocessing) -> keras.Model`` giving logits,
        called inside the strategy's scope; defaults to ``build_zoo_model``.
      callbacks: a list of ``keras.callbacks.Callback``, attached to the
        model and given ``on_train_begin``, ``on_epoch_begin``,
        ``on_epoch_end(epoch, logs)`` (logs: the epoch's train metrics and
        ``val_``-prefixed val metrics, as in results.json) and
        ``on_train_end``, on every worker.  A resumed run calls them only for
        the epochs it runs (see ``train.loop``), so a callback that keeps
        per-epoch records must merge them with an earlier attempt's.
    """
    config_lib.validate_config(config)
    callbacks = _checked_callbacks(callbacks)
    if build_model is None:
        check_model_name(config.model)
        build_model = build_zoo_model
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    try:
        if strategy is None:
            strategy = strategy_lib.make_strategy(config.strategy, config.tpu)
        return _train_in(config, strategy, build_model, callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def main(argv):
    del argv  # run_command allows no positional arguments
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # progress bar and summary only
    try:
        config = flags_lib.config_from_flags(flags.FLAGS)
        results = train(config)
    except ValueError as error:  # bad flags, paths or data; a damaged file
        cli.exit_with_error("gn-train", error)
    print(cli.describe_outputs(results))


def run():
    """Console entry point ``gn-train``."""
    flags_lib.define_flags(flags.FLAGS)
    # absl's --helpshort lists the main script's own flags; ours are defined
    # in train.flags, so register them for whatever script is running.
    for name in flags_lib.flag_names():
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    cli.run_command(main, "gn-train")


if __name__ == "__main__":
    run()
