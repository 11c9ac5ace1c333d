"""``VideoTask``: video classification for the shared training machinery.

Implements ``gn_keras.train.task.Task`` on top of the image task
(:class:`gn_keras.train.classification.ClassificationTask`), whose loss
(softmax cross-entropy on float32 logits), metrics (loss, top-1/top-5
error) and validation evaluator it keeps; what is video's own:

* data: a ``VideoSource`` named by ``config.dataset`` (``moving_shapes``,
  ``tfrecord``, ``folder``, ``tfds:<name>``) cut into clips by a
  ``ClipSpec``; validation is one centre clip per video;
* model: the zoo's 3D model ``config.model`` for the spec's clips;
* the final test, :meth:`VideoTask.make_test_evaluator`: the paper's 10-clip
  (optionally ×3 crops) protocol, softmax averaged over the views (§4.3),
  on ``VideoPipeline.test_dataset_fn`` batches;
* export: the uint8-clip SavedModel of :mod:`train.video.export`.

The config is read for the general fields only (``dataset``, ``data_dir``,
``model``, ``norm``, ``groups``, ``group_size``, ``zero_init_residual``,
``batch_size_per_replica``, ``seed``, ``steps_per_epoch``,
``eval_steps``); clip settings come from the ``ClipSpec`` given to the task.
"""

import tensorflow as tf

from gn_keras.train import classification
from gn_keras.train import data as image_data
from gn_keras.train import task as task_lib
from gn_keras.train.video import clips, data, export, folders, sources

DATASETS = ("moving_shapes", "tfrecord", "folder", "tfds:<name>")


def make_video_source(dataset, data_dir=None):
    """The ``VideoSource`` for a dataset name (see :data:`DATASETS`)."""
    if dataset == "moving_shapes":
        return sources.moving_shapes_source()
    if dataset in ("tfrecord", "folder") and not data_dir:
        raise ValueError(f"--dataset={dataset} needs --data_dir.")
    if dataset == "tfrecord":
        return sources.tfrecord_source(data_dir)
    if dataset == "folder":
        return folders.folder_source(data_dir)
    if isinstance(dataset, str) and dataset.startswith("tfds:") and len(dataset) > 5:
        return sources.tfds_source(dataset[len("tfds:") :], data_dir)
    raise ValueError(f"--dataset={dataset!r} is not a video dataset; expected one of {DATASETS}.")


def build_zoo_video_model(config, preprocessing):
    """The zoo's 3D model ``config.model`` for ``preprocessing``'s clips (logits)."""
    from gn_keras import models

    return models.build(
        config.model,
        norm=config.norm,
        num_classes=preprocessing["num_classes"],
        input_shape=export.clip_shape(preprocessing),
        groups=None if config.group_size else config.groups,
        group_size=config.group_size,
        zero_init_residual=config.zero_init_residual,
    )


class MultiViewEvaluator(classification.ClassificationEvaluator):
    """The final test: softmax averaged over each video's views, then top-k.

    Batches are ``(views (B, V, T, H, W, C), labels, weights)``; the loss
    is the cross-entropy of the averaged probabilities.
    """

    def replica_step(self, model, batch):
        views, labels, weights = batch
        shape = tf.shape(views)
        flat = tf.reshape(views, tf.concat([[-1], shape[2:]], 0))
        logits = tf.cast(model(flat, training=False), tf.float32)
        logits = tf.reshape(logits, (shape[0], shape[1], -1))
        probabilities = clips.average_view_probabilities(logits)
        picked = tf.gather(probabilities, labels, batch_dims=1)
        per_example = -tf.math.log(tf.maximum(picked, 1e-30))
        classification.update_metrics(self.metrics, labels, probabilities, per_example, weights)


class VideoTask(classification.ClassificationTask):
    """Video classification; see the module docstring.

    Args:
      spec: the ``ClipSpec`` (default: 8-frame 32×32 clips for CPUs;
        ``clips.paper_spec(32)`` or ``(64)`` for Kinetics).
      build_model: ``f(config, preprocessing) -> keras.Model``; default the
        zoo's ``config.model``.
      source: a ``VideoSource`` to use instead of ``config.dataset``.
      test_batch_size_per_replica: videos per replica in a 10-clip test
        batch (each is ``spec.test_views`` clips).
    """

    name = "video"

    def __init__(self, spec=None, *, build_model=None, source=None, test_batch_size_per_replica=1):
        super().__init__(build_model or build_zoo_video_model)
        self.spec = spec or clips.ClipSpec()
        self._source = source
        self.test_batch_size_per_replica = test_batch_size_per_replica
        self.data = None  # the TaskData of the last make_data (for the final test)

    def make_data(self, config, strategy):
        source = self._source or make_video_source(config.dataset, config.data_dir)
        pipeline = data.VideoPipeline(
            source,
            self.spec,
            config.batch_size_per_replica,
            seed=config.seed,
            test_batch_size_per_replica=self.test_batch_size_per_replica,
        )
        global_batch_size = config.batch_size_per_replica * strategy.num_replicas_in_sync
        self.num_classes = source.num_classes
        self.label_smoothing = getattr(config, "label_smoothing", 0.0)
        self.data = task_lib.TaskData(
            train_dataset_fn=pipeline.train_dataset_fn,
            eval_dataset_fn=pipeline.eval_dataset_fn,
            steps_per_epoch=image_data.steps_per_epoch(config, source.num_train, global_batch_size),
            eval_steps=image_data.eval_steps(config, source.num_eval, global_batch_size),
            global_batch_size=global_batch_size,
            preprocessing=pipeline.preprocessing(),
            info={
                "num_train_examples": source.num_train,
                "num_eval_examples": source.num_eval,
                "test_views": self.spec.test_views,
                "test_steps": pipeline.test_steps(strategy.num_replicas_in_sync),
            },
            extras=pipeline,
        )
        return self.data

    def make_test_evaluator(self, data):
        """The 10-clip evaluator for batches of ``data.extras.test_dataset_fn(
        data.info["test_steps"])``."""
        del data
        return MultiViewEvaluator(self)

    def export(self, model, directory, data, verify):
        export.export_video_saved_model(model, directory, data.preprocessing, verify=verify)
