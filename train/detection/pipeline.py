"""The detection input pipeline: decoded examples -> padded, batched tensors.

Two sources give the same decoded form, that of TF Model Garden's
``TfExampleDecoder`` (``image`` uint8 [H, W, 3], ``groundtruth_boxes``
[N, 4] normalized ``ymin, xmin, ymax, xmax``, ``groundtruth_classes``,
``groundtruth_is_crowd``, ``groundtruth_instance_masks`` [N, H, W]):

- :func:`coco_examples`: a :class:`~gn_keras.train.detection.coco.CocoSet`
  (COCO JSON + image folder, or the generated shapes set); masks are
  decoded by pycocotools on the host;
- :func:`tfrecord_examples`: TFRecords in TF Model Garden's detection
  format, read with its decoder; COCO category ids become classes 1..K.

:func:`parse_train` and :func:`parse_eval` then resize each image keeping
its aspect ratio (short side ``short_side``, long side at most
``max_side``), normalize it ((pixels − mean) / std on the 0–255 scale),
pad it to the model's fixed ``image_size`` (a multiple of the backbone
stride), and for training: optionally flip it, drop crowd and empty boxes,
crop each instance mask to its box at ``mask_crop_size`` (the form
``crop_mask_in_target_box`` resamples into RoIs), label the RPN anchors,
and pad the instances to ``max_instances`` with -1.
"""

import dataclasses

import numpy as np
import tensorflow as tf
from official.vision.dataloaders import tf_example_decoder
from official.vision.ops import box_ops

from gn_keras import _checks
from gn_keras import preprocessing as preprocessing_lib
from gn_keras.models.detection import ops
from gn_keras.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from gn_keras.train.detection import coco

# Graph code already (TF Model Garden's labeler uses explicit tf.cond);
# AutoGraph converting it again for every tf.data map only costs time.
graph_code = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass
class InputConfig:
    """How images and targets are prepared (one field per future flag)."""

    short_side: int = 800
    max_side: int = 1333
    max_instances: int = 100
    mask_crop_size: int = 112
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    horizontal_flip: bool = True

    def validate(self, image_size):
        for field in ("short_side", "max_side", "max_instances", "mask_crop_size"):
            _checks.check_int(getattr(self, field), f"`{field}`", minimum=1, where="InputConfig")
        if self.max_side > max(image_size) or self.short_side > min(image_size):
            raise ValueError(
                f"InputConfig: short_side={self.short_side}, max_side={self.max_side} must fit "
                f"the model's padded image_size={tuple(image_size)}."
            )
        return self


def coco_examples(coco_set, indices=None):
    """A dataset of decoded examples of ``coco_set.images[indices]``."""
    records = coco_set.images
    indices = np.arange(len(records)) if indices is None else np.asarray(indices)

    def load(index):
        record = records[int(index)]
        annotations = record.annotations
        boxes = np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4)
        x, y, w, h = boxes.T
        scale = np.array([record.height, record.width] * 2, np.float32)
        normalized = np.stack([y, x, y + h, x + w], axis=1) / scale
        return (
            np.int64(record.image_id),
            record.path,
            np.clip(normalized, 0.0, 1.0).astype(np.float32),
            np.array([a["label"] for a in annotations], np.int64),
            np.array([a["iscrowd"] for a in annotations], bool),
            coco.instance_masks(record).astype(np.float32),
        )

    @graph_code
    def decode(index):
        types = (tf.int64, tf.string, tf.float32, tf.int64, tf.bool, tf.float32)
        image_id, path, boxes, classes, crowd, masks = tf.numpy_function(load, [index], types)
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return {
            "source_id": tf.reshape(image_id, []),
            "image": image,
            "groundtruth_boxes": tf.reshape(boxes, [-1, 4]),
            "groundtruth_classes": tf.reshape(classes, [-1]),
            "groundtruth_is_crowd": tf.reshape(crowd, [-1]),
            "groundtruth_instance_masks": tf.reshape(
                masks, tf.concat([[-1], tf.shape(image)[:2]], 0)
            ),
        }

    return tf.data.Dataset.from_tensor_slices(indices).map(decode)


def tfrecord_examples(file_pattern, category_ids):
    """Decoded examples of TF Model Garden detection TFRecords.

    ``category_ids`` lists the category id of class 1, 2, ...; instances of
    other ids are dropped. ``image/source_id`` must hold the integer image id.
    """
    files = tf.io.gfile.glob(file_pattern)
    if not files:
        raise ValueError(f"tfrecord_examples: no files match {file_pattern!r}.")
    decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(category_ids), tf.int64),
            tf.range(1, len(category_ids) + 1, dtype=tf.int64),
        ),
        default_value=-1,
    )

    @graph_code
    def decode(serialized):
        example = decoder.decode(serialized)
        labels = table.lookup(tf.cast(example["groundtruth_classes"], tf.int64))
        known = labels > 0
        return {
            "source_id": tf.strings.to_number(example["source_id"], tf.int64),
            "image": example["image"],
            "groundtruth_boxes": tf.boolean_mask(example["groundtruth_boxes"], known),
            "groundtruth_classes": tf.boolean_mask(labels, known),
            "groundtruth_is_crowd": tf.boolean_mask(example["groundtruth_is_crowd"], known),
            "groundtruth_instance_masks": tf.boolean_mask(
                example["groundtruth_instance_masks"], known
            ),
        }

    return tf.data.TFRecordDataset(files).map(decode)


def count_tfrecord_examples(file_pattern, category_ids):
    """Examples in the TFRecords of ``file_pattern``, each decoded in full once, file by file.

    A damaged file (``DataLossError``) or an example that does not decode
    (its image, its masks) raises a one-line ``ValueError`` naming the file,
    before training starts instead of in the middle of an epoch.
    """
    total = 0
    for path in sorted(tf.io.gfile.glob(file_pattern)):
        try:
            total += int(tfrecord_examples(path, category_ids).reduce(0, lambda n, _: n + 1))
        except tf.errors.OpError as error:
            reason = (error.message.strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(
                f"{path}: cannot read its detection examples (a damaged TFRecord or an example "
                f"that does not decode): {type(error).__name__}: {reason}"
            ) from None
    if not total:
        raise ValueError(f"{file_pattern}: the TFRecords matching it hold no examples.")
    return total


def resize_and_pad(image, input_config, image_size):
    """Resized, normalized, padded image; its valid size and scale factor."""
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(
        input_config.short_side / tf.reduce_min(size), input_config.max_side / tf.reduce_max(size)
    )
    new_size = tf.cast(tf.round(size * scale), tf.int32)
    new_size = tf.minimum(new_size, tf.constant(list(image_size), tf.int32))
    resized = tf.image.resize(tf.cast(image, tf.float32), new_size)
    normalized = preprocessing_lib.normalize(resized, input_config.mean, input_config.std)
    padded = tf.image.pad_to_bounding_box(normalized, 0, 0, image_size[0], image_size[1])
    return padded, new_size, scale


@graph_code
def parse_eval(example, input_config, image_size):
    """What evaluation and prediction need of one decoded example."""
    images, image_sizes, scale = resize_and_pad(example["image"], input_config, image_size)
    return {
        "images": images,
        "image_sizes": image_sizes,
        "image_id": example["source_id"],
        "scale": scale,
        "original_size": tf.shape(example["image"])[:2],
    }


def _pad_rows(tensor, rows, value):
    extra = rows - tf.shape(tensor)[0]
    padding = [[0, extra]] + [[0, 0]] * (len(tensor.shape) - 1)
    return tf.pad(tensor, padding, constant_values=value)


def _crop_masks(masks, normalized_boxes, input_config):
    """Each instance mask cropped to its box at ``mask_crop_size``: ``[max_instances, S, S]``.

    Only the first ``max_instances`` are kept (as the ground truth is), and
    the crop always takes that many boxes, zero-padded.  With a data-dependent
    count, grappler's cost model cannot price CropAndResize and prints a
    1.3 KB warning each time an epoch's pipeline is built.
    """
    rows = input_config.max_instances
    count = tf.minimum(tf.shape(masks)[0], rows)
    masks = _pad_rows(masks[:count], rows, 0.0)
    boxes = tf.ensure_shape(_pad_rows(normalized_boxes[:count], rows, 0.0), [rows, 4])
    size = [input_config.mask_crop_size] * 2
    return tf.image.crop_and_resize(masks[..., None], boxes, tf.range(rows), size)[..., 0]


@graph_code
def parse_train(example, input_config, model_config, anchors, seed=None):
    """One training example: image, padded ground truth and RPN targets."""
    inputs = parse_eval(example, input_config, model_config.image_size)
    keep = tf.logical_not(example["groundtruth_is_crowd"])
    normalized = tf.boolean_mask(example["groundtruth_boxes"], keep)
    classes = tf.boolean_mask(example["groundtruth_classes"], keep)
    masks = tf.boolean_mask(example["groundtruth_instance_masks"], keep)
    valid = tf.cast(inputs["image_sizes"], tf.float32)
    boxes = box_ops.denormalize_boxes(normalized, valid)
    non_empty = box_ops.get_non_empty_box_indices(boxes)
    boxes, normalized = tf.gather(boxes, non_empty), tf.gather(normalized, non_empty)
    classes, masks = tf.gather(classes, non_empty), tf.gather(masks, non_empty)
    masks = _crop_masks(masks, normalized, input_config)
    images = inputs["images"]
    if input_config.horizontal_flip:
        flip = (
            tf.random.stateless_uniform([], seed=seed) < 0.5
            if seed is not None
            else (tf.random.uniform([]) < 0.5)
        )
        images, boxes, masks = tf.cond(
            flip,
            lambda: _flip(images, boxes, masks, valid[1]),
            lambda: (images, boxes, masks),
        )
    count = tf.minimum(tf.shape(boxes)[0], input_config.max_instances)
    boxes, classes, masks = boxes[:count], classes[:count], masks[:count]
    score_targets, box_targets = ops.rpn_targets(model_config, anchors, boxes, classes)
    rows = input_config.max_instances
    inputs.update(
        images=images,
        gt_boxes=_pad_rows(boxes, rows, -1.0),
        gt_classes=_pad_rows(tf.cast(classes, tf.int32), rows, -1),
        gt_masks=_pad_rows(masks, rows, 0.0),
        rpn_score_targets=dict(score_targets),
        rpn_box_targets=dict(box_targets),
    )
    return inputs


def _flip(images, boxes, masks, valid_width):
    """Mirror the valid area of the padded image, its boxes and masks."""
    valid = tf.cast(valid_width, tf.int32)
    mirrored = tf.reverse(images[:, :valid], axis=[1])
    images = tf.concat([mirrored, images[:, valid:]], axis=1)
    images = tf.ensure_shape(images, [None, None, 3])
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    boxes = tf.stack([ymin, valid_width - xmax, ymax, valid_width - xmin], axis=1)
    return images, boxes, tf.reverse(masks, axis=[2])


def batched(examples, parse, batch_size, drop_remainder):
    """Parse, batch and prefetch."""
    return (
        examples.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=drop_remainder)
        .prefetch(tf.data.AUTOTUNE)
    )
