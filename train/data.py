"""The tf.data input pipeline shared by every dataset and every strategy.

``make_source`` picks the ``train.sources`` source named by ``--dataset``;
``InputPipeline`` turns its raw records into per-replica batches through
``strategy.distribute_datasets_from_function``:

* Order: epoch ``e`` is shuffled with a seed derived from ``(seed, e)``
  only, so a restarted epoch sees the same order, and a resumed one can skip
  exactly the batches already trained on.  Augmentation draws come from
  TensorFlow's seeded random ops (set by ``--seed``); with a parallel map
  they are not bit-reproducible, the order is.
* Training batches repeat the shard, so every worker always has the next
  batch and all replicas take the same number of steps.
* Evaluation pads each shard with zero-weight examples up to a whole number
  of global batches: every real example is counted exactly once.
* Pixels go to the model as ``(pixels − mean) / std`` on the 0–255 scale;
  ``preprocessing()`` is the JSON the exported model and the fine-tuning
  script read back.
* Augmentation (``--augment``): ``inception`` is the paper's (§4.1, "the
  data augmentation of [58] as implemented by [17]"): a random crop of 8–100%
  of the area with aspect ratio 3/4–4/3 and a horizontal flip, and for
  evaluation the central 87.5% (224 of 256) of the short side, using
  tf-models-official's ``preprocess_ops``.  ``crop_flip`` is the CIFAR
  recipe (pad by 1/8, random crop, flip); ``none`` only resizes.
"""

import numpy as np
import tensorflow as tf
from absl import logging
from official.vision.ops import preprocess_ops

from gn_keras import preprocessing as preprocessing_lib
from gn_keras._checks import FlagError
from gn_keras.train import config as config_lib
from gn_keras.train import imagenet_tfrecords, sources

SHUFFLE_BUFFER = 10_000


def make_source(config):
    """The ``train.sources.Source`` for ``config.dataset``."""
    kind = config_lib.dataset_kind(config.dataset)
    if kind in ("digits", "synthetic") and config.data_dir:
        logging.warning(
            "--data_dir=%s is not used by --dataset=%s (its data is built in).",
            config.data_dir,
            config.dataset,
        )
    if kind != "folder" and config.channels != 3:
        logging.warning(
            "--channels=%s is not used by --dataset=%s (only folders are read that way).",
            config.channels,
            config.dataset,
        )
    if kind == "digits":
        return sources.digits_source()
    if kind == "synthetic":
        return sources.synthetic_source(config.image_size, config.num_classes or 1000, config.seed)
    if kind == "folder":
        return sources.folder_source(config.data_dir, config.channels, config.on_bad_image)
    if kind == "imagenet_tfrecord":
        return imagenet_tfrecords.imagenet_tfrecord_source(
            config.data_dir, config.num_classes or 1000, config.tfrecord_label_offset
        )
    return sources.tfds_source(config.dataset[len("tfds:") :], config.data_dir)


def resolve_augment(augment, source, image_size):
    """``auto``: none for digits/synthetic, else inception (≥128 px) or crop_flip."""
    if augment != "auto":
        return augment
    if source.name in ("digits", "synthetic"):
        return "none"
    return "inception" if image_size >= 128 else "crop_flip"


def epoch_seed(seed, epoch):
    """A 31-bit seed that depends on (seed, epoch) and nothing else."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


def _decode(image, encoding, channels):
    if encoding == "raw":
        return image
    if encoding == "jpeg":
        return tf.io.decode_jpeg(image, channels=channels)
    return tf.io.decode_image(image, channels=channels, expand_animations=False)


class InputPipeline:
    """Per-replica training and evaluation datasets for one source."""

    def __init__(self, source, config):
        self.source = source
        self.image_size = config.image_size
        self.batch_size_per_replica = config.batch_size_per_replica
        self.seed = config.seed
        self.augment = resolve_augment(config.augment, source, config.image_size)

    def preprocessing(self):
        """The ``preprocessing.json`` contract shared with export and fine-tuning."""
        source = self.source
        return {
            "image_size": [self.image_size, self.image_size],
            "channels": source.channels,
            "mean": [float(m) for m in source.mean],
            "std": [float(s) for s in source.std],
            "data_format": "channels_last",
            "num_classes": source.num_classes,
            "class_names": source.class_names,
        }

    def _finish(self, image):
        size = (self.image_size, self.image_size)
        image = tf.image.resize(image, size)  # float32, still on the 0-255 scale
        image.set_shape((*size, self.source.channels))
        return image

    def _normalize(self, image):
        return preprocessing_lib.normalize(image, self.source.mean, self.source.std)

    def _train_image(self, image):
        source = self.source
        if self.augment == "inception" and source.encoding == "jpeg":
            shape = tf.image.extract_jpeg_shape(image)
            image = preprocess_ops.random_crop_image_v2(image, shape)
        elif self.augment == "inception":
            image = preprocess_ops.random_crop_image(
                _decode(image, source.encoding, source.channels)
            )
        else:
            image = _decode(image, source.encoding, source.channels)
        image = self._finish(image)
        if self.augment == "crop_flip":
            pad = self.image_size // 8
            padded = tf.image.resize_with_crop_or_pad(
                image, self.image_size + 2 * pad, self.image_size + 2 * pad
            )
            image = tf.image.random_crop(padded, tf.shape(image))
        if self.augment in ("crop_flip", "inception"):
            image = tf.image.random_flip_left_right(image)
        return self._normalize(image)

    def _eval_image(self, image):
        source = self.source
        if self.augment == "inception" and source.encoding == "jpeg":
            image = preprocess_ops.center_crop_image_v2(image, tf.image.extract_jpeg_shape(image))
        elif self.augment == "inception":
            image = preprocess_ops.center_crop_image(
                _decode(image, source.encoding, source.channels)
            )
        else:
            image = _decode(image, source.encoding, source.channels)
        return self._normalize(self._finish(image))

    def train_dataset_fn(self, epoch, skip_steps=0):
        """For ``distribute_datasets_from_function``: epoch ``epoch``, after
        ``skip_steps`` global steps already trained."""
        seed = epoch_seed(self.seed, epoch)

        def dataset_fn(context):
            records = self.source.train_records(
                context.num_input_pipelines, context.input_pipeline_id, seed
            )
            buffer = min(SHUFFLE_BUFFER, self.source.num_train // context.num_input_pipelines)
            return shuffled_train_batches(
                records,
                self._train_image,
                buffer=buffer,
                seed=seed,
                skip_examples=skip_steps * per_pipeline_batch(context, self.batch_size_per_replica),
                batch_size=self.batch_size_per_replica,
            )

        return dataset_fn

    def eval_dataset_fn(self, steps):
        """For ``distribute_datasets_from_function``: ``steps`` global steps of
        ``(image, label, weight)``, padded with weight-0 examples."""
        shape = (self.image_size, self.image_size, self.source.channels)

        def dataset_fn(context):
            records = self.source.eval_records(
                context.num_input_pipelines, context.input_pipeline_id
            )
            per_replica = self.batch_size_per_replica
            return padded_eval_batches(
                records,
                self._eval_image,
                shape=shape,
                num_examples=steps * per_pipeline_batch(context, per_replica),
                batch_size=per_replica,
            )

        return dataset_fn


def per_pipeline_batch(context, batch_size_per_replica):
    """Examples one input pipeline gives per global step: a batch for each of its replicas."""
    return batch_size_per_replica * (context.num_replicas_in_sync // context.num_input_pipelines)


def shuffled_train_batches(records, view_fn, *, buffer, seed, skip_examples, batch_size):
    """Training batches ``(view_fn(record), label)`` of ``(record, label)`` pairs.

    The records are shuffled with ``seed`` through a ``buffer`` of at least
    one, repeated (every replica always has a next batch) and, on resume,
    ``skip_examples`` already trained on are skipped; whole batches only.
    """
    records = records.shuffle(max(1, buffer), seed=seed, reshuffle_each_iteration=True).repeat()
    examples = records.skip(skip_examples).map(
        lambda record, label: (view_fn(record), tf.cast(label, tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    batches = examples.batch(batch_size, drop_remainder=True)
    return with_options(batches.prefetch(tf.data.AUTOTUNE))


def padded_eval_batches(records, view_fn, *, shape, num_examples, batch_size):
    """``num_examples`` of ``(view_fn(record), label, 1.0)``, then zero-weight padding.

    The padding examples are zeros of ``shape`` with label 0 and weight 0,
    so every real example counts once and every replica takes every step.
    """
    real = records.map(
        lambda record, label: (view_fn(record), tf.cast(label, tf.int64), 1.0),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    padding = tf.data.Dataset.from_tensors(
        (tf.zeros(shape), tf.constant(0, tf.int64), 0.0)
    ).repeat()
    batches = real.concatenate(padding).take(num_examples).batch(batch_size, drop_remainder=True)
    return with_options(batches.prefetch(tf.data.AUTOTUNE))


def with_options(dataset):
    """Deterministic order, and no auto-sharding on top of the per-pipeline shards."""
    options = tf.data.Options()
    options.deterministic = True
    # Each input pipeline already reads only its shard.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


# Every task's step counts (classification, video, detection) follow these rules.
def steps_per_epoch(config, num_train, global_batch_size):
    """``--steps_per_epoch`` if set, else the whole global batches in one pass."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    full = num_train // global_batch_size
    if full == 0:
        raise FlagError(
            f"--batch_size_per_replica={config.batch_size_per_replica} gives a global batch "
            f"of {global_batch_size}, larger than the {num_train} training examples "
            f"of --dataset={config.dataset}; use a smaller batch or set --steps_per_epoch."
        )
    return full


def eval_steps(config, num_eval, global_batch_size):
    """Global batches covering the validation set once, capped by ``--eval_steps``."""
    if num_eval == 0:
        raise FlagError(
            f"--dataset={config.dataset} has no validation examples; "
            "expected a non-empty validation (or test) split."
        )
    full = -(-num_eval // global_batch_size)
    return min(full, config.eval_steps) if config.eval_steps else full
