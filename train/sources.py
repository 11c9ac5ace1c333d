"""Where the images come from: one ``Source`` per ``--dataset`` kind.

A source knows its classes, its channel statistics and its example counts,
and yields raw ``(image, label)`` records for one input-pipeline shard:
``image`` is either pixels on the 0–255 scale or encoded bytes
(``Source.encoding``).  Shuffling, augmentation, batching and padding are
``train.data``'s job, the same for every source.

Every path problem raises one ``FlagError`` (a ``ValueError``: a usage
error for the scripts) naming the flag and what was expected, before
training starts, and no source is ever empty.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from gn_keras._checks import FlagError
from gn_keras.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from gn_keras.train import image_files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DIGITS_VALIDATION_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the digits split must not move with --seed
FOLDER_VALIDATION_EVERY = 10  # every 10th file of a class is held out
SYNTHETIC_POOL = 64  # distinct random images, cycled to make an epoch
SYNTHETIC_SIZES = (1024, 256)  # (train, validation) examples per epoch


@dataclasses.dataclass
class Source:
    """Raw records of one dataset plus what the model and export need.

    ``train_records(num_shards, shard_index, seed)`` and
    ``eval_records(num_shards, shard_index)`` return unbatched
    ``(image, label)`` datasets for one input pipeline; a file-backed
    source may use ``seed`` to order its files.  ``encoding`` is ``"raw"``
    (pixel tensors), ``"jpeg"`` or ``"any"`` (bytes for ``decode_image``).
    """

    name: str
    num_classes: int
    channels: int
    mean: tuple
    std: tuple
    num_train: int
    num_eval: int
    train_records: object
    eval_records: object
    encoding: str = "raw"
    class_names: list | None = None


def _statistics(channels, sample_images=None):
    """ImageNet's statistics for RGB; measured per channel otherwise."""
    if channels == 3 or sample_images is None:
        return IMAGENET_MEAN[:channels], IMAGENET_STD[:channels]
    pixels = np.asarray(sample_images, np.float64).reshape(-1, channels)
    return tuple(pixels.mean(0).tolist()), tuple(np.maximum(pixels.std(0), 1e-3).tolist())


def _tensor_records(images, labels):
    """A sharded dataset over in-memory arrays."""

    def records(num_shards, shard_index, seed=None):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        return dataset.shard(num_shards, shard_index)

    return records


def digits_source():
    """sklearn's bundled 8×8 digits, scaled 0–16 → 0–255, fixed 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    train_x, eval_x, train_y, eval_y = train_test_split(
        images,
        labels,
        test_size=DIGITS_VALIDATION_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    mean, std = _statistics(1, train_x)
    return Source(
        "digits",
        10,
        1,
        mean,
        std,
        len(train_x),
        len(eval_x),
        _tensor_records(train_x, train_y),
        _tensor_records(eval_x, eval_y),
        class_names=[str(d) for d in range(10)],
    )


def synthetic_source(image_size, num_classes, seed):
    """Random uint8 RGB images and labels, for throughput measurements."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (SYNTHETIC_POOL, image_size, image_size, 3), dtype=np.uint8)
    pool_labels = rng.integers(0, num_classes, SYNTHETIC_POOL).astype(np.int64)

    def cycled(size):
        reps = -(-size // SYNTHETIC_POOL)
        return np.tile(np.arange(SYNTHETIC_POOL), reps)[:size]

    def records_of(size):
        def records(num_shards, shard_index, seed=None):
            index = tf.data.Dataset.from_tensor_slices(cycled(size))
            return index.shard(num_shards, shard_index).map(
                lambda i: (tf.gather(pool, i), tf.gather(pool_labels, i))
            )

        return records

    train_size, eval_size = SYNTHETIC_SIZES
    return Source(
        "synthetic",
        num_classes,
        3,
        IMAGENET_MEAN,
        IMAGENET_STD,
        train_size,
        eval_size,
        records_of(train_size),
        records_of(eval_size),
    )


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise FlagError(
            f"--dataset=tfds:{name} is not a TensorFlow Datasets name; see "
            "https://www.tensorflow.org/datasets/catalog (e.g. tfds:cifar10)."
        ) from None
    # Manually downloaded data (e.g. ImageNet) goes to <data_dir>/downloads/manual.
    builder.download_and_prepare()
    return builder


def tfds_classification_builder(name, data_dir, feature, kind):
    """The prepared builder of a TFDS dataset of ``feature`` and ``label``, and its eval split.

    The evaluation split is ``validation``, else ``test``; ``kind`` words
    the refusal of a dataset without those features (``"a video"``).
    """
    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    if feature not in features or "label" not in features:
        raise FlagError(
            f"--dataset=tfds:{name} has features {sorted(features.keys())}; "
            f"expected {kind} classification dataset with '{feature}' and 'label'."
        )
    eval_split = "validation" if "validation" in builder.info.splits else "test"
    return builder, eval_split


def _tfds_count(builder, split):
    try:
        return builder.info.splits[split].num_examples
    except KeyError:
        dataset = builder.as_dataset(split=split)
        count = int(dataset.cardinality())
        return count if count >= 0 else int(dataset.reduce(0, lambda n, _: n + 1))


def tfds_source(name, data_dir):
    """A TFDS image classification dataset (``image`` and ``label`` features)."""
    import tensorflow_datasets as tfds

    builder, eval_split = tfds_classification_builder(name, data_dir, "image", "an image")
    features = builder.info.features
    channels = features["image"].shape[-1] or 3

    def train_records(num_shards, shard_index, seed=None):
        split = tfds.even_splits("train", num_shards)[shard_index]
        read_config = tfds.ReadConfig(shuffle_seed=seed)
        return builder.as_dataset(
            split=split, as_supervised=True, shuffle_files=True, read_config=read_config
        )

    def eval_records(num_shards, shard_index, seed=None):
        split = tfds.even_splits(eval_split, num_shards)[shard_index]
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    sample = None
    if channels != 3:
        sample = [
            image
            for image, _ in builder.as_dataset(split="train", as_supervised=True)
            .take(1024)
            .as_numpy_iterator()
        ]
    mean, std = _statistics(channels, sample)
    label = features["label"]
    return Source(
        f"tfds:{name}",
        label.num_classes,
        channels,
        mean,
        std,
        _tfds_count(builder, "train"),
        _tfds_count(builder, eval_split),
        train_records,
        eval_records,
        class_names=list(label.names),
    )


def _list_class_folders(root):
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    found = {}
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        found[name] = [
            (os.path.join(folder, f), label)
            for f in sorted(os.listdir(folder))
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return classes, found


def _folder_splits(data_dir):
    """(class names, train pairs, eval pairs) from train/val dirs or one tree."""
    for eval_name in ("val", "validation"):
        if os.path.isdir(os.path.join(data_dir, "train")) and os.path.isdir(
            os.path.join(data_dir, eval_name)
        ):
            classes, train = _list_class_folders(os.path.join(data_dir, "train"))
            eval_classes, held_out = _list_class_folders(os.path.join(data_dir, eval_name))
            if eval_classes != classes:
                raise FlagError(
                    f"--data_dir={data_dir!r}: train/ has classes {classes} but "
                    f"{eval_name}/ has {eval_classes}; they must match."
                )
            return (classes, sum(train.values(), []), sum(held_out.values(), []))
    classes, per_class = _list_class_folders(data_dir)
    train, held_out = [], []
    for pairs in per_class.values():
        for i, pair in enumerate(pairs):
            is_held_out = i % FOLDER_VALIDATION_EVERY == FOLDER_VALIDATION_EVERY - 1
            (held_out if is_held_out else train).append(pair)
    return classes, train, held_out


def _drop_unreadable(data_dir, train, held_out, on_bad_image):
    """The splits without files TensorFlow cannot decode (``train.image_files``).

    ``on_bad_image='skip'`` drops them with a warning naming them and their
    count; ``'fail'`` refuses the tree in one line naming them.
    """
    bad = image_files.unreadable([path for path, _ in train + held_out])
    if not bad:
        return train, held_out
    listed = image_files.describe(bad, data_dir)
    if on_bad_image == "fail":
        raise ValueError(
            f"--data_dir={data_dir} has {len(bad)} unreadable image file(s): {listed}; "
            "fix or remove them, or pass --on_bad_image=skip."
        )
    logging.warning(
        "Skipping %d unreadable image file(s) in --data_dir=%s: %s.", len(bad), data_dir, listed
    )
    return [p for p in train if p[0] not in bad], [p for p in held_out if p[0] not in bad]


def folder_source(data_dir, channels=3, on_bad_image="skip"):
    """A directory with one sub-folder of images per class.

    Images are decoded to ``channels`` (1: grey, 3: RGB; TensorFlow converts
    between them), so a tree of RGB files can feed a model trained on grey
    digits.  Every file is checked when the tree is scanned; see
    ``_drop_unreadable`` for ``on_bad_image``.
    """
    if not os.path.isdir(data_dir):
        raise FlagError(
            f"--data_dir={data_dir!r} is not a directory; expected one "
            "sub-folder of images per class."
        )
    classes, train, held_out = _folder_splits(data_dir)
    train, held_out = _drop_unreadable(data_dir, train, held_out, on_bad_image)
    expected = (
        f"one sub-folder per class holding {'/'.join(IMAGE_EXTENSIONS)} files, "
        "at least 2 classes, and 10+ images per class (or train/ and val/ trees)"
    )
    if len(classes) < 2 or not train or not held_out:
        raise FlagError(
            f"--data_dir={data_dir!r} has {len(classes)} class folder(s), {len(train)} "
            f"training and {len(held_out)} validation images; expected {expected}."
        )

    def records_of(pairs):
        paths = [p for p, _ in pairs]
        labels = np.array([label for _, label in pairs], np.int64)

        def records(num_shards, shard_index, seed=None):
            dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
            dataset = dataset.shard(num_shards, shard_index)
            if seed is not None:  # shuffle paths, not decoded bytes
                dataset = dataset.shuffle(len(paths), seed=seed)
            return dataset.map(
                lambda path, label: (tf.io.read_file(path), label),
                num_parallel_calls=tf.data.AUTOTUNE,
            )

        return records

    mean, std = _statistics(channels)
    return Source(
        "folder",
        len(classes),
        channels,
        mean,
        std,
        len(train),
        len(held_out),
        records_of(train),
        records_of(held_out),
        encoding="any",
        class_names=classes,
    )
