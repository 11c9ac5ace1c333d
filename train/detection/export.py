"""The serving SavedModel of a Mask R-CNN: uint8 images in, detections in image pixels out.

Signature ``serving_default``:

* input ``images``: uint8 ``[N, H, W, 3]`` with any batch and any size (one
  size per batch);
* inside: the evaluation pipeline's resize (short side, long-side cap,
  :func:`gn_keras.train.detection.pipeline.resize_and_pad`), normalization
  and padding to the model's ``image_size``, the model, and boxes divided by
  the resize scale and clipped to the image;
* outputs, per image: ``boxes`` float32 ``[N, D, 4]`` (ymin, xmin, ymax, xmax
  in input-image pixels), ``classes`` int32 ``[N, D]`` (COCO category ids),
  ``scores`` ``[N, D]``, ``masks`` float32 ``[N, D, 28, 28]`` (each box's
  mask probabilities in box coordinates: paste with
  ``official.vision.ops.mask_ops.paste_instance_masks_v2`` or resize into
  the box and threshold at 0.5) and ``num_detections`` int32 ``[N]``; rows
  from ``num_detections`` on are padding (zeros).

Traced under :func:`gn_keras.portable.portable_ops`, so the graph holds
standard TensorFlow ops only.  ``assets.extra/preprocessing.json`` carries
the preprocessing and the category names.  :func:`verify_saved_model`
reloads the SavedModel and compares it with the Keras model run on each
image through the evaluation pipeline: per image as sets of detections
(:mod:`gn_keras.train.detection.match`: near-ties may reorder or swap, a
confident detection may not), within ``gn_keras.export.default_tolerance``
of the model's compute precision.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from gn_keras import export as image_export
from gn_keras import portable
from gn_keras.train.detection import match, pipeline

SERVING_SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUTS = ("boxes", "classes", "scores", "masks", "num_detections")
CHECK_SEED = 20170320  # Mask R-CNN's arXiv date: any fixed seed will do


def _input_config(preprocessing):
    return pipeline.InputConfig(
        short_side=preprocessing["short_side"],
        max_side=preprocessing["max_side"],
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
    )


class _Serving:
    def __init__(self, model, preprocessing):
        self.model = model
        self.input_config = _input_config(preprocessing)
        self.image_size = tuple(model.config.image_size)
        self.category_ids = np.asarray(preprocessing["category_ids"], np.int32)

    def _prepare(self, image):
        padded, size, scale = pipeline.resize_and_pad(image, self.input_config, self.image_size)
        return padded, size, scale

    def detect(self, images):
        padded, sizes, scales = tf.map_fn(
            self._prepare,
            images,
            fn_output_signature=(tf.float32, tf.int32, tf.float32),
        )
        found = self.model({"images": padded, "image_sizes": sizes}, training=False)
        return finish(found, scales, tf.shape(images)[1:3], self.category_ids)


def finish(found, scales, image_size, category_ids):
    """Model detections → boxes in input pixels, category ids, zeroed padding rows."""
    count = tf.cast(found["num_detections"], tf.int32)
    rows = tf.range(tf.shape(found["scores"])[1])[None, :] < count[:, None]
    height, width = (tf.cast(image_size[i], tf.float32) for i in (0, 1))
    boxes = found["boxes"] / scales[:, None, None]
    boxes = tf.minimum(tf.maximum(boxes, 0.0), tf.stack([height, width, height, width]))
    index = tf.maximum(tf.cast(found["classes"], tf.int32) - 1, 0)
    classes = tf.where(rows, tf.gather(tf.constant(category_ids), index), 0)
    keep = tf.cast(rows, tf.float32)
    return {
        "boxes": boxes * keep[..., None],
        "classes": classes,
        "scores": tf.cast(found["scores"], tf.float32) * keep,
        "masks": tf.cast(found["masks"], tf.float32) * keep[..., None, None],
        "num_detections": count,
    }


@portable.portable_ops()  # never the compiled GN kernels in an export
def export_detection_saved_model(model, export_dir, preprocessing, verify=True, tolerance=None):
    """Write ``model`` (a ``MaskRCNN``) as a serving SavedModel; return the check report.

    ``tolerance``: of the check (``verify_saved_model``).
    """
    serving = _Serving(model, preprocessing)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_SIGNATURE,
        serving.detect,
        [tf.TensorSpec((None, None, None, 3), tf.uint8, name=INPUT_NAME)],
    )
    archive.write_out(os.fspath(export_dir), verbose=False)
    image_export.write_extras(export_dir, preprocessing)
    if not verify:
        return {}
    return verify_saved_model(export_dir, model, preprocessing, tolerance=tolerance)


def check_images(preprocessing, batch_size=2, seed=CHECK_SEED):
    """A fixed uint8 batch at an odd size, so the resize and the scale matter."""
    height, width = preprocessing["image_size"]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch_size, height - 5, width // 2 + 3, 3), dtype=np.uint8)


def keras_reference(model, preprocessing, images):
    """The Keras model on each image through the evaluation pipeline, as the export reports."""
    input_config = _input_config(preprocessing)
    parsed = [
        pipeline.parse_eval(
            {"image": tf.constant(image), "source_id": 0},
            input_config,
            tuple(model.config.image_size),
        )
        for image in images
    ]
    found = model(
        {
            "images": tf.stack([p["images"] for p in parsed]),
            "image_sizes": tf.stack([p["image_sizes"] for p in parsed]),
        },
        training=False,
    )
    scales = tf.stack([p["scale"] for p in parsed])
    ids = np.asarray(preprocessing["category_ids"], np.int32)
    outputs = finish(found, scales, tf.shape(images)[1:3], ids)
    return {name: np.asarray(value) for name, value in outputs.items()}


def _one_image(outputs, image):
    count = int(outputs["num_detections"][image])
    return {name: np.asarray(outputs[name][image][:count]) for name in OUTPUTS[:-1]}


def compare(
    artefact,
    got,
    want,
    tolerance=image_export.DEFAULT_TOLERANCE,
    *,
    score_threshold=None,
    nms_iou=None,
):
    """Largest differences over tight pairs; ``ExportMismatchError`` naming the first break.

    Detections are compared per image as sets (``train.detection.match``).  Boxes are
    allowed ``tolerance`` relative to the largest Keras coordinate (at least
    1 px), scores and mask probabilities ``tolerance``: the relative rule of
    ``gn_keras.export.compare``.  ``score_threshold`` and ``nms_iou``
    (the model's ``test_*`` settings) let near-ties at the threshold and
    between boxes NMS would suppress differ; None excuses neither.
    """
    image_export.check_outputs(artefact, got, want)
    scale = max(1.0, float(np.max(np.abs(want["boxes"]), initial=0.0)))
    rules = match.MatchRules(
        score=tolerance,
        box_px=tolerance * scale,
        mask=tolerance,
        capacity=np.shape(want["scores"])[1],
        score_threshold=score_threshold,
        nms_iou=nms_iou,
    )
    report = {"boxes": 0.0, "scores": 0.0, "masks": 0.0}
    for image in range(len(want["num_detections"])):
        problem, errors = match.match_image(_one_image(got, image), _one_image(want, image), rules)
        if problem is not None:
            raise image_export.ExportMismatchError(f"{artefact}: image {image}: {problem}.")
        report = {name: max(report[name], errors[name]) for name in report}
    return report


def verify_saved_model(export_dir, model, preprocessing, images=None, tolerance=None):
    """Reload the SavedModel and compare its ``serving_default`` with Keras on ``images``.

    ``tolerance``: default ``gn_keras.export.default_tolerance(model)``,
    the precision-aware rule of every export (a mixed_bfloat16 model's
    scores legitimately differ by ~1e-3).
    """
    images = check_images(preprocessing) if images is None else images
    tolerance = image_export.default_tolerance(model) if tolerance is None else tolerance
    want = keras_reference(model, preprocessing, images)
    loaded = tf.saved_model.load(os.fspath(export_dir))
    got = loaded.signatures[SERVING_SIGNATURE](**{INPUT_NAME: tf.constant(images)})
    got = {name: value.numpy() for name, value in got.items()}
    config = model.config
    return compare(
        f"{export_dir} [{SERVING_SIGNATURE}]",
        got,
        want,
        tolerance,
        score_threshold=config.test_score_threshold,
        nms_iou=config.test_nms_iou,
    )
