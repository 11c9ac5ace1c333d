"""How clips are cut from a video: which frames, and which pixels.

The paper's §4.3 follows the I3D baseline of Wang et al. (2018): a clip is
``frames`` frames taken ``frame_stride`` apart (32 frames every 2nd frame,
or 64 consecutive ones).

* Training: a random temporal offset, the short side scaled to a random
  size in ``train_short_side`` (the paper's [256, 320]), a random
  ``crop_size`` square (224) and a horizontal flip.
* Validation during training: one clip from the middle of the video, the
  short side scaled to ``eval_short_side`` (256) and the centre crop.
* The final test ("standard 10-clip testing that averages softmax scores
  from 10 clips regularly sampled"): ``test_clips`` clips with evenly spaced
  offsets, each a centre crop or, with ``test_crops=3``, three crops along
  the long side; the softmax scores of all views of a video are averaged.

Frame indices come from tf-models-official's ``preprocess_ops_3d`` applied
to ``range(length)``, so only the frames a clip needs are decoded.  A video
shorter than a clip loops (index ``i`` reads frame ``i mod length``).
"""

import dataclasses

import tensorflow as tf
from official.vision.ops import preprocess_ops_3d

from gn_keras import _checks

# The paper's two clip settings at full Kinetics size (§4.3, Table 8).
PAPER_SIZES = {"crop_size": 224, "train_short_side": (256, 320), "eval_short_side": 256}
TEST_CROPS = (1, 3)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What a clip is; the defaults are small, CPU-sized clips."""

    frames: int = 8
    frame_stride: int = 1
    crop_size: int = 32
    train_short_side: tuple = (32, 40)
    eval_short_side: int = 32
    test_clips: int = 10
    test_crops: int = 1

    def __post_init__(self):
        for name in ("frames", "frame_stride", "crop_size", "eval_short_side", "test_clips"):
            _checks.check_int(getattr(self, name), f"`{name}`", minimum=1, where="ClipSpec")
        check_short_sides(self.crop_size, self.train_short_side, self.eval_short_side)
        _checks.check_choice(self.test_crops, "`test_crops`", TEST_CROPS, where="ClipSpec")

    @property
    def span(self):
        """Frames of the video one clip covers."""
        return (self.frames - 1) * self.frame_stride + 1

    @property
    def test_views(self):
        return self.test_clips * self.test_crops


def paper_spec(frames=32):
    """The paper's Kinetics clips: 32 frames every 2nd frame, or 64 consecutive."""
    if frames not in (32, 64):
        raise _checks.invalid("`frames`", frames, "32 or 64 (§4.3)", where="paper_spec")
    return ClipSpec(frames=frames, frame_stride=2 if frames == 32 else 1, **PAPER_SIZES)


def check_short_sides(crop_size, train_short_side, eval_short_side, flags=False):
    """Refuse short sides a ``crop_size`` crop does not fit in.

    ``train_short_side`` must be two integers LOW <= HIGH, both at least
    ``crop_size``, and ``eval_short_side`` at least ``crop_size``.  The
    error names the flags (``flags=True``: a ``FlagError``) or ClipSpec's
    fields.
    """
    spell = (lambda name: f"--{name}") if flags else (lambda name: f"`{name}`")
    crop = f"{'--' if flags else ''}crop_size={crop_size}"
    side = train_short_side
    pair = isinstance(side, (tuple, list)) and len(side) == 2
    if not (pair and all(map(_checks.is_integer, side)) and crop_size <= side[0] <= side[1]):
        shown = ",".join(map(str, side)) if isinstance(side, (tuple, list)) else side
        expected = f"two integers LOW,HIGH with {crop} <= LOW <= HIGH"
        raise _checks.invalid(spell("train_short_side"), shown, expected, where="ClipSpec")
    if eval_short_side < crop_size:
        raise _checks.invalid(
            spell("eval_short_side"), eval_short_side, f"at least {crop}", where="ClipSpec"
        )


def train_indices(length, spec, seed=None):
    """Frame indices of a training clip: a random offset, ``frames`` every ``frame_stride``."""
    return preprocess_ops_3d.sample_sequence(
        tf.range(length), spec.frames, True, spec.frame_stride, seed=seed
    )


def centre_indices(length, spec):
    """Frame indices of the validation clip, centred in the video."""
    return preprocess_ops_3d.sample_sequence(
        tf.range(length), spec.frames, False, spec.frame_stride
    )


def test_indices(length, spec):
    """``(test_clips, frames)`` indices of clips with evenly spaced offsets."""
    flat = preprocess_ops_3d.sample_linspace_sequence(
        tf.range(length), spec.test_clips, spec.frames, spec.frame_stride
    )
    return tf.reshape(flat, (spec.test_clips, spec.frames))


def _as_float(frames):
    return tf.cast(frames, tf.float32)  # 0-255 scale


def train_view(frames, spec, seed=None):
    """Random short-side scale, random ``crop_size`` square and flip of one clip."""
    low, high = spec.train_short_side
    short_side = tf.random.uniform((), low, high + 1, tf.int32, seed=seed)
    frames = preprocess_ops_3d.resize_smallest(_as_float(frames), short_side)
    frames = preprocess_ops_3d.crop_image(frames, spec.crop_size, spec.crop_size, random=True)
    frames = preprocess_ops_3d.random_flip_left_right(frames)
    return tf.ensure_shape(frames, (spec.frames, spec.crop_size, spec.crop_size, None))


def _centre_crops(frames, spec, crops):
    """``(crops, T, crop, crop, C)``: short side to ``eval_short_side``, 1 or 3 crops."""
    frames = preprocess_ops_3d.resize_smallest(_as_float(frames), spec.eval_short_side)
    frames = preprocess_ops_3d.crop_image(frames, spec.crop_size, spec.crop_size, num_crops=crops)
    return tf.reshape(frames, (crops, spec.frames, spec.crop_size, spec.crop_size, -1))


def centre_view(frames, spec, crops=1):
    """Short side to ``eval_short_side``, then the centre crop (or 3 crops stacked).

    Three crops run along the long side: its start, centre and end.
    """
    views = _centre_crops(frames, spec, crops)
    return views[0] if crops == 1 else views


def test_views(clips, spec):
    """``(test_views, T, crop, crop, C)`` from ``(test_clips, T, H, W, C)`` frames."""
    views = tf.map_fn(
        lambda clip: _centre_crops(clip, spec, spec.test_crops),
        clips,
        fn_output_signature=tf.TensorSpec(
            (spec.test_crops, spec.frames, spec.crop_size, spec.crop_size, None), tf.float32
        ),
    )
    return tf.reshape(views, (spec.test_views, spec.frames, spec.crop_size, spec.crop_size, -1))


def average_view_probabilities(logits):
    """Mean softmax over the views of each video: ``(N, V, K)`` logits → ``(N, K)``.

    The paper's 10-clip testing averages softmax scores, not logits (§4.3).
    """
    return tf.reduce_mean(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), axis=1)
