"""Video folder trees: ``<data_dir>/<class>/<video>``, read inside tf.data.

Each video is either a folder of frame images (sorted by name; PNG, JPEG,
BMP, GIF) or a video file decoded with OpenCV (tf-models-official's
``opencv-python-headless``).  A tree holds one kind or the other.  Splits:
``train/`` and ``val/`` (or ``validation/``) subtrees, or else every 10th
video of a class held out, as for image folders.

Listing checks every video up front, so a bad one ends the run before
training with one line naming the file: a video file OpenCV cannot open or
read a frame from, or a frame folder with no images or whose first image
does not decode.  A class folder holding no video is refused the same way
(it would otherwise become a class no example teaches).  Frames beyond
what a file's header promises (a frame count that overestimates) repeat
the last frame read.
"""

import os

import cv2
import numpy as np
import tensorflow as tf

from gn_keras.train import sources as image_sources
from gn_keras.train.video.sources import VideoSource, decode_frames

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


def _frame_files(folder):
    return [
        os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if name.lower().endswith(image_sources.IMAGE_EXTENSIONS)
    ]


def video_file_length(path):
    """Frames in a video file, per its header; ``ValueError`` naming it if unreadable."""
    capture = cv2.VideoCapture(path)
    try:
        readable = capture.isOpened() and capture.read()[0]
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if readable else 0
    finally:
        capture.release()
    if count < 1:
        raise ValueError(f"video file {path!r} cannot be read by OpenCV (no decodable frame).")
    return count


def read_video_file(path, indices):
    """uint8 RGB frames at ``indices`` (any order, repeats allowed) of a video file."""
    path = path.item() if isinstance(path, np.ndarray) else path  # from tf.numpy_function
    path = path.decode() if isinstance(path, bytes) else str(path)
    wanted = set(int(i) for i in indices)
    frames, last, index = {}, None, 0
    capture = cv2.VideoCapture(path)
    try:
        while index <= max(wanted):
            ok, frame = capture.read()
            if not ok:
                break
            last = frame
            if index in wanted:
                frames[index] = frame
            index += 1
    finally:
        capture.release()
    if last is None:
        raise ValueError(f"video file {path!r} cannot be read by OpenCV.")
    picked = [frames.get(int(i), last) for i in indices]
    return np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in picked])


def _check_frame_folder(folder, frames):
    if not frames:
        raise ValueError(
            f"video folder {folder!r} has no frame images "
            f"({'/'.join(image_sources.IMAGE_EXTENSIONS)})."
        )
    if cv2.imread(frames[0]) is None:
        raise ValueError(f"frame {frames[0]!r} of video folder {folder!r} does not decode.")


def _list_videos(root):
    """``(classes, {class: [(entry, label)]}, kind)``; kind is "frames" or "files"."""
    classes = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    per_class, kinds = {}, set()
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        entries = []
        for item in sorted(os.listdir(folder)):
            path = os.path.join(folder, item)
            if os.path.isdir(path):
                frames = _frame_files(path)
                _check_frame_folder(path, frames)
                entries.append(((frames, len(frames)), label))
                kinds.add("frames")
            elif item.lower().endswith(VIDEO_EXTENSIONS):
                entries.append(((path, video_file_length(path)), label))
                kinds.add("files")
        if not entries:
            raise ValueError(
                f"class folder {folder!r} holds no videos ({'/'.join(VIDEO_EXTENSIONS)} files "
                "or folders of frames); add some or remove the folder."
            )
        per_class[name] = entries
    if len(kinds) > 1:
        raise ValueError(
            f"--data_dir={root!r} mixes frame folders and video files; use one kind per tree."
        )
    return classes, per_class, kinds.pop() if kinds else "frames"


def _splits(data_dir):
    for eval_name in ("val", "validation"):
        train_root, eval_root = (os.path.join(data_dir, n) for n in ("train", eval_name))
        if os.path.isdir(train_root) and os.path.isdir(eval_root):
            classes, train, kind = _list_videos(train_root)
            eval_classes, held_out, eval_kind = _list_videos(eval_root)
            if eval_classes != classes or eval_kind != kind:
                raise ValueError(
                    f"--data_dir={data_dir!r}: train/ and {eval_name}/ must have the same "
                    f"classes and kind of video, got {classes} and {eval_classes}."
                )
            return classes, sum(train.values(), []), sum(held_out.values(), []), kind
    classes, per_class, kind = _list_videos(data_dir)
    every = image_sources.FOLDER_VALIDATION_EVERY
    train, held_out = [], []
    for entries in per_class.values():
        for i, entry in enumerate(entries):
            (held_out if i % every == every - 1 else train).append(entry)
    return classes, train, held_out, kind


def _records_of(entries, kind):
    labels = np.array([label for _, label in entries], np.int64)
    lengths = np.array([length for (_, length), _ in entries], np.int32)
    if kind == "frames":
        refs = tf.ragged.constant([frames for (frames, _), _ in entries])
    else:
        refs = tf.constant([path for (path, _), _ in entries])

    def records(num_shards, shard_index, seed=None):
        videos = {"ref": refs, "length": lengths}
        dataset = tf.data.Dataset.from_tensor_slices((videos, labels))
        dataset = dataset.shard(num_shards, shard_index)
        return dataset.shuffle(len(labels), seed=seed) if seed is not None else dataset

    return records


def _read_files(video, indices):
    frames = tf.numpy_function(read_video_file, [video["ref"], indices], tf.uint8, stateful=False)
    return tf.ensure_shape(frames, (None, None, None, 3))


def _read_frame_folder(video, indices):
    return decode_frames(video["ref"], indices, load=tf.io.read_file)


def folder_source(data_dir):
    """A ``class/video`` tree of frame folders or video files."""
    if not os.path.isdir(data_dir):
        raise ValueError(
            f"--data_dir={data_dir!r} is not a directory; expected one sub-folder per "
            "class holding video files or folders of frames."
        )
    classes, train, held_out, kind = _splits(data_dir)
    if len(classes) < 2 or not train or not held_out:
        raise ValueError(
            f"--data_dir={data_dir!r} has {len(classes)} class folder(s), {len(train)} "
            f"training and {len(held_out)} validation videos; expected 2+ classes and "
            "10+ videos per class (or train/ and val/ trees)."
        )
    return VideoSource(
        f"folder:{data_dir}",
        len(classes),
        len(train),
        len(held_out),
        _records_of(train, kind),
        _records_of(held_out, kind),
        length=lambda video: video["length"],
        read=_read_files if kind == "files" else _read_frame_folder,
        class_names=classes,
    )
