"""Unreadable files in a --dataset=folder tree are found when it is scanned (issue 12, item 4).

The tree holds good PNG and JPEG files, a truncated JPEG and a text file
named .png; TensorFlow's own decoder is the reference for which files are
bad.  ``skip`` drops exactly those with a warning naming them, ``fail``
refuses in one line naming them; ``--channels=1`` reads RGB files as grey.
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from absl import logging
from PIL import Image

from gn_keras.train import image_files, sources

GOOD_PER_CLASS = 10


def _image_bytes(rng, kind):
    pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path, rng):
    root = tmp_path / "shapes"
    for name in ("circle", "square"):
        (root / name).mkdir(parents=True)
        for i in range(GOOD_PER_CLASS):
            kind = "PNG" if i % 2 else "JPEG"
            (root / name / f"{i:02d}.{kind.lower()}").write_bytes(_image_bytes(rng, kind))
    whole = _image_bytes(rng, "JPEG")
    bad = {
        root / "circle" / "cut.jpg": whole[: len(whole) * 3 // 5],
        root / "square" / "notes.png": b"shopping list: milk, eggs\n" * int(rng.integers(1, 5)),
    }
    for path, data in bad.items():
        path.write_bytes(data)
    return root, sorted(str(p) for p in bad)


def _decodes(path):
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        return False
    return True


def test_scan_finds_exactly_what_tensorflow_cannot_decode(tree):
    root, bad = tree
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert sorted(p for p in paths if not _decodes(p)) == bad  # the reference
    found = image_files.unreadable(paths)
    assert sorted(found) == bad
    assert "truncated" in found[bad[0]] or "damaged" in found[bad[0]]
    assert found[bad[1]] == "not an image"


def test_skip_drops_them_with_a_warning_naming_them(tree, monkeypatch):
    root, bad = tree
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    source = sources.folder_source(str(root), on_bad_image="skip")
    assert source.num_train + source.num_eval == 2 * GOOD_PER_CLASS
    assert len(warnings) == 1
    assert "Skipping 2 unreadable image file(s)" in warnings[0]
    assert "circle/cut.jpg" in warnings[0] and "square/notes.png (not an image)" in warnings[0]
    for records in (source.train_records(1, 0, seed=3), source.eval_records(1, 0)):
        for encoded, _ in records:  # every record left decodes
            tf.io.decode_image(encoded, channels=3, expand_animations=False)


def test_fail_names_them_in_one_line(tree):
    root, _ = tree
    with pytest.raises(ValueError) as caught:
        sources.folder_source(str(root), on_bad_image="fail")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--data_dir={root} has 2 unreadable image file(s): circle/cut.jpg")
    assert "square/notes.png (not an image)" in message and "--on_bad_image=skip" in message


def test_channels_1_reads_rgb_files_as_grey(tree):
    root, _ = tree
    source = sources.folder_source(str(root), channels=1)
    assert source.channels == 1 and len(source.mean) == len(source.std) == 1
    path = sorted((root / "circle").glob("*.png"))[0]
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float64)
    grey = tf.io.decode_image(tf.io.read_file(str(path)), channels=1).numpy()[..., 0]
    # ITU-R 601 luma, the weights TensorFlow's rgb_to_grayscale uses.
    want = rgb @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(grey, want, atol=1.01)
