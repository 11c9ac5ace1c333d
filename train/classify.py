"""Train an image classifier with any normalization on any tf.distribute strategy.

Command line (absl flags, see ``train.flags``; also the ``gn-train`` script)::

    python -m gn_keras.train.classify                       # GN ResNet-20 on digits
    python -m gn_keras.train.classify --preset=paper_imagenet --data_dir=/data/imagenet

From Python, ``train(config)`` runs the same job and returns the results
dict that is also written to ``<model_dir>/results.json``.

A bad flag or argument ends this and the other scripts (``gn-finetune``,
``gn-study``, ``gn-export``) with one line on stderr and exit status 2; any
other error with one line and status 1 (``train.cli``).

The task is ``train.classification.ClassificationTask``; everything else
(strategy, steps, loop, checkpoints, outputs, export staging) is the shared
machinery of ``train.trainer``.
"""

from absl import flags

from gn_keras._checks import FlagError
from gn_keras.train import classification, cli, trainer
from gn_keras.train import config as config_lib
from gn_keras.train import flags as flags_lib


def build_zoo_model(config, preprocessing):
    """The model-zoo network named by ``--model``, producing logits."""
    from gn_keras import models

    height, width = preprocessing["image_size"]
    try:
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
    except ValueError as error:  # e.g. 7 groups that do not divide a layer's channels
        flags = f"--model={config.model} --norm={config.norm} " + (
            f"--group_size={config.group_size}"
            if config.group_size
            else f"--groups={config.groups}"
        )
        raise FlagError(f"{flags} cannot be built: {error}") from None


def check_model_name(name, norm=None):
    """Reject an unknown ``--model`` (or ``--norm``) before any data is read."""
    from gn_keras import models, norms

    if name not in models.available():
        raise FlagError(
            f"--model={name!r} is unknown; expected one of {', '.join(sorted(models.available()))}."
        )
    if norm is not None and norm not in norms.available():
        raise FlagError(
            f"--norm={norm!r} is unknown; expected one of {', '.join(norms.available())}."
        )


def prepare(config, strategy, build_model=build_zoo_model):
    """The classification run of ``config`` up to its first step (``trainer.prepare``)."""
    return trainer.prepare(classification.ClassificationTask(build_model), config, strategy)


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
    if build_model is None:
        check_model_name(config.model, config.norm)
        build_model = build_zoo_model
    task = classification.ClassificationTask(build_model)
    return trainer.run(task, config, strategy=strategy, callbacks=callbacks)


def main(argv):
    del argv  # run_command allows no positional arguments; a ValueError is one line
    results = train(flags_lib.config_from_flags(flags.FLAGS))
    print(
        cli.describe_outputs(results, classification.ClassificationEvaluator.primary_metric_label)
    )


def run():
    """Console entry point ``gn-train``."""
    cli.run_command(main, "gn-train", flags_lib.define_flags)


if __name__ == "__main__":
    run()
