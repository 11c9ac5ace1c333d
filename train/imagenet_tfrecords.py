"""The ImageNet TFRecord source (``--dataset=imagenet_tfrecord``).

Standard shards (``train-NNNNN-of-NNNNN``, ``validation-…``) decoded by
tf-models-official's classification decoder; labels are shifted by
``--tfrecord_label_offset`` and checked against ``--num_classes`` as they are
read.  Each input pipeline reads its own files (or, with fewer files than
pipelines, its share of records).
"""

import glob
import os

import numpy as np
import tensorflow as tf

from gn_keras._checks import FlagError
from gn_keras.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from gn_keras.train.sources import Source

# Published ImageNet-1k split sizes, used when the full standard shard set
# (1024 train, 128 validation files) is present instead of a counting pass.
IMAGENET_COUNTS = {"train": (1024, 1_281_167), "validation": (128, 50_000)}


def _parser(num_classes, label_offset):
    """``(image bytes, label)`` of a serialized example, the label range checked."""
    from official.vision.dataloaders import classification_input

    decoder = classification_input.Decoder()
    image_key = classification_input.DEFAULT_IMAGE_FIELD_KEY
    label_key = classification_input.DEFAULT_LABEL_FIELD_KEY
    message = (
        f"image/class/label minus --tfrecord_label_offset={label_offset} "
        f"must lie in [0, --num_classes={num_classes})"
    )

    def parse(serialized):
        example = decoder.decode(serialized)
        label = example[label_key] - label_offset
        checks = [
            tf.debugging.assert_non_negative(label, message=message),
            tf.debugging.assert_less(label, tf.constant(num_classes, tf.int64), message=message),
        ]
        with tf.control_dependencies(checks):
            return example[image_key], tf.identity(label)

    return parse


def _shard_files(files, num_shards, shard_index, seed):
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if len(files) >= num_shards:
        dataset = dataset.shard(num_shards, shard_index)
    if seed is not None:
        dataset = dataset.shuffle(len(files), seed=seed)
    return dataset


def _count_records(files, split):
    standard_files, standard_count = IMAGENET_COUNTS[split]
    if len(files) == standard_files:
        return standard_count
    return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1))


def imagenet_tfrecord_source(data_dir, num_classes, label_offset):
    """Standard ImageNet TFRecord shards, parsed by tf-models-official."""
    if not os.path.isdir(data_dir):
        raise FlagError(
            f"--data_dir={data_dir!r} is not a directory; expected the "
            "folder of ImageNet TFRecord shards."
        )
    files = {
        split: sorted(glob.glob(os.path.join(data_dir, f"{split}-*-of-*")))
        for split in ("train", "validation")
    }
    for split, found in files.items():
        if not found:
            raise FlagError(
                f"--data_dir={data_dir!r} has no {split} shards: expected files named "
                f"{split}-NNNNN-of-NNNNN (the standard ImageNet TFRecord layout)."
            )
    parse = _parser(num_classes, label_offset)

    def records_of(split):
        def records(num_shards, shard_index, seed=None):
            shard = _shard_files(files[split], num_shards, shard_index, seed)
            dataset = shard.interleave(
                tf.data.TFRecordDataset,
                cycle_length=8,
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            if len(files[split]) < num_shards:
                dataset = dataset.shard(num_shards, shard_index)
            return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

        return records

    return Source(
        "imagenet_tfrecord",
        num_classes,
        3,
        IMAGENET_MEAN,
        IMAGENET_STD,
        _count_records(files["train"], "train"),
        _count_records(files["validation"], "validation"),
        records_of("train"),
        records_of("validation"),
        encoding="jpeg",
    )
