"""Train, evaluate and export a Mask R-CNN with any normalization (paper §4.2).

Command line (absl flags, see ``train.detection.flags``; also the
``gn-detect`` script)::

    python -m gn_keras.train.detect          # small GN Mask R-CNN on the shapes set
    python -m gn_keras.train.detect --preset=paper_coco --trained_model=runs/imagenet \\
        --train_annotations=... --train_images=... --val_annotations=... --val_images=...
    python -m gn_keras.train.detect --eval_only  # COCO AP of the run in --model_dir

The task is ``train.detection.task.DetectionTask``; strategy, steps, loop,
checkpoints, resume, ``results.json``, TensorBoard and export staging are
the shared machinery of ``train.trainer``.  The final box and mask AP are
printed as the paper's Table 6 columns.
"""

import os

from absl import flags, logging

from gn_keras._checks import FlagError
from gn_keras.train import cli, loop, settings, trainer, workdir
from gn_keras.train import strategy as strategy_lib
from gn_keras.train.detection import config as config_lib
from gn_keras.train.detection import flags as detection_flags
from gn_keras.train.detection import sources as detection_sources
from gn_keras.train.detection import task as task_lib
from gn_keras.train.detection import transfer

PROGRAM = "gn-detect"
SHAPES_DIR = "shapes_data"  # the generated set's default place, inside --model_dir
TABLE6_COLUMNS = (
    ("AP^bbox", "bbox_AP"),
    ("AP^bbox_50", "bbox_AP50"),
    ("AP^bbox_75", "bbox_AP75"),
    ("AP^mask", "segm_AP"),
    ("AP^mask_50", "segm_AP50"),
    ("AP^mask_75", "segm_AP75"),
)


def make_sources(config):
    """``(train, validation)`` :class:`~train.detection.sources.DetectionSource` of ``config``."""
    if config.dataset == "shapes":
        # A set of other parameters in the run's own folder is this run's to
        # replace (train() holds the run); one in a --data_dir may be another run's.
        replace = not config.data_dir
        root = config.data_dir or os.path.join(config.model_dir, SHAPES_DIR)
        size = config.shapes_image_size
        train = detection_sources.shapes_source(
            os.path.join(root, "train"),
            config.shapes_train_images,
            size,
            seed=0,
            training=True,
            replace=replace,
        )
        val = detection_sources.shapes_source(
            os.path.join(root, "val"), config.shapes_val_images, size, seed=1, replace=replace
        )
        return train, val
    if config.dataset == "coco":
        options = {"strict": config.strict_annotations, "on_bad_image": config.on_bad_image}
        train = detection_sources.coco_source(
            config.train_annotations, config.train_images, training=True, **options
        )
        val = detection_sources.coco_source(config.val_annotations, config.val_images, **options)
        return train, val
    ids = list(config.category_ids)
    return (
        detection_sources.tfrecord_source(config.train_tfrecords, ids),
        detection_sources.tfrecord_source(config.val_tfrecords, ids, evaluation=True),
    )


def _check_sources(config, train, val):
    """Refuse category lists that do not fit ``--num_classes`` or each other; warn of no boxes."""
    where = {"coco": config.train_annotations, "tfrecord": config.train_tfrecords}
    where = where.get(config.dataset, "the training data")
    found = len(train.category_ids)
    if found != config.num_classes:
        raise FlagError(
            f"--num_classes={config.num_classes} but {where} has {found} categories; "
            f"set --num_classes={found}."
        )
    if list(val.category_ids) != list(train.category_ids):
        raise ValueError(
            f"the validation data has the categories {list(val.category_ids)} but {where} has "
            f"{list(train.category_ids)}; both splits need the same category list."
        )
    if not val.ground_truth["annotations"]:
        logging.warning(
            "The validation data (%s) has no annotations: every COCO AP will print as -100.0 "
            "(undefined).",
            config.val_annotations or config.val_tfrecords or "shapes",
        )


def make_task(config):
    """The ``DetectionTask`` of a validated ``DetectionConfig`` (backbone transfer included)."""
    start = transfer.backbone_start(config)
    train, val = make_sources(config)
    _check_sources(config, train, val)
    return task_lib.DetectionTask(
        start.model_config,
        start.input_config,
        train,
        val,
        backbone_fn=start.backbone_fn,
        transfer_report=start.report,
    )


def table6(metrics, label="this run"):
    """The box and mask AP of ``metrics`` laid out as the paper's Table 6 columns (in %)."""
    width = max(len(label), 8)
    header = f"{'':<{width}}  " + "  ".join(f"{name:>10}" for name, _ in TABLE6_COLUMNS)
    values = "  ".join(f"{100 * metrics[key]:>10.1f}" for _, key in TABLE6_COLUMNS)
    return f"{header}\n{label:<{width}}  {values}"


def train(config, *, strategy=None, callbacks=None):
    """Run a whole detection job; return the ``results.json`` contents.

    The run's recorded settings are compared first (reading them changes
    nothing, so a refusal leaves the run as it was); then ``--model_dir`` is
    held from the making of the task (and with it the generated shapes set)
    to the end, the machinery's own claim nesting inside, so no other start
    can slip in between. A live job holding the lock makes the claim refuse.
    """
    config_lib.validate(config)
    strategy = strategy or strategy_lib.strategy_for(config)
    global_batch_size = config.batch_size_per_replica * strategy.num_replicas_in_sync
    shaping = settings.shaping_settings(config, global_batch_size)
    settings.check(config.model_dir, shaping, extend_epochs=config.extend_epochs)
    with workdir.claim(config.model_dir, writes=strategy_lib.is_chief(strategy)):
        task = make_task(config)
        return trainer.run(task, config, strategy=strategy, callbacks=callbacks)


def evaluate(config, *, strategy=None):
    """COCO AP of the newest checkpoint in ``--model_dir`` (or of the model as built).

    Writes ``<model_dir>/eval.json``; returns ``(metrics, epoch, step)``,
    ``epoch`` None when there was no checkpoint.
    """
    config_lib.validate(config)
    workdir.check_model_dir(config.model_dir)
    return trainer.evaluate_only(make_task(config), config, strategy=strategy)


def define_flags(flag_values=flags.FLAGS):
    detection_flags.define_flags(flag_values)
    flags.DEFINE_bool(
        "eval_only",
        False,
        "Only evaluate: COCO AP of the newest checkpoint in --model_dir (or, without one, of "
        "the model as built), printed as Table 6 and written to <model_dir>/eval.json. The "
        "run's recorded settings are used for every flag not given.",
        flag_values=flag_values,
    )


def _report_training(results):
    paths = results["outputs"]
    final = {key: results[f"final_{key}"] for _, key in TABLE6_COLUMNS}
    print(f"COCO AP after epoch {len(results['epochs'])} (Table 6 columns, %):")
    print(table6(final))
    print(
        f"best box AP {100 * results['best_bbox_AP']:.1f} at epoch {results['best_epoch'] + 1}; "
        f"{loop.rate_text(results['images_per_sec'], 'image')}."
    )
    for name, key in (
        ("results", "results"),
        ("checkpoints", "checkpoints"),
        ("TensorBoard", "tensorboard"),
        ("Keras models", "best_keras"),
        ("SavedModel", "saved_model"),
    ):
        print(f"  {name + ':':<15} {paths[key]}")


def main(argv):
    del argv  # run_command allows no positional arguments
    values = flags.FLAGS  # a ValueError is one line (cli.guard_main)
    if values.eval_only:
        # The run's own settings, so --eval_only needs only --model_dir.
        config = detection_flags.config_from_flags(values, _run_settings(values))
        metrics, epoch, step = evaluate(config)
        where = (
            f"checkpoint at epoch {epoch}, step {step}"
            if epoch is not None
            else "no checkpoint: the model as built"
        )
        print(f"COCO AP on the validation set ({where}; Table 6 columns, %):")
        print(table6(metrics))
        return
    _report_training(train(detection_flags.config_from_flags(values)))


def _run_settings(values):
    """The settings recorded in ``--model_dir`` (before any flag is checked), or None."""
    return settings.recorded(values["model_dir"].value)


def run():
    """Console entry point ``gn-detect``."""
    cli.run_command(main, PROGRAM, define_flags)


if __name__ == "__main__":
    run()
