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

from gn_keras.train import checkpoints, cli, loop, outputs, settings, trainer
from gn_keras.train import strategy as strategy_lib
from gn_keras.train.detection import config as config_lib
from gn_keras.train.detection import flags as detection_flags
from gn_keras.train.detection import task as task_lib
from gn_keras.train.detection import transfer

PROGRAM = "gn-detect"
EVAL_FILE = "eval.json"
TABLE6_COLUMNS = (
    ("AP^bbox", "bbox_AP"),
    ("AP^bbox_50", "bbox_AP50"),
    ("AP^bbox_75", "bbox_AP75"),
    ("AP^mask", "segm_AP"),
    ("AP^mask_50", "segm_AP50"),
    ("AP^mask_75", "segm_AP75"),
)


def make_sources(config):
    """``(train, validation)`` :class:`~train.detection.task.DetectionSource` of ``config``."""
    if config.dataset == "shapes":
        root = config.data_dir or os.path.join(config.model_dir, "shapes_data")
        size = config.shapes_image_size
        train = task_lib.shapes_source(
            os.path.join(root, "train"), config.shapes_train_images, size, seed=0, training=True
        )
        val = task_lib.shapes_source(
            os.path.join(root, "val"), config.shapes_val_images, size, seed=1
        )
        return train, val
    if config.dataset == "coco":
        strict = config.strict_annotations
        train = task_lib.coco_source(
            config.train_annotations, config.train_images, strict, training=True
        )
        val = task_lib.coco_source(config.val_annotations, config.val_images, strict)
        return train, val
    ids = list(config.category_ids)
    return (
        task_lib.tfrecord_source(config.train_tfrecords, ids),
        task_lib.tfrecord_source(config.val_tfrecords, ids, evaluation=True),
    )


def make_task(config):
    """The ``DetectionTask`` of a validated ``DetectionConfig`` (backbone transfer included)."""
    start = transfer.backbone_start(config)
    train, val = make_sources(config)
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
    """Run a whole detection job; return the ``results.json`` contents."""
    config_lib.validate(config)
    return trainer.run(make_task(config), config, strategy=strategy, callbacks=callbacks)


def evaluate(config, *, strategy=None):
    """COCO AP of the newest checkpoint in ``--model_dir`` (or of the model as built).

    Writes ``<model_dir>/eval.json``; returns ``(metrics, epoch, step)``,
    ``epoch`` None when there was no checkpoint.
    """
    config_lib.validate(config)
    task = make_task(config)
    strategy = strategy or strategy_lib.strategy_for(config)
    data = task.make_data(config, strategy)
    prepared = trainer.prepare(task, config, strategy, data)
    paths = outputs.run_paths(config.model_dir)
    epoch = step = None
    if os.path.isdir(paths["checkpoints"]):
        checkpointer = checkpoints.Checkpointer(
            strategy, prepared.model, prepared.optimizer, paths["checkpoints"]
        )
        if checkpointer.manager.latest_checkpoint:
            epoch, step = checkpointer.restore()
    metrics = loop.evaluate(prepared.runner, data, data.eval_steps)
    if strategy_lib.is_chief(strategy):
        os.makedirs(config.model_dir, exist_ok=True)
        payload = {"epoch": epoch, "step_in_epoch": step, "val": metrics}
        outputs.write_json_atomically(os.path.join(config.model_dir, EVAL_FILE), payload)
    return metrics, epoch, step


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
        f"{results['images_per_sec']:.1f} images/s."
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
    values = flags.FLAGS
    if not values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
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
        config = detection_flags.config_from_flags(values)
        results = train(config)
    except ValueError as error:  # bad flags (exit 2), or a run that cannot go on (exit 1)
        cli.exit_with_error(PROGRAM, error)
    _report_training(results)


def _run_settings(values):
    """The settings recorded in ``--model_dir`` (before any flag is checked), or None."""
    return settings.recorded(values["model_dir"].value)


def run():
    """Console entry point ``gn-detect``."""
    cli.run_command(main, PROGRAM, define_flags)


if __name__ == "__main__":
    run()
