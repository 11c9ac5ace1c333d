"""The embedded video set: squares that move, told apart only by how they move.

Four classes: ``still``, ``horizontal`` (left or right), ``vertical`` (up or
down) and ``diagonal`` (any of the four diagonals).  Each video is a square
of random colour and size on a noisy background of random grey level,
starting at a uniformly random position and moving 1–2 pixels per frame on
a torus (it wraps around the edges).  Because the start is uniform and the
motion wraps, every single frame has the same distribution in every class:
only the change between frames tells the classes apart, so a model must use
time.  The classes are closed under a horizontal flip and under time
reversal, so the flip augmentation of training keeps labels valid.

Generated with NumPy from a fixed seed (the set does not move with
``--seed``), no download.
"""

import numpy as np

CLASS_NAMES = ("still", "horizontal", "vertical", "diagonal")
SPLIT_SEEDS = {"train": 1803, "validation": 8494}  # fixed, from the arXiv id
DEFAULT_SIZES = {"train": 512, "validation": 128}
FRAMES = 16
SIZE = 32
SPEEDS = (1, 2)
NOISE_STD = 12.0


def _directions(label, rng):
    """A (dy, dx) unit step of class ``label``, its sign drawn at random."""
    sign = rng.choice((-1, 1), size=2)
    steps = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}
    dy, dx = steps[label]
    return dy * sign[0], dx * sign[1]


def _video(label, rng, frames, size):
    side = int(rng.integers(size // 6, size // 3 + 1))
    colour = rng.integers(128, 256, 3)
    background = rng.uniform(20, 100)
    start = rng.integers(0, size, 2)
    dy, dx = _directions(label, rng)
    speed = int(rng.choice(SPEEDS))
    video = rng.normal(background, NOISE_STD, (frames, size, size, 3))
    for t in range(frames):
        top, left = (start + speed * t * np.array((dy, dx))) % size
        rows = (top + np.arange(side)) % size
        cols = (left + np.arange(side)) % size
        video[t, rows[:, None], cols[None, :]] = colour
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def generate(split, count=None, frames=FRAMES, size=SIZE):
    """``(videos uint8 (count, frames, size, size, 3), labels int64)``, classes balanced."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"moving_shapes: split must be one of {list(SPLIT_SEEDS)}, got {split!r}.")
    count = DEFAULT_SIZES[split] if count is None else count
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    labels = np.arange(count, dtype=np.int64) % len(CLASS_NAMES)
    rng.shuffle(labels)
    videos = np.stack([_video(int(label), rng, frames, size) for label in labels])
    return videos, labels
