"""The image-classification task: what ``gn-train`` plugs into the training machinery.

``ClassificationTask`` implements ``gn_keras.train.task.Task``: data from
``train.data``/``train.sources``, a model from the zoo (or any
``build_model(config, preprocessing)``), softmax cross-entropy with optional
label smoothing, loss/top-1/top-5 metrics reported as errors, and the
classifier SavedModel of ``gn_keras.export``.

Logits are cast to float32 before the loss, so mixed precision never
computes the softmax in 16 bits.  Metrics are Keras metrics created in the
strategy's scope; their variables are summed across replicas on read.
"""

import keras
import tensorflow as tf

from gn_keras import export as export_lib
from gn_keras.train import data as data_lib
from gn_keras.train import task as task_lib


class TopKError(keras.metrics.SparseTopKCategoricalAccuracy):
    """1 − top-k accuracy: the paper reports error rates (§4.1)."""

    def result(self):
        return 1.0 - super().result()


def make_metrics(num_classes):
    """``loss`` (mean unregularized cross-entropy), ``top1_error`` and ``top5_error``."""
    return {
        "loss": keras.metrics.Mean(name="loss"),
        "top1_error": TopKError(k=1, name="top1_error"),
        "top5_error": TopKError(k=min(5, num_classes), name="top5_error"),
    }


def update_metrics(metrics, labels, logits, per_example_loss, weights=None):
    metrics["loss"].update_state(per_example_loss, sample_weight=weights)
    metrics["top1_error"].update_state(labels, logits, sample_weight=weights)
    metrics["top5_error"].update_state(labels, logits, sample_weight=weights)


class ClassificationEvaluator:
    """Validation metrics kept in the graph; padded examples have weight 0."""

    primary_metric = "top1_error"
    primary_metric_label = "top-1 error"
    lower_is_better = True

    def __init__(self, task):
        self.task = task
        self.metrics = make_metrics(task.num_classes)

    def reset(self):
        for metric in self.metrics.values():
            metric.reset_state()

    def replica_step(self, model, batch):
        images, labels, weights = batch
        logits = tf.cast(model(images, training=False), tf.float32)
        per_example = self.task.per_example_loss(labels, logits)
        update_metrics(self.metrics, labels, logits, per_example, weights)

    def accumulate(self, outputs):
        del outputs  # everything is in the metrics already

    def result(self):
        return {name: float(metric.result()) for name, metric in self.metrics.items()}


class ClassificationTask:
    """Classification for the training machinery (``train.trainer``).

    Args:
      build_model: ``f(config, preprocessing) -> keras.Model`` giving logits;
        called in the strategy's scope.  Required unless the task is only
        used for its loss and metrics (as the step tests do).
      num_classes: logits width; set from the data by ``make_data``.
      label_smoothing: cross-entropy label smoothing; set from the config by
        ``make_data``.
    """

    name = "classify"

    def __init__(self, build_model=None, *, num_classes=None, label_smoothing=0.0):
        self._build_model = build_model
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def make_data(self, config, strategy):
        source = data_lib.make_source(config)
        pipeline = data_lib.InputPipeline(source, config)
        global_batch_size = config.batch_size_per_replica * strategy.num_replicas_in_sync
        self.num_classes = source.num_classes
        self.label_smoothing = config.label_smoothing
        return task_lib.TaskData(
            train_dataset_fn=pipeline.train_dataset_fn,
            eval_dataset_fn=pipeline.eval_dataset_fn,
            steps_per_epoch=data_lib.steps_per_epoch(config, source.num_train, global_batch_size),
            eval_steps=data_lib.eval_steps(config, source.num_eval, global_batch_size),
            global_batch_size=global_batch_size,
            preprocessing=pipeline.preprocessing(),
            info={
                "augment": pipeline.augment,
                "num_train_examples": source.num_train,
                "num_eval_examples": source.num_eval,
            },
            extras=pipeline,
        )

    def build_model(self, config, data):
        return self._build_model(config, data.preprocessing)

    def per_example_loss(self, labels, logits):
        one_hot = tf.one_hot(labels, self.num_classes)
        return keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=self.label_smoothing
        )

    def compute_loss(self, model, batch, global_batch_size):
        images, labels = batch
        logits = tf.cast(model(images, training=True), tf.float32)
        per_example = self.per_example_loss(labels, logits)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
        return loss, {"logits": logits, "per_example_loss": per_example}

    def make_train_metrics(self):
        return make_metrics(self.num_classes)

    def update_train_metrics(self, metrics, batch, outputs):
        update_metrics(metrics, batch[1], outputs["logits"], outputs["per_example_loss"])

    def make_evaluator(self, data):
        del data
        return ClassificationEvaluator(self)

    def export(self, model, directory, data, verify):
        # The tolerance is gn_keras.export's default for the model's dtypes.
        export_lib.export_saved_model(model, directory, data.preprocessing, verify=verify)
