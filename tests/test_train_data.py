"""The input pipeline on every dataset kind, against NumPy references.

Data written by the tests: ImageNet-format TFRecord shards (JPEG, 1-based
labels), class folders of PNGs; TFDS through ``tfds.testing.mock_data``.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from gn_keras.train import config as config_lib
from gn_keras.train import data as data_lib


def one_pipeline_context():
    return tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1
    )


def batches(dataset_fn, count, context=None):
    dataset = dataset_fn(context or one_pipeline_context())
    return [tuple(np.asarray(t) for t in item) for item in dataset.take(count)]


def make_pipeline(**fields):
    config = config_lib.make_config(**fields)
    return data_lib.InputPipeline(data_lib.make_source(config), config), config


def normalized_digits(mean, std):
    digits = load_digits()
    return (digits.images.astype(np.float64) * 255 / 16 - mean) / std, digits.target


def nearest(images, bank):
    """Index in ``bank`` of each image and the distance to it."""
    flat = bank.reshape(len(bank), -1)
    found = [np.abs(flat - image.reshape(1, -1)).max(1) for image in images]
    return np.array([f.argmin() for f in found]), np.array([f.min() for f in found])


def test_digits_split_statistics_and_normalization():
    pipeline, config = make_pipeline(image_size=8, batch_size_per_replica=16)
    source = pipeline.source
    assert (source.num_train, source.num_eval, source.num_classes, source.channels) == (
        1437,
        360,
        10,
        1,
    )
    spec = pipeline.preprocessing()
    assert spec["image_size"] == [8, 8] and spec["channels"] == 1 and spec["num_classes"] == 10
    bank, targets = normalized_digits(np.float64(spec["mean"][0]), spec["std"][0])
    train = batches(pipeline.train_dataset_fn(epoch=0), 1437 // 16)
    images = np.concatenate([b[0] for b in train])[..., 0]
    labels = np.concatenate([b[1] for b in train])
    index, distance = nearest(images, bank)
    assert distance.max() < 1e-4  # (pixels·255/16 − mean)/std exactly
    np.testing.assert_array_equal(targets[index], labels)
    assert len(set(index)) == len(index)  # one epoch: no example twice
    steps = data_lib.eval_steps(config, source.num_eval, 16)
    evaluation = batches(pipeline.eval_dataset_fn(steps), steps)
    eval_index, eval_distance = nearest(np.concatenate([b[0] for b in evaluation])[..., 0], bank)
    weights = np.concatenate([b[2] for b in evaluation])
    real = eval_index[weights == 1]
    assert eval_distance[weights == 1].max() < 1e-4 and len(set(real)) == len(real) == 360
    assert not set(real) & set(index)  # validation never trained on
    # The statistics are the training images' own, on the 0–255 scale.
    raw = load_digits().images * 255 / 16
    train_rows = raw[sorted(set(range(len(raw))) - set(real))]
    assert spec["mean"][0] == pytest.approx(train_rows.mean(), rel=1e-6)
    assert spec["std"][0] == pytest.approx(train_rows.std(), rel=1e-6)


def test_epoch_order_depends_only_on_seed_and_epoch_and_skip_resumes_exactly():
    pipeline, _ = make_pipeline(image_size=8, batch_size_per_replica=32, seed=7)
    first = batches(pipeline.train_dataset_fn(epoch=3), 6)
    again = batches(pipeline.train_dataset_fn(epoch=3), 6)
    other_epoch = batches(pipeline.train_dataset_fn(epoch=4), 6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
    assert any((a[1] != b[1]).any() for a, b in zip(first, other_epoch))
    resumed = batches(pipeline.train_dataset_fn(epoch=3, skip_steps=4), 2)
    for a, b in zip(first[4:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other_seed, _ = make_pipeline(image_size=8, batch_size_per_replica=32, seed=8)
    shifted = batches(other_seed.train_dataset_fn(epoch=3), 1)
    assert (shifted[0][1] != first[0][1]).any()


def test_two_pipelines_shard_training_and_pad_evaluation_to_whole_batches():
    pipeline, config = make_pipeline(image_size=8, batch_size_per_replica=16)
    contexts = [tf.distribute.InputContext(2, i, 4) for i in range(2)]
    bank, _ = normalized_digits(
        *(
            np.float64(v[0])
            for v in (pipeline.preprocessing()["mean"], pipeline.preprocessing()["std"])
        )
    )
    shards = [
        np.concatenate([b[0] for b in batches(pipeline.train_dataset_fn(0), 20, c)])
        for c in contexts
    ]
    seen = [set(nearest(s[..., 0], bank)[0]) for s in shards]
    assert not seen[0] & seen[1]
    steps = data_lib.eval_steps(config, pipeline.source.num_eval, global_batch_size=64)
    assert steps == 6  # ceil(360 / 64)
    real = []
    for context in contexts:
        evaluation = batches(pipeline.eval_dataset_fn(steps), 100, context)
        assert len(evaluation) == steps * 2  # two replicas per pipeline
        weights = np.concatenate([b[2] for b in evaluation])
        images = np.concatenate([b[0] for b in evaluation])[weights == 1]
        real.extend(nearest(images[..., 0], bank)[0])
    assert len(real) == len(set(real)) == 360


def test_synthetic_dataset_shapes_and_classes():
    pipeline, config = make_pipeline(
        dataset="synthetic", image_size=16, num_classes=7, batch_size_per_replica=4
    )
    images, labels = batches(pipeline.train_dataset_fn(0), 1)[0]
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.float32
    assert labels.min() >= 0 and labels.max() < 7
    assert pipeline.source.num_classes == 7 and pipeline.augment == "none"
    # uniform 0..255 pixels, normalized with ImageNet's mean/std per channel
    spec = pipeline.preprocessing()
    pixels = images.reshape(-1, 3) * spec["std"] + spec["mean"]
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3


@pytest.mark.parametrize("name, channels", [("cifar10", 3), ("mnist", 1)])
def test_tfds_path_with_mock_data(name, channels):
    with tfds.testing.mock_data(num_examples=24):
        pipeline, config = make_pipeline(
            dataset=f"tfds:{name}",
            augment="none",
            image_size=32 if channels == 3 else 28,
            batch_size_per_replica=8,
        )
        source = pipeline.source
        raw = [(image, label) for image, label in source.eval_records(1, 0).as_numpy_iterator()]
        evaluation = batches(pipeline.eval_dataset_fn(3), 3)
        train = batches(pipeline.train_dataset_fn(0), 2)
    assert (source.num_classes, source.channels, source.num_train) == (10, channels, 24)
    spec = pipeline.preprocessing()
    mean, std = np.array(spec["mean"]), np.array(spec["std"])
    if channels == 3:
        np.testing.assert_allclose(mean, [123.675, 116.28, 103.53])
    else:  # measured on the training images
        sample = np.stack([image for image, _ in raw]).astype(np.float64)
        assert 0 < mean[0] < 255 and std[0] == pytest.approx(sample.std(), rel=0.2)
    expected = np.stack([(image - mean) / std for image, _ in raw])
    got = np.concatenate([b[0] for b in evaluation])[:24]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in evaluation])[:24], [label for _, label in raw]
    )
    assert train[0][0].shape == (8, *expected.shape[1:])


def write_imagenet_shards(directory, rng, colours, per_shard=6):
    """Standard ImageNet TFRecords: JPEG bytes, 1-based labels, shard names.

    Every shard holds every class at least once (in a random order), so tests
    that need the highest label to be present never depend on the draw.
    """
    os.makedirs(directory, exist_ok=True)
    written = {"train": [], "validation": []}
    for split, shards in (("train", 2), ("validation", 1)):
        for shard in range(shards):
            path = os.path.join(directory, f"{split}-{shard:05d}-of-{shards:05d}")
            with tf.io.TFRecordWriter(path) as writer:
                for label in rng.permutation(np.resize(np.arange(len(colours)), per_shard)):
                    label = int(label)
                    height, width = (int(v) for v in rng.integers(30, 60, size=2))
                    image = np.broadcast_to(colours[label], (height, width, 3)).astype(np.uint8)
                    encoded = tf.io.encode_jpeg(image, quality=100).numpy()
                    feature = {
                        "image/encoded": _bytes(encoded),
                        "image/format": _bytes(b"JPEG"),
                        "image/class/label": _int(label + 1),
                        "image/class/synset": _bytes(f"n{label:08d}".encode()),
                        "image/height": _int(height),
                        "image/width": _int(width),
                        "image/channels": _int(3),
                        "image/colorspace": _bytes(b"RGB"),
                        "image/filename": _bytes(f"{split}_{shard}.JPEG".encode()),
                    }
                    example = tf.train.Example(features=tf.train.Features(feature=feature))
                    writer.write(example.SerializeToString())
                    written[split].append(label)
    return written


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def test_imagenet_tfrecord_path_on_written_shards(rng, tmp_path):
    colours = rng.integers(0, 256, size=(4, 3))
    written = write_imagenet_shards(str(tmp_path), rng, colours)
    pipeline, config = make_pipeline(
        dataset="imagenet_tfrecord",
        data_dir=str(tmp_path),
        num_classes=4,
        image_size=24,
        batch_size_per_replica=3,
    )
    assert pipeline.augment == "crop_flip"  # auto below 128 px
    pipeline, config = make_pipeline(
        dataset="imagenet_tfrecord",
        data_dir=str(tmp_path),
        num_classes=4,
        image_size=24,
        augment="inception",
        batch_size_per_replica=3,
    )
    source = pipeline.source
    assert (source.num_train, source.num_eval, source.encoding) == (12, 6, "jpeg")
    spec = pipeline.preprocessing()
    expected = (colours - np.array(spec["mean"])) / np.array(spec["std"])
    evaluation = batches(pipeline.eval_dataset_fn(2), 2)
    labels = np.concatenate([b[1] for b in evaluation])
    images = np.concatenate([b[0] for b in evaluation])
    assert images.shape == (6, 24, 24, 3)
    np.testing.assert_array_equal(labels, written["validation"])  # stored label − 1
    # Constant-colour images survive the centre crop and resize as that colour
    # (up to JPEG's rounding, ~1 grey level = 1/57 after normalization).
    np.testing.assert_allclose(
        images, np.broadcast_to(expected[labels][:, None, None, :], images.shape), atol=0.1
    )
    train = batches(pipeline.train_dataset_fn(0), 4)
    for images, labels in train:
        assert images.shape == (3, 24, 24, 3)
        np.testing.assert_allclose(
            images, np.broadcast_to(expected[labels][:, None, None, :], images.shape), atol=0.1
        )


def test_imagenet_tfrecord_label_out_of_range_names_the_flags(rng, tmp_path):
    write_imagenet_shards(str(tmp_path), rng, rng.integers(0, 256, size=(4, 3)))
    pipeline, _ = make_pipeline(
        dataset="imagenet_tfrecord",
        data_dir=str(tmp_path),
        num_classes=4,
        tfrecord_label_offset=0,
        image_size=16,
        batch_size_per_replica=6,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="--num_classes=4"):
        batches(pipeline.eval_dataset_fn(1), 1)


def write_png_folders(root, rng, classes, per_class, size=None):
    images = {}
    for name in classes:
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            height, width = size or (int(v) for v in rng.integers(10, 30, size=2))
            image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            path = os.path.join(root, name, f"img{i:03d}.png")
            tf.io.write_file(path, tf.io.encode_png(image))
            images[path] = image
    return images


def test_folder_path_on_written_pngs(rng, tmp_path):
    classes = ["cat", "dog", "emu"]
    images = write_png_folders(str(tmp_path), rng, classes, per_class=12, size=(12, 12))
    pipeline, config = make_pipeline(
        dataset="folder",
        data_dir=str(tmp_path),
        image_size=12,
        augment="none",
        batch_size_per_replica=3,
    )
    source = pipeline.source
    assert source.class_names == classes and (source.num_train, source.num_eval) == (33, 3)
    spec = pipeline.preprocessing()
    held_out = [os.path.join(str(tmp_path), c, "img009.png") for c in classes]
    expected = np.stack(
        [(images[p] - np.array(spec["mean"])) / np.array(spec["std"]) for p in held_out]
    )
    images_out, labels, weights = batches(pipeline.eval_dataset_fn(1), 1)[0]
    np.testing.assert_allclose(images_out, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(labels, [0, 1, 2])
    np.testing.assert_array_equal(weights, [1, 1, 1])
    inception, _ = make_pipeline(
        dataset="folder",
        data_dir=str(tmp_path),
        image_size=20,
        augment="inception",
        batch_size_per_replica=4,
    )
    train_images, train_labels = batches(inception.train_dataset_fn(0), 1)[0]
    assert train_images.shape == (4, 20, 20, 3) and set(train_labels) <= {0, 1, 2}


def test_folder_with_train_and_val_trees(rng, tmp_path):
    write_png_folders(str(tmp_path / "train"), rng, ["a", "b"], per_class=3)
    write_png_folders(str(tmp_path / "val"), rng, ["a", "b"], per_class=2)
    pipeline, _ = make_pipeline(
        dataset="folder", data_dir=str(tmp_path), image_size=16, batch_size_per_replica=2
    )
    assert (pipeline.source.num_train, pipeline.source.num_eval) == (6, 4)


@pytest.mark.parametrize(
    "case, match",
    [
        ("folder_missing", r"--data_dir=.*nope.*is not a directory"),
        ("folder_one_class", r"--data_dir=.* 1 class folder"),
        ("folder_no_images", r"--data_dir=.* 0 training"),
        ("folder_tree_mismatch", r"train/ has classes \['a', 'b'\] but val/ has \['a'\]"),
        ("tfrecord_missing", r"--data_dir=.*nope.*not a directory"),
        ("tfrecord_no_shards", r"--data_dir=.* has no train shards: expected files named train-"),
        ("tfds_unknown", r"--dataset=tfds:no_such_dataset_xyz is not a TensorFlow Datasets name"),
        ("batch_too_large", r"--batch_size_per_replica=2048 .* larger than the 1437"),
    ],
)
def test_path_and_size_errors_are_one_clear_message(case, match, rng, tmp_path):
    root = str(tmp_path)
    fields = {"dataset": "folder", "data_dir": root}
    if case == "folder_missing" or case == "tfrecord_missing":
        fields["data_dir"] = os.path.join(root, "nope")
    if case == "folder_one_class":
        write_png_folders(root, rng, ["only"], per_class=12, size=(4, 4))
    if case == "folder_no_images":
        os.makedirs(os.path.join(root, "a"))
        os.makedirs(os.path.join(root, "b"))
        open(os.path.join(root, "a", "notes.txt"), "w").close()
    if case == "folder_tree_mismatch":
        write_png_folders(os.path.join(root, "train"), rng, ["a", "b"], 1, size=(4, 4))
        write_png_folders(os.path.join(root, "val"), rng, ["a"], 1, size=(4, 4))
    if case.startswith("tfrecord"):
        fields["dataset"] = "imagenet_tfrecord"
        open(os.path.join(root, "validation-00000-of-00001"), "w").close()
    if case == "tfds_unknown":
        fields = {"dataset": "tfds:no_such_dataset_xyz"}
    if case == "batch_too_large":
        fields = {"batch_size_per_replica": 2048}
    with pytest.raises(ValueError, match=match):
        config = config_lib.make_config(**fields)
        source = data_lib.make_source(config)
        data_lib.steps_per_epoch(config, source.num_train, config.batch_size_per_replica)
