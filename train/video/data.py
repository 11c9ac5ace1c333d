"""Per-replica video datasets for the training machinery (``TaskData``'s functions).

The same contract as the image pipeline (:mod:`gn_keras.train.data`):

* epoch ``e``'s order is shuffled from ``(seed, e)`` only, so a resumed
  epoch skips exactly the batches it trained; training repeats its shard;
* evaluation pads each shard with zero-weight examples up to whole global
  batches, so every real video counts exactly once;
* clips go to the model as ``(pixels − mean) / std`` on the 0–255 scale
  (ImageNet's statistics, as for RGB images), and ``preprocessing()`` is the
  ``preprocessing.json`` the export reads.

Datasets give ``(clips, labels)`` for training, ``(clips, labels,
weights)`` for validation (one centre clip) and ``(views, labels,
weights)`` for the final test, ``views`` being ``(batch, test_views, T, H,
W, 3)`` for :func:`clips.average_view_probabilities`; the test batch counts
videos (``test_batch_size_per_replica``, default 1, i.e. 10 clips).
"""

import tensorflow as tf

from gn_keras import preprocessing as preprocessing_lib
from gn_keras.train import data as image_data
from gn_keras.train.video import clips

SHUFFLE_BUFFER = 1_000  # videos are big: a smaller buffer than images'


class VideoPipeline:
    """Train, validation and test datasets of one ``VideoSource`` and ``ClipSpec``."""

    def __init__(self, source, spec, batch_size_per_replica, seed=0, test_batch_size_per_replica=1):
        self.source = source
        self.spec = spec
        self.batch_size_per_replica = batch_size_per_replica
        # A test example is a whole video's test_views clips, so its batch is
        # counted in videos and kept small (1: 10 clips per replica step).
        self.test_batch_size_per_replica = test_batch_size_per_replica
        self.seed = seed
        self.mean = preprocessing_lib.IMAGENET_MEAN
        self.std = preprocessing_lib.IMAGENET_STD

    def preprocessing(self):
        """The ``preprocessing.json`` contract shared with the export."""
        spec = self.spec
        return {
            "task": "video",
            "clip_shape": [spec.frames, spec.crop_size, spec.crop_size],
            "frames": spec.frames,
            "frame_stride": spec.frame_stride,
            "image_size": [spec.crop_size, spec.crop_size],
            "eval_short_side": spec.eval_short_side,
            "test_clips": spec.test_clips,
            "test_crops": spec.test_crops,
            "channels": self.source.channels,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "data_format": "channels_last",
            "num_classes": self.source.num_classes,
            "class_names": self.source.class_names,
        }

    def normalize(self, clip):
        return preprocessing_lib.normalize(clip, self.mean, self.std)

    def train_clip(self, video, seed=None):
        """One augmented training clip of ``video``."""
        indices = clips.train_indices(self.source.length(video), self.spec, seed)
        frames = self.source.read(video, indices)
        return self.normalize(clips.train_view(frames, self.spec, seed))

    def centre_clip(self, video):
        indices = clips.centre_indices(self.source.length(video), self.spec)
        return self.normalize(clips.centre_view(self.source.read(video, indices), self.spec))

    def test_views(self, video):
        indices = clips.test_indices(self.source.length(video), self.spec)
        frames = self.source.read(video, tf.reshape(indices, [-1]))
        shape = tf.concat([tf.shape(indices), tf.shape(frames)[1:]], 0)
        return self.normalize(clips.test_views(tf.reshape(frames, shape), self.spec))

    def train_dataset_fn(self, epoch, skip_steps=0):
        """For ``distribute_datasets_from_function``: epoch ``epoch`` after
        ``skip_steps`` global steps already trained."""
        seed = image_data.epoch_seed(self.seed, epoch)

        def dataset_fn(context):
            records = self.source.train_records(
                context.num_input_pipelines, context.input_pipeline_id, seed
            )
            per_replica = self.batch_size_per_replica
            return image_data.shuffled_train_batches(
                records,
                self.train_clip,
                buffer=min(SHUFFLE_BUFFER, self.source.num_train),
                seed=seed,
                skip_examples=skip_steps * image_data.per_pipeline_batch(context, per_replica),
                batch_size=per_replica,
            )

        return dataset_fn

    def _padded_eval(self, steps, view_fn, shape, per_replica):
        def dataset_fn(context):
            records = self.source.eval_records(
                context.num_input_pipelines, context.input_pipeline_id
            )
            return image_data.padded_eval_batches(
                records,
                view_fn,
                shape=shape,
                num_examples=steps * image_data.per_pipeline_batch(context, per_replica),
                batch_size=per_replica,
            )

        return dataset_fn

    def clip_shape(self):
        spec = self.spec
        return (spec.frames, spec.crop_size, spec.crop_size, self.source.channels)

    def eval_dataset_fn(self, steps):
        """``steps`` global steps of centre clips ``(clip, label, weight)``."""
        return self._padded_eval(
            steps, self.centre_clip, self.clip_shape(), self.batch_size_per_replica
        )

    def test_dataset_fn(self, steps):
        """``steps`` global steps of ``(views, label, weight)`` for the 10-clip test."""
        shape = (self.spec.test_views, *self.clip_shape())
        return self._padded_eval(steps, self.test_views, shape, self.test_batch_size_per_replica)

    def test_steps(self, num_replicas):
        """Global test batches (``test_batch_size_per_replica`` videos each) covering them once.

        Training and validation steps follow the image pipeline's rules
        (:func:`gn_keras.train.data.steps_per_epoch`, ``eval_steps``).
        """
        return -(-self.source.num_eval // (self.test_batch_size_per_replica * num_replicas))
