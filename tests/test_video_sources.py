"""Video sources on data the tests write: SequenceExample TFRecords, frame
folders, video files, TFDS (mock data), and the embedded moving-shapes set.

Each reader is checked frame by frame against the arrays that were written
(PNG frames and the lossless FFV1 codec keep pixels exact).
"""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from gn_keras.train.video import folders, moving_shapes, sources


def _videos(rng, count, frames=(5, 9), size=(6, 10)):
    return [
        rng.integers(0, 256, (int(rng.integers(*frames)), *size, 3), dtype=np.uint8)
        for _ in range(count)
    ]


def _all_records(records_fn, num_shards=1, shard_index=0):
    return list(records_fn(num_shards, shard_index))


def _check_reads(source, records, videos, labels, rng, ordered=True):
    """Records hold exactly ``videos`` with ``labels`` (in order, or matched by content)."""
    assert len(records) == len(videos)
    if not ordered:  # match each record to the written video with the same frames
        firsts = [source.read(video, tf.constant([0])).numpy() for video, _ in records]
        order = [
            next(
                i for i, v in enumerate(videos) if v.shape[1:] == f.shape[1:] and (v[:1] == f).all()
            )
            for f in firsts
        ]
        videos, labels = [videos[i] for i in order], [labels[i] for i in order]
    assert [int(label) for _, label in records] == [int(label) for label in labels]
    for (video, _), expected in zip(records, videos):
        assert int(source.length(video)) == len(expected)
        indices = rng.integers(0, len(expected), 4).astype(np.int32)
        np.testing.assert_array_equal(source.read(video, tf.constant(indices)), expected[indices])


def _sequence_example(frames, label):
    encoded = [tf.io.encode_png(frame).numpy() for frame in frames]
    example = tf.train.SequenceExample()
    example.context.feature["clip/label/index"].int64_list.value.append(label)
    images = example.feature_lists.feature_list["image/encoded"]
    for data in encoded:
        images.feature.add().bytes_list.value.append(data)
    return example.SerializeToString()


def test_sequence_example_tfrecords(tmp_path, rng):
    written = {}
    for split, count, files in (("train", 6, 2), ("validation", 3, 1)):
        videos, labels = _videos(rng, count), rng.integers(0, 3, count)
        labels[0] = 2  # so the class count is known: 3
        for part in range(files):
            path = tmp_path / f"{split}-{part:05d}-of-{files:05d}"
            with tf.io.TFRecordWriter(str(path)) as writer:
                for i in range(part, count, files):
                    writer.write(_sequence_example(videos[i], labels[i]))
        order = [i for part in range(files) for i in range(part, count, files)]
        written[split] = ([videos[i] for i in order], labels[order])
    source = sources.tfrecord_source(str(tmp_path))
    assert (source.num_classes, source.num_train, source.num_eval) == (3, 6, 3)
    _check_reads(source, _all_records(source.eval_records), *written["validation"], rng)
    records = _all_records(source.train_records)
    _check_reads(source, records, *written["train"], rng, ordered=False)
    shards = [_all_records(source.train_records, 2, i) for i in (0, 1)]
    assert sorted(len(s) for s in shards) == [3, 3]


def test_tfrecord_source_names_missing_split(tmp_path):
    (tmp_path / "train-0").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no validation files.*validation or val or test"):
        sources.tfrecord_source(str(tmp_path))


def _write_tree(root, rng, write_video, per_class=10):
    """Two classes of ``per_class`` videos; returns {class: [frames...]}, sorted."""
    tree = {}
    for name in ("b_wave", "a_jump"):
        os.makedirs(root / name)
        tree[name] = _videos(rng, per_class, frames=(3, 6), size=(6, 8))
        for i, frames in enumerate(tree[name]):
            write_video(root / name / f"v{i:02d}", frames)
    return tree


def _write_frame_folder(path, frames):
    os.makedirs(path)
    for t, frame in enumerate(frames):
        tf.io.write_file(str(path / f"{t:04d}.png"), tf.io.encode_png(frame))


def _write_video_file(path, frames):
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(f"{path}.avi", cv2.VideoWriter_fourcc(*"FFV1"), 10, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _expected_split(tree, held_out):
    videos, labels = [], []
    for label, name in enumerate(sorted(tree)):
        for i, frames in enumerate(tree[name]):
            if (i % 10 == 9) == held_out:
                videos.append(frames)
                labels.append(label)
    return videos, labels


@pytest.mark.parametrize("writer", [_write_frame_folder, _write_video_file])
def test_folder_tree(tmp_path, rng, writer):
    tree = _write_tree(tmp_path, rng, writer)
    source = folders.folder_source(str(tmp_path))
    assert source.class_names == ["a_jump", "b_wave"]
    assert (source.num_train, source.num_eval) == (18, 2)
    _check_reads(source, _all_records(source.eval_records), *_expected_split(tree, True), rng)
    _check_reads(source, _all_records(source.train_records), *_expected_split(tree, False), rng)


def test_unreadable_video_file_is_named(tmp_path, rng):
    _write_tree(tmp_path, rng, _write_video_file)
    broken = tmp_path / "a_jump" / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=r"^video file .*broken\.mp4' cannot be read by OpenCV"):
        folders.folder_source(str(tmp_path))


def test_empty_or_broken_frame_folders_are_named(tmp_path, rng):
    _write_tree(tmp_path, rng, _write_frame_folder)
    empty = tmp_path / "b_wave" / "v99"
    os.makedirs(empty)
    with pytest.raises(ValueError, match=r"video folder .*v99' has no frame images"):
        folders.folder_source(str(tmp_path))
    (empty / "0000.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"frame .*0000\.png' of video folder .*does not decode"):
        folders.folder_source(str(tmp_path))


def test_tfds_video_dataset_by_name(rng):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2):
        source = sources.tfds_source("ucf101")
        assert (source.num_classes, source.num_train, source.num_eval) == (101, 2, 2)
        assert len(source.class_names) == 101
        expected = list(tfds.load("ucf101", split="test").as_numpy_iterator())
        records = _all_records(source.eval_records)
    videos = [example["video"] for example in expected]
    _check_reads(source, records, videos, [example["label"] for example in expected], rng)


def test_tfds_rejects_an_image_dataset():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match="tfds:mnist has features.*'video' and 'label'"):
            sources.tfds_source("mnist")


def _motion_class(video):
    """The class of the shift (dy, dx) that best maps frame 0 onto frame 1."""
    first, second = video[0].astype(np.float64), video[1].astype(np.float64)
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    errors = [np.square(np.roll(first, s, axis=(0, 1)) - second).sum() for s in shifts]
    dy, dx = shifts[int(np.argmin(errors))]
    return (dy != 0) * 2 + (dx != 0) if (dy, dx) != (0, 0) else 0


def test_moving_shapes_need_motion():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    videos, labels = moving_shapes.generate("validation", 400, frames=4, size=16)
    assert sorted(np.bincount(labels)) == [100] * 4
    # Two frames tell the class: the best shift between them (a NumPy motion estimate).
    motion = np.mean([_motion_class(v) == label for v, label in zip(videos, labels)])
    assert motion > 0.95
    # One frame does not: a classifier on single frames stays at chance (0.25),
    # and per-class single-frame brightness statistics agree.
    frames = videos[:, 1].reshape(len(videos), -1) / 255.0
    single = cross_val_score(LogisticRegression(max_iter=300), frames, labels, cv=4).mean()
    assert single < 0.35
    means = [frames[labels == c].mean() for c in range(4)]
    spread = frames.mean(1).std() / np.sqrt(100)
    assert np.ptp(means) < 4 * spread


def test_moving_shapes_source_reads_its_frames(rng):
    source = sources.moving_shapes_source(8, 4)
    assert source.class_names == list(moving_shapes.CLASS_NAMES)
    videos, labels = moving_shapes.generate("validation", 4)
    _check_reads(source, _all_records(source.eval_records), videos, labels, rng)
