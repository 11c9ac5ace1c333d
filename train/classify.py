"""Train an image classifier with any normalization on any tf.distribute strategy.

Command line (absl flags, see ``train.flags``; also the ``gn-train`` script)::

    python -m train.classify                       # GN ResNet-20 on digits
    python -m train.classify --preset=paper_imagenet --data_dir=/data/imagenet

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
import os
import sys

# Set before TensorFlow loads: its C++ INFO lines (CPU features, the end of
# finished input iterators) only clutter a command-line run.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from gn_keras import load  # noqa: E402
from train import checkpoints, data, loop, outputs, steps  # noqa: E402
from train import config as config_lib  # noqa: E402
from train import flags as flags_lib  # noqa: E402
from train import optimizer as optimizer_lib  # noqa: E402
from train import strategy as strategy_lib  # noqa: E402

USAGE_ERROR_STATUS = 2  # bad flags or arguments, as argparse and POSIX tools exit
HELP_HINT = "(run with --helpfull for all flags)"


def build_zoo_model(config, preprocessing):
    """The model-zoo network named by ``--model``, producing logits."""
    import models

    height, width = preprocessing["image_size"]
    return models.build(
        config.model, norm=config.norm, num_classes=preprocessing["num_classes"],
        input_shape=(height, width, preprocessing["channels"]),
        # --group_size decides when given; an explicit groups would contradict it.
        groups=None if config.group_size else config.groups,
        group_size=config.group_size, zero_init_residual=config.zero_init_residual)


def check_model_name(name):
    """Reject an unknown ``--model`` before any data is read."""
    import models

    if name not in models.available():
        raise ValueError(f"--model={name!r} is unknown; expected one of "
                         f"{', '.join(sorted(models.available()))}.")


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
        log_every_steps=config.log_every_steps)
    with strategy.scope():
        model = build_model(config, pipeline.preprocessing())
        schedule = optimizer_lib.make_schedule(config, global_batch_size, plan.steps_per_epoch)
        optimizer = optimizer_lib.make_optimizer(config, schedule)
        optimizer.build(model.trainable_variables)
    runner = steps.StepRunner(
        strategy, model, optimizer, global_batch_size=global_batch_size,
        num_classes=source.num_classes, label_smoothing=config.label_smoothing,
        weight_decay=config.weight_decay,
        decayed_variables=optimizer_lib.decayed_variables(model, config.decay_norm_params),
        jit_compile=config.jit_compile)
    return Prepared(source, pipeline, plan, model, optimizer, runner)


def _checked_callbacks(callbacks):
    """The ``callbacks=`` of ``train`` as a list; anything but Keras callbacks is refused."""
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(callbacks, (list, tuple)):
        raise ValueError(f"callbacks={callbacks!r} is invalid: expected a list of "
                         "keras.callbacks.Callback.")
    for callback in callbacks:
        if not isinstance(callback, keras.callbacks.Callback):
            raise ValueError(f"callbacks: {callback!r} is not a keras.callbacks.Callback.")
    return list(callbacks)


def _train_in(config, strategy, build_model, callbacks):
    run = prepare(config, strategy, build_model)
    run_outputs = outputs.RunOutputs(
        config.model_dir, strategy, config.as_dict(), run.pipeline.preprocessing(),
        _run_info(config, strategy, run.source, run.pipeline, run.plan))
    checkpointer = checkpoints.Checkpointer(strategy, run.model, run.optimizer,
                                            run_outputs.paths["checkpoints"],
                                            max_to_keep=config.keep_checkpoints)
    results = loop.run_epochs(run.runner, run.pipeline, checkpointer, run_outputs, run.plan,
                              callbacks)
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


def describe_outputs(results):
    """Where the run left everything, for the end of the command-line job."""
    paths = results["outputs"]
    lines = [
        f"Median top-1 error of the last 5 epochs: {results['median_last5_top1_error']:.4f} "
        f"(final {results['final_top1_error']:.4f}, best {results['best_top1_error']:.4f} "
        f"at epoch {results['best_epoch']}); {results['images_per_sec']:.1f} images/s.",
        f"  results:        {paths['results']}",
        f"  checkpoints:    {paths['checkpoints']}  (rerun the same command to resume)",
        f"  TensorBoard:    tensorboard --logdir {paths['tensorboard']}",
        f"  Keras models:   {paths['best_keras']}, {paths['last_keras']}",
        f"  SavedModel:     {paths['saved_model']}",
        f"  preprocessing:  {paths['preprocessing']}",
    ]
    return "\n".join(lines)


def exit_with_error(program, error):
    """End the command ``program`` with one line on stderr, no traceback.

    A file that cannot be read (``gn_keras.load.ModelFileError``) exits with
    status 1; any other error (an exception or a message) is taken as bad
    flags or arguments: status 2 and a pointer to --helpfull.  Not absl's
    ``app.UsageError``, which prints the whole flag listing above the one
    line that matters.
    """
    if isinstance(error, load.ModelFileError):
        sys.exit(f"{program}: error: {error}")
    sys.stderr.write(f"{program}: error: {error} {HELP_HINT}\n")
    sys.exit(USAGE_ERROR_STATUS)


def run_command(main, program):
    """``app.run(main)`` with flag-parsing errors reported by ``exit_with_error``.

    Also checks that no positional argument is left over.
    """
    def parse(argv):
        try:
            remaining = flags.FLAGS(argv)
        except flags.Error as error:  # an unknown flag, a bad enum or type
            exit_with_error(program, error)
        if len(remaining) > 1:
            exit_with_error(program, f"unexpected arguments: {' '.join(remaining[1:])}")
        return remaining

    app.run(main, flags_parser=parse)


def main(argv):
    del argv  # run_command allows no positional arguments
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # progress bar and summary only
    try:
        config = flags_lib.config_from_flags(flags.FLAGS)
        results = train(config)
    except ValueError as error:  # bad flags, paths or data; a damaged file
        exit_with_error("gn-train", error)
    print(describe_outputs(results))


def run():
    """Console entry point ``gn-train``."""
    flags_lib.define_flags(flags.FLAGS)
    # absl's --helpshort lists the main script's own flags; ours are defined
    # in train.flags, so register them for whatever script is running.
    for name in flags_lib.flag_names():
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    run_command(main, "gn-train")


if __name__ == "__main__":
    run()
