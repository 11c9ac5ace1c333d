"""Clip sampling (§4.3): frame indices, crops and the 10-clip softmax average.

Expected indices are computed here from the rules in words: a clip is
``frames`` indices ``frame_stride`` apart, looping over a short video;
training starts anywhere the clip fits, validation in the middle, the test
clips at offsets ``i * M // (K - 1)`` spread over ``M = length - frames *
stride``.
"""

import numpy as np
import pytest
import tensorflow as tf

from gn_keras.train.video import clips


def _clip_at(offset, length, spec):
    return (offset + spec.frame_stride * np.arange(spec.frames)) % length


@pytest.mark.parametrize("length", [40, 31, 7])
def test_training_clips_start_anywhere_the_clip_fits(length):
    spec = clips.ClipSpec(frames=4, frame_stride=3)  # spans 10 frames
    fits = length - (spec.frames - 1) * spec.frame_stride
    offsets = range(fits) if fits > 0 else range(length)  # a short video loops
    expected = {tuple(_clip_at(o, length, spec)) for o in offsets}
    seen = {tuple(clips.train_indices(length, spec).numpy()) for _ in range(300)}
    assert seen == expected


@pytest.mark.parametrize("frames,stride", [(32, 2), (64, 1), (4, 3)])
@pytest.mark.parametrize("length", [300, 65, 20, 3])
def test_validation_clip_is_centred(frames, stride, length):
    spec = clips.ClipSpec(frames=frames, frame_stride=stride)
    offset = max(0, (length - frames * stride) // 2)
    np.testing.assert_array_equal(
        clips.centre_indices(length, spec), _clip_at(offset, length, spec)
    )


@pytest.mark.parametrize("frames,stride", [(32, 2), (64, 1), (4, 3)])
@pytest.mark.parametrize("length", [300, 250, 77, 64, 5])
def test_ten_test_clips_are_evenly_spaced(frames, stride, length):
    spec = clips.ClipSpec(frames=frames, frame_stride=stride)
    spread = max(0, length - frames * stride)
    expected = [_clip_at(i * spread // 9, length, spec) for i in range(10)]
    np.testing.assert_array_equal(clips.test_indices(length, spec), np.stack(expected))


def test_paper_settings():
    assert (clips.paper_spec(32).frames, clips.paper_spec(32).frame_stride) == (32, 2)
    assert (clips.paper_spec(64).frames, clips.paper_spec(64).frame_stride) == (64, 1)
    assert clips.paper_spec(32).span == 63
    assert clips.paper_spec().train_short_side == (256, 320)
    with pytest.raises(ValueError, match="frames"):
        clips.paper_spec(16)


def test_ten_clip_average_is_the_mean_softmax(rng):
    logits = rng.normal(scale=3, size=(3, 10, 7))
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    expected = (shifted / shifted.sum(-1, keepdims=True)).mean(1)
    got = clips.average_view_probabilities(tf.constant(logits, tf.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def _windows(frames, size):
    """Every size×size window of ``frames`` and of its mirror image."""
    height, width = frames.shape[1:3]
    for source in (frames, frames[:, :, ::-1]):
        for top in range(height - size + 1):
            for left in range(width - size + 1):
                yield source[:, top : top + size, left : left + size]


def test_training_view_is_a_crop_or_its_mirror(rng):
    spec = clips.ClipSpec(frames=3, crop_size=8, train_short_side=(10, 10), eval_short_side=10)
    frames = rng.integers(0, 256, (3, 10, 14, 3)).astype(np.uint8)  # short side already 10
    for _ in range(5):
        view = clips.train_view(frames, spec).numpy()
        assert view.shape == (3, 8, 8, 3)
        assert any(np.array_equal(view, w) for w in _windows(frames.astype(np.float32), 8))


def test_training_view_scales_the_short_side_into_its_range():
    spec = clips.ClipSpec(frames=2, crop_size=4, train_short_side=(6, 9), eval_short_side=6)
    # A ramp 0..23 across 12x24 frames: after scaling the short side to s,
    # neighbouring columns differ by 24 / (2 s), whatever the crop or flip.
    ramp = np.broadcast_to(np.arange(24, dtype=np.float32)[None, None, :, None], (2, 12, 24, 3))
    seen = set()
    for _ in range(80):
        view = clips.train_view(tf.constant(ramp), spec).numpy()
        step = np.median(np.abs(np.diff(view[0, 1, :, 0])))
        seen.add(round(24 / (2 * step)))
    assert seen == {6, 7, 8, 9}


def test_centre_and_three_crop_views(rng):
    spec = clips.ClipSpec(frames=2, crop_size=6, train_short_side=(6, 6), eval_short_side=6)
    frames = rng.integers(0, 256, (2, 6, 15, 3)).astype(np.uint8)
    centre = clips.centre_view(frames, spec).numpy()
    np.testing.assert_array_equal(centre, frames[:, :, 4:10])
    three = clips.centre_view(frames, spec, crops=3).numpy()
    assert three.shape == (3, 2, 6, 6, 3)
    for view, left in zip(three, (0, 4, 9)):  # left, centre, right along the long side
        np.testing.assert_array_equal(view, frames[:, :, left : left + 6])


def test_test_views_stack_clips_and_crops(rng):
    spec = clips.ClipSpec(frames=2, crop_size=6, train_short_side=(6, 6), eval_short_side=6)
    spec3 = clips.ClipSpec(**{**spec.__dict__, "test_crops": 3, "test_clips": 4})
    videos = rng.integers(0, 256, (4, 2, 15, 6, 3)).astype(np.uint8)  # portrait frames
    views = clips.test_views(tf.constant(videos), spec3).numpy()
    assert views.shape == (12, 2, 6, 6, 3)
    np.testing.assert_array_equal(views[3 * 2 + 2], videos[2][:, 9:15])  # clip 2, bottom crop


@pytest.mark.parametrize(
    "field,value", [("frames", 0), ("frame_stride", True), ("test_crops", 2), ("crop_size", 64)]
)
def test_clip_spec_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field if field != "crop_size" else "train_short_side"):
        clips.ClipSpec(**{field: value})
