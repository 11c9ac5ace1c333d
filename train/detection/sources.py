"""Where detection examples come from: COCO JSON + images, the generated shapes set, TFRecords.

Each builder returns a :class:`DetectionSource`: the split's decoded
examples (:mod:`.pipeline`'s form) by shard and seed, their count, the
categories, and for evaluation the COCO ground truth.  ``DetectionTask``
(:mod:`.task`) batches them by the shared rules of ``gn_keras.train.data``.
"""

import dataclasses

import numpy as np
from absl import logging
from pycocotools import mask as mask_utils

from gn_keras.train.detection import coco, pipeline, shapes


@dataclasses.dataclass
class DetectionSource:
    """Decoded examples of one split and what evaluation needs about them.

    ``examples(seed, num_shards, shard)`` returns this shard's decoded
    examples (:mod:`.pipeline`'s form), shuffled by ``seed`` unless it is
    None.
    """

    examples: object
    num_examples: int
    category_ids: list
    category_names: list
    ground_truth: dict | None = None


def coco_source(annotation_file, image_dir, strict=False, training=False, on_bad_image="skip"):
    """A COCO JSON + image folder; training keeps only images with objects."""
    data = coco.read_coco(annotation_file, image_dir, strict=strict, on_bad_image=on_bad_image)
    if training:
        usable = [r for r in data.images if any(not a["iscrowd"] for a in r.annotations)]
        if len(usable) < len(data.images):
            # As Detectron does: an image without an object teaches the heads nothing.
            logging.warning(
                "%s: %d of %d images have no usable (non-crowd) object and are left out of "
                "training.",
                annotation_file,
                len(data.images) - len(usable),
                len(data.images),
            )
        data.images = usable
    if not data.images:
        raise ValueError(f"{annotation_file}: no usable images in {image_dir}.")

    def examples(seed, num_shards, shard):
        order = np.arange(len(data.images))
        if seed is not None:
            order = np.random.default_rng(seed).permutation(order)
        return pipeline.coco_examples(data, order[shard::num_shards])

    return DetectionSource(
        examples, len(data.images), data.category_ids, data.category_names, data.ground_truth
    )


def shapes_source(directory, num_images, image_size=64, seed=0, training=False, replace=True):
    """The generated shapes set in ``directory`` (``shapes.ensure_shapes``), read back."""
    path = shapes.ensure_shapes(directory, num_images, image_size, seed=seed, replace=replace)
    return coco_source(path, f"{directory}/{shapes.IMAGE_DIR}", training=training)


def ground_truth_from_examples(dataset, num_shards=1):
    """A COCO ground-truth dict from decoded examples (e.g. TFRecords)."""
    images, annotations = [], []
    for example in dataset:
        height, width = (int(v) for v in example["image"].shape[:2])
        image_id = int(example["source_id"])
        images.append({"id": image_id, "height": height, "width": width})
        boxes = example["groundtruth_boxes"].numpy() * [height, width, height, width]
        masks = example["groundtruth_instance_masks"].numpy() > 0.5
        for box, label, crowd, mask in zip(
            boxes,
            example["groundtruth_classes"].numpy(),
            example["groundtruth_is_crowd"].numpy(),
            masks,
        ):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            y0, x0, y1, x1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(mask.sum()),
                    "segmentation": rle,
                    "iscrowd": int(crowd),
                }
            )
    return images, annotations


def tfrecord_source(file_pattern, category_ids, category_names=None, evaluation=False):
    """TF Model Garden detection TFRecords; ``evaluation`` builds the ground truth."""
    every = pipeline.tfrecord_examples(file_pattern, category_ids)  # refuses a pattern of no files
    count = pipeline.count_tfrecord_examples(file_pattern, category_ids)
    names = list(category_names or [str(i) for i in category_ids])
    ground_truth = None
    if evaluation:
        images, annotations = ground_truth_from_examples(every)
        # Decoded classes are 1..K; the ground truth speaks COCO ids.
        for annotation in annotations:
            annotation["category_id"] = int(category_ids[annotation["category_id"] - 1])
        categories = [{"id": int(i), "name": n} for i, n in zip(category_ids, names)]
        ground_truth = {"images": images, "annotations": annotations, "categories": categories}

    def examples(seed, num_shards, shard):
        dataset = pipeline.tfrecord_examples(file_pattern, category_ids).shard(num_shards, shard)
        return dataset if seed is None else dataset.shuffle(1024, seed=seed)

    return DetectionSource(examples, count, list(category_ids), names, ground_truth)
