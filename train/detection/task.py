"""The detection task: Mask R-CNN for the shared training machinery.

``DetectionTask`` implements the data, model, loss, metrics and evaluator
parts of ``gn_keras.train.task.Task`` from this package's pieces: a
:class:`~.sources.DetectionSource` for training and one for validation (COCO JSON +
images, the generated shapes set, or TF Model Garden TFRecords), the
:class:`~gn_keras.models.detection.MaskRCNN` model, its five losses and the
pycocotools evaluator, and ``export``: the serving SavedModel of
:mod:`.export` (uint8 images in, detections in image pixels out).
``backbone_fn`` (see :mod:`.transfer`) starts the backbone from a trained
model; ``transfer_report`` records how, in ``results.json``.

From the run's ``config`` the task reads only ``batch_size_per_replica``,
``seed``, ``steps_per_epoch`` and ``eval_steps`` (``None`` = one pass).
An epoch's order depends only on (seed, epoch), flips included, so a
resumed epoch skips the examples it trained before parsing them.
Validation runs exactly ``eval_steps`` global steps: the examples are
followed by blank images of ``image_id`` -1, which the evaluator ignores,
so every replica gets full batches of one static shape.
"""

import keras
import tensorflow as tf

from gn_keras.models.detection import MaskRCNN, mask_rcnn_losses, ops
from gn_keras.train import data as data_lib
from gn_keras.train import task as task_lib
from gn_keras.train.detection import evaluator, export, pipeline

LOSS_NAMES = ("rpn_score_loss", "rpn_box_loss", "roi_class_loss", "roi_box_loss", "mask_loss")


class DetectionTask:
    """Mask R-CNN for ``gn_keras.train.trainer``; see the module docstring.

    Args:
      model_config: a :class:`~gn_keras.models.detection.MaskRCNNConfig`;
        its ``num_classes`` must equal the sources' category count.
      input_config: a :class:`~gn_keras.train.detection.pipeline.InputConfig`.
      train_source, eval_source: :class:`DetectionSource`; the evaluation
        one needs its ``ground_truth``.
      backbone_fn: optional ``f(model_config) -> C2..C5 extractor``.
      transfer_report: optional dict of where the backbone started, for
        ``results.json``.
    """

    name = "detect"

    def __init__(
        self,
        model_config,
        input_config,
        train_source,
        eval_source,
        backbone_fn=None,
        transfer_report=None,
    ):
        self.model_config = model_config.validate()
        self.input_config = input_config.validate(model_config.image_size)
        for split, source in (("train", train_source), ("eval", eval_source)):
            if len(source.category_ids) != model_config.num_classes:
                raise ValueError(
                    f"DetectionTask: the {split} data has {len(source.category_ids)} categories "
                    f"but model_config.num_classes={model_config.num_classes}."
                )
        if eval_source.ground_truth is None:
            raise ValueError("DetectionTask: argument `eval_source` needs its ground_truth.")
        self.train_source, self.eval_source = train_source, eval_source
        self.backbone_fn = backbone_fn
        self.transfer_report = transfer_report
        self.anchors = ops.multilevel_anchors(self.model_config)

    def preprocessing(self):
        config = self.input_config
        return {
            "image_size": list(self.model_config.image_size),
            "short_side": config.short_side,
            "max_side": config.max_side,
            "mean": list(config.mean),
            "std": list(config.std),
            "category_ids": list(self.eval_source.category_ids),
            "category_names": list(self.eval_source.category_names),
        }

    def _train_dataset_fn(self, config, global_batch_size):
        def for_epoch(epoch, skip_steps=0):
            def dataset_fn(context):
                seed = [int(config.seed), int(epoch)]
                examples = self.train_source.examples(
                    data_lib.epoch_seed(config.seed, epoch),
                    context.num_input_pipelines,
                    context.input_pipeline_id,
                )
                # One stateless flip seed per example position: resumes flip alike.
                flips = tf.data.Dataset.range(2**62).map(
                    lambda i: tf.stack([seed[0] * 9973 + seed[1], i])
                )
                batch = context.get_per_replica_batch_size(global_batch_size)
                per_step = data_lib.per_pipeline_batch(context, batch)
                dataset = tf.data.Dataset.zip(examples.repeat(), flips).skip(skip_steps * per_step)
                parse = lambda e, s: pipeline.parse_train(  # noqa: E731
                    e, self.input_config, self.model_config, self.anchors, s
                )
                return data_lib.with_options(pipeline.batched(dataset, parse, batch, True))

            return dataset_fn

        return for_epoch

    def _eval_dataset_fn(self, global_batch_size):
        def for_steps(steps):
            def dataset_fn(context):
                examples = self.eval_source.examples(
                    None, context.num_input_pipelines, context.input_pipeline_id
                )
                blank = {
                    "source_id": tf.constant(-1, tf.int64),
                    "image": tf.zeros([8, 8, 3], tf.uint8),
                }
                examples = examples.map(lambda e: {k: e[k] for k in blank})
                padded = examples.concatenate(tf.data.Dataset.from_tensors(blank).repeat())
                batch = context.get_per_replica_batch_size(global_batch_size)
                padded = padded.take(steps * data_lib.per_pipeline_batch(context, batch))
                parse = lambda e: pipeline.parse_eval(  # noqa: E731
                    e, self.input_config, self.model_config.image_size
                )
                return data_lib.with_options(pipeline.batched(padded, parse, batch, True))

            return dataset_fn

        return for_steps

    def make_data(self, config, strategy):
        global_batch_size = config.batch_size_per_replica * strategy.num_replicas_in_sync
        num_train, num_eval = self.train_source.num_examples, self.eval_source.num_examples
        return task_lib.TaskData(
            train_dataset_fn=self._train_dataset_fn(config, global_batch_size),
            eval_dataset_fn=self._eval_dataset_fn(global_batch_size),
            steps_per_epoch=data_lib.steps_per_epoch(config, num_train, global_batch_size),
            eval_steps=data_lib.eval_steps(config, num_eval, global_batch_size),
            global_batch_size=global_batch_size,
            preprocessing=self.preprocessing(),
            info={
                "num_train_examples": num_train,
                "num_eval_examples": num_eval,
                "backbone_start": self.transfer_report,
            },
        )

    def build_model(self, config, data):
        backbone = self.backbone_fn(self.model_config) if self.backbone_fn else None
        return MaskRCNN(self.model_config, backbone=backbone)

    def compute_loss(self, model, batch, global_batch_size):
        parts = mask_rcnn_losses(model(batch, training=True), batch)
        per_image = tf.add_n(list(parts.values()))
        loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
        return loss, dict(parts, loss=per_image)

    def make_train_metrics(self):
        return {name: keras.metrics.Mean(name=name) for name in ("loss",) + LOSS_NAMES}

    def update_train_metrics(self, metrics, batch, outputs):
        for name, metric in metrics.items():
            metric.update_state(outputs[name])

    def make_evaluator(self, data):
        del data
        return evaluator.CocoEvaluator(self.eval_source.ground_truth, self.eval_source.category_ids)

    def export(self, model, directory, data, verify):
        export.export_detection_saved_model(model, directory, data.preprocessing, verify=verify)
