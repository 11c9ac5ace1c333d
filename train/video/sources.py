"""Where videos come from: one ``VideoSource`` per kind of video dataset.

A source lists its videos and labels and knows how to read any frames of
one video; which frames, and the cropping, are ``clips``' job, and the
batching ``data``'s.  Records are ``(video, label)`` where ``video`` is a
dict of tensors the source's own ``length`` and ``read`` understand, so only
the frames a clip needs are decoded.

* ``moving_shapes``: the embedded generated set (no download), in memory.
* ``tfrecord``: ``tf.train.SequenceExample`` files in tf-models-official's
  video format (JPEG/PNG frames in ``image/encoded``, the label in
  ``clip/label/index``), parsed by its ``video_input.Decoder``.
* ``folder``: ``class/video`` trees (see :mod:`train.video.folders`).
* ``tfds:<name>``: a TFDS video dataset with ``video`` and ``label``.

Every path problem is one ``ValueError`` naming the path, before training.
"""

import dataclasses
import glob
import os

import tensorflow as tf

from gn_keras.train import sources as image_sources
from gn_keras.train.video import moving_shapes

TFRECORD_SPLITS = {"train": ("train",), "validation": ("validation", "val", "test")}


@dataclasses.dataclass
class VideoSource:
    """Videos of one dataset: records per shard, plus how to read their frames.

    ``train_records(num_shards, shard_index, seed)`` and
    ``eval_records(num_shards, shard_index)`` give unbatched ``(video,
    label)``; ``length(video)`` is its frame count and ``read(video,
    indices)`` its uint8 frames ``(len(indices), H, W, 3)``.
    """

    name: str
    num_classes: int
    num_train: int
    num_eval: int
    train_records: object
    eval_records: object
    length: object
    read: object
    class_names: list | None = None
    channels: int = 3


def _sharded(dataset, num_shards, shard_index, seed, size):
    dataset = dataset.shard(num_shards, shard_index)
    if seed is not None:
        dataset = dataset.shuffle(max(1, size), seed=seed)
    return dataset


def _tensor_video_source(name, splits, num_classes, class_names):
    """Decoded videos held as ``{"frames": uint8 (L, H, W, 3)}``."""

    def records_of(split):
        videos, labels = splits[split]

        def records(num_shards, shard_index, seed=None):
            dataset = tf.data.Dataset.from_tensor_slices(({"frames": videos}, labels))
            return _sharded(dataset, num_shards, shard_index, seed, len(labels))

        return records

    return VideoSource(
        name,
        num_classes,
        len(splits["train"][1]),
        len(splits["validation"][1]),
        records_of("train"),
        records_of("validation"),
        length=lambda video: tf.shape(video["frames"])[0],
        read=lambda video, indices: tf.gather(video["frames"], indices),
        class_names=class_names,
    )


def moving_shapes_source(num_train=None, num_eval=None):
    """The embedded set of :mod:`train.video.moving_shapes`."""
    splits = {
        "train": moving_shapes.generate("train", num_train),
        "validation": moving_shapes.generate("validation", num_eval),
    }
    names = list(moving_shapes.CLASS_NAMES)
    return _tensor_video_source("moving_shapes", splits, len(names), names)


def decode_frames(encoded, indices, load=None):
    """Decode only the frames at ``indices`` of a vector of encoded images.

    ``load`` maps an element to its encoded bytes first (e.g. ``tf.io.read_file``).
    """
    load = load or tf.identity
    return tf.map_fn(
        lambda item: tf.io.decode_image(load(item), channels=3, expand_animations=False),
        tf.gather(encoded, indices),
        fn_output_signature=tf.uint8,
    )


def _tfrecord_files(data_dir):
    if not os.path.isdir(data_dir):
        raise ValueError(
            f"--data_dir={data_dir!r} is not a directory; expected TFRecord files "
            "of tf.train.SequenceExample named train* and validation*/val*/test*."
        )
    files = {}
    for split, prefixes in TFRECORD_SPLITS.items():
        for prefix in prefixes:
            found = sorted(glob.glob(os.path.join(data_dir, f"{prefix}*")))
            if found:
                files[split] = found
                break
        else:
            raise ValueError(
                f"--data_dir={data_dir!r} has no {split} files: expected names starting "
                f"with {' or '.join(prefixes)} (TFRecords of tf.train.SequenceExample)."
            )
    return files


def tfrecord_source(data_dir, num_classes=None):
    """SequenceExample TFRecords in tf-models-official's video format."""
    from official.vision.dataloaders import video_input

    files = _tfrecord_files(data_dir)
    decoder = video_input.Decoder()

    def parse(serialized):
        example = decoder.decode(serialized)
        video = {"encoded": example[video_input.IMAGE_KEY]}
        return video, example[video_input.LABEL_KEY][0]

    counts, largest = {}, -1
    for split, found in files.items():
        labels = tf.data.TFRecordDataset(found).map(lambda s: parse(s)[1])
        counts[split] = int(labels.reduce(0, lambda n, _: n + 1))
        largest = max(largest, int(labels.reduce(tf.constant(-1, tf.int64), tf.maximum)))
    num_classes = num_classes or largest + 1

    def records_of(split):
        paths = files[split]

        def records(num_shards, shard_index, seed=None):
            if len(paths) < num_shards:  # too few files: every pipeline reads all, keeps its share
                return tf.data.TFRecordDataset(paths).shard(num_shards, shard_index).map(parse)
            names = _sharded(
                tf.data.Dataset.from_tensor_slices(paths), num_shards, shard_index, seed, len(paths)
            )
            records = names.interleave(
                tf.data.TFRecordDataset,
                cycle_length=8,
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            return records.map(parse)

        return records

    if 0 in counts.values():
        raise ValueError(f"--data_dir={data_dir!r}: a split has no records ({counts}).")
    return VideoSource(
        f"tfrecord:{data_dir}",
        num_classes,
        counts["train"],
        counts["validation"],
        records_of("train"),
        records_of("validation"),
        length=lambda video: tf.shape(video["encoded"])[0],
        read=lambda video, indices: decode_frames(video["encoded"], indices),
    )


def tfds_source(name, data_dir=None):
    """A TFDS video classification dataset (``video`` and ``label`` features)."""
    import tensorflow_datasets as tfds

    builder, eval_split = image_sources.tfds_classification_builder(
        name, data_dir, "video", "a video"
    )

    def records_of(split):
        def records(num_shards, shard_index, seed=None):
            part = tfds.even_splits(split, num_shards)[shard_index]
            read_config = tfds.ReadConfig(shuffle_seed=seed)
            dataset = builder.as_dataset(
                split=part, shuffle_files=seed is not None, read_config=read_config
            )
            return dataset.map(lambda ex: ({"frames": ex["video"]}, ex["label"]))

        return records

    label = builder.info.features["label"]
    return VideoSource(
        f"tfds:{name}",
        label.num_classes,
        image_sources._tfds_count(builder, "train"),
        image_sources._tfds_count(builder, eval_split),
        records_of("train"),
        records_of(eval_split),
        length=lambda video: tf.shape(video["frames"])[0],
        read=lambda video, indices: tf.gather(video["frames"], indices),
        class_names=list(label.names),
    )
