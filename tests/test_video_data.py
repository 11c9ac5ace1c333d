"""The video input pipeline: seeded epoch order, resume skips, padded evaluation.

Uses the embedded moving-shapes set with small clips; expected labels come
from the source's own records, read here without the pipeline.
"""

import numpy as np
import pytest
import tensorflow as tf

from gn_keras._checks import FlagError
from gn_keras.train.video import clips, data, sources
from gn_keras.train.video import config as video_config
from gn_keras.train.video import task as video_task

SPEC = clips.ClipSpec(
    frames=4,
    frame_stride=2,
    crop_size=16,
    train_short_side=(16, 20),
    eval_short_side=16,
    test_clips=3,
)


@pytest.fixture(scope="module")
def pipeline():
    source = sources.moving_shapes_source(num_train=24, num_eval=10)
    return data.VideoPipeline(
        source, SPEC, batch_size_per_replica=4, seed=7, test_batch_size_per_replica=3
    )


def _labels(dataset_fn, batches):
    context = tf.distribute.InputContext()
    return np.concatenate([b[1].numpy() for b in dataset_fn(context).take(batches)])


def test_epoch_order_depends_on_seed_and_epoch_only(pipeline):
    first = _labels(pipeline.train_dataset_fn(3), 6)
    assert np.array_equal(first, _labels(pipeline.train_dataset_fn(3), 6))
    assert not np.array_equal(first, _labels(pipeline.train_dataset_fn(4), 6))
    resumed = _labels(pipeline.train_dataset_fn(3, skip_steps=2), 4)
    np.testing.assert_array_equal(resumed, first[8:])
    # An epoch is a permutation of the training videos.
    _, expected = sources.moving_shapes.generate("train", 24)
    assert sorted(first) == sorted(expected)


def test_training_batches_are_normalised_clips(pipeline):
    clip, label = next(iter(pipeline.train_dataset_fn(0)(tf.distribute.InputContext())))
    assert clip.shape == (4, 4, 16, 16, 3) and label.dtype == tf.int64
    # (pixels - mean) / std of 0-255 pixels stays within these bounds.
    assert -2.2 < float(tf.reduce_min(clip)) and float(tf.reduce_max(clip)) < 2.7


def _eval_batches(dataset_fn, steps):
    return list(dataset_fn(steps)(tf.distribute.InputContext()))


@pytest.mark.parametrize("kind", ["eval", "test"])
def test_evaluation_counts_every_video_once(pipeline, kind):
    # 10 videos: 3 batches of 4 clips, or 4 test batches of 3 videos.
    steps = 3 if kind == "eval" else 4
    if kind == "test":
        assert pipeline.test_steps(1) == steps
    fn = pipeline.eval_dataset_fn if kind == "eval" else pipeline.test_dataset_fn
    batches = _eval_batches(fn, steps)
    weights = np.concatenate([b[2].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(weights, [1.0] * 10 + [0.0] * 2)
    _, expected = sources.moving_shapes.generate("validation", 10)
    np.testing.assert_array_equal(labels[:10], expected)
    expected_shape = (3, 3, 4, 16, 16, 3) if kind == "test" else (4, 4, 16, 16, 3)
    assert batches[0][0].shape == expected_shape


def test_validation_clip_is_the_centre_clip(pipeline):
    videos, _ = sources.moving_shapes.generate("validation", 10)
    clip = _eval_batches(pipeline.eval_dataset_fn, 1)[0][0][0].numpy()
    start = (16 - 4 * 2) // 2
    frames = videos[0][start : start + 8 : 2].astype(np.float64)
    # 32x32 -> 16x16 bilinear (half-pixel centres) is the mean of each 2x2 block.
    frames = frames.reshape(4, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    expected = (frames - np.array(pipeline.mean)) / np.array(pipeline.std)
    np.testing.assert_allclose(clip, expected, rtol=1e-5, atol=1e-5)


def test_preprocessing_and_steps(pipeline):
    prep = pipeline.preprocessing()
    assert prep["clip_shape"] == [4, 16, 16]
    assert (prep["frames"], prep["frame_stride"], prep["num_classes"]) == (4, 2, 4)


def test_a_batch_larger_than_the_training_videos_names_the_flag(pipeline):
    task = video_task.VideoTask(SPEC, source=pipeline.source)
    config = video_config.make_config(batch_size_per_replica=32)
    with pytest.raises(FlagError, match="--batch_size_per_replica=32 gives a global batch of 32, "):
        task.make_data(config, tf.distribute.get_strategy())
    config = video_config.make_config(batch_size_per_replica=8)
    assert task.make_data(config, tf.distribute.get_strategy()).steps_per_epoch == 3
