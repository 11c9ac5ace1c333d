"""Reading a COCO-format detection set: JSON annotations plus an image folder.

``read_coco(annotation_file, image_dir)`` checks every record once, up
front, and returns a :class:`CocoSet`: the images with their valid
annotations, the category list (COCO ids mapped to contiguous classes
1..K, sorted by id) and the ground truth as a COCO dict for evaluation.

Segmentations may be polygons, uncompressed RLE (``counts`` a list) or
compressed RLE (``counts`` a string); pycocotools decodes all three
(:func:`instance_masks`). Crowd regions (``iscrowd=1``) are kept in the
evaluation ground truth, where COCOeval ignores detections on them, and are
left out of training targets.

A bad record (box outside the image, zero area, unknown image or category
id, an unreadable segmentation, a missing image file) is skipped, and one
warning counts them and names the first few, so a long training never
stops on one; with ``strict=True`` the first one raises a one-line
``ValueError`` naming the file and the record instead.

Every image file is checked up front too (``train.image_files``: it must
decode, and its pixels must be the record's width x height): with
``on_bad_image="skip"`` the images that fail are left out with their
annotations and one warning names them, with ``"fail"`` the first few are
named in a one-line ``ValueError``.  A JSON that is not a COCO object, or a
category without an integer ``id``, is refused in one line naming the file:
such a file cannot be read record by record.
"""

import collections
import dataclasses
import json
import os

import numpy as np
from absl import logging
from pycocotools import mask as mask_utils

from gn_keras import _checks
from gn_keras.train import image_files

BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding) before it is refused
SHOWN_PROBLEMS = 5
_SHOWN_VALUE = 80  # characters of a bad JSON value quoted in a message


@dataclasses.dataclass
class ImageRecord:
    image_id: int
    path: str
    height: int
    width: int
    annotations: list  # dicts: id, bbox (x, y, w, h), label (1..K), iscrowd, segmentation


@dataclasses.dataclass
class CocoSet:
    images: list
    category_ids: list  # COCO category id of class 1, 2, ..., K
    category_names: list
    ground_truth: dict  # COCO-format dict of the kept images and annotations
    skipped: dict  # reason -> count

    @property
    def num_classes(self):
        return len(self.category_ids)


class _Problems:
    """Collects bad records, or raises on the first one when strict."""

    def __init__(self, source, strict):
        self.source, self.strict = source, strict
        self.counts = collections.Counter()
        self.examples = []

    def add(self, record, reason):
        if self.strict:
            raise ValueError(f"{self.source}: {record}: {reason}.")
        self.counts[reason.split(" (")[0]] += 1
        if len(self.examples) < SHOWN_PROBLEMS:
            self.examples.append(f"{record} ({reason})")

    def report(self):
        total = sum(self.counts.values())
        if total:
            shown = "; ".join(self.examples)
            more = "" if total <= len(self.examples) else f"; and {total - len(self.examples)} more"
            logging.warning(
                "%s: skipped %d bad record(s) %s: %s%s",
                self.source,
                total,
                dict(self.counts),
                shown,
                more,
            )


def _load_json(annotation_file):
    try:
        with open(annotation_file, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{annotation_file}: cannot read COCO annotations: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{annotation_file}: COCO annotations must be a JSON object with 'images', "
            f"'annotations' and 'categories', not a {type(data).__name__}."
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{annotation_file}: COCO annotations need a list {key!r}.")
    return data


def _segmentation_problem(segmentation, height, width):
    if isinstance(segmentation, list):
        if not segmentation or not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation
        ):
            return "polygon with fewer than 3 points"
        return None
    if isinstance(segmentation, dict):
        if list(segmentation.get("size", ())) != [height, width]:
            return f"RLE size {segmentation.get('size')} is not the image's [{height}, {width}]"
        if not isinstance(segmentation.get("counts"), (list, str)):
            return "RLE without counts"
        return None
    return "no segmentation"


def _annotation_problem(annotation, image, labels):
    """The reason ``annotation`` is unusable, or None."""
    if image is None:
        return f"unknown image id {annotation.get('image_id')!r}"
    if annotation.get("category_id") not in labels:
        return f"unknown category id {annotation.get('category_id')!r}"
    box = annotation.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(map(_checks.is_number, box))):
        return "bbox is not [x, y, w, h]"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"zero area (bbox {box})"
    height, width = image["height"], image["width"]
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"box outside image (bbox {box}, image {width}x{height})"
    return _segmentation_problem(annotation.get("segmentation"), height, width)


def _categories(data, annotation_file):
    """The categories sorted by id; one without a unique integer id is refused."""
    seen = set()
    for index, category in enumerate(data["categories"]):
        identifier = category.get("id") if isinstance(category, dict) else None
        if not _checks.is_integer(identifier) or identifier in seen:
            integral = _checks.is_integer(identifier)
            problem = "repeats an 'id'" if integral else "has no integer 'id'"
            raise ValueError(
                f"{annotation_file}: categories[{index}] {problem}: "
                f"{json.dumps(category)[:_SHOWN_VALUE]}"
            )
        seen.add(identifier)
    return sorted(data["categories"], key=lambda c: c["id"])


def _read_images(data, image_dir, problems):
    images = {}
    for image in data["images"]:
        if not isinstance(image, dict):
            problems.add(f"image {json.dumps(image)[:_SHOWN_VALUE]}", "not a JSON object")
            continue
        record = f"image id {image.get('id')!r}"
        name = image.get("file_name")
        size = (image.get("height"), image.get("width"))
        if not isinstance(name, str) or not all(_checks.is_integer(s) and s > 0 for s in size):
            problems.add(record, "needs file_name, height and width")
            continue
        path = os.path.join(image_dir, name)
        if not os.path.isfile(path):
            problems.add(record, f"missing file {path}")
            continue
        images[image["id"]] = dict(image, path=path)
    return images


def _unusable_images(images, image_dir, annotation_file, on_bad_image):
    """The ids of ``images`` whose file does not decode or has another size (see the module)."""
    paths = [image["path"] for image in images.values()]
    sizes = [(image["width"], image["height"]) for image in images.values()]
    bad = image_files.unreadable(paths, sizes)
    if not bad:
        return set()
    listed = image_files.describe(bad, image_dir)
    if on_bad_image == "fail":
        raise ValueError(
            f"{image_dir}: {len(bad)} image file(s) of {annotation_file} cannot be used: "
            f"{listed}; fix or remove them, or pass --on_bad_image=skip."
        )
    logging.warning(
        "%s: skipping %d image file(s) that cannot be used, with their annotations: %s.",
        annotation_file,
        len(bad),
        listed,
    )
    return {key for key, image in images.items() if image["path"] in bad}


def read_coco(annotation_file, image_dir, strict=False, on_bad_image="skip"):
    """Read and check a COCO detection set; see the module docstring."""
    _checks.check_choice(on_bad_image, "`on_bad_image`", image_files.ON_BAD_IMAGE, "read_coco")
    data = _load_json(annotation_file)
    problems = _Problems(annotation_file, strict)
    categories = _categories(data, annotation_file)
    labels = {c["id"]: index for index, c in enumerate(categories, start=1)}
    images = _read_images(data, image_dir, problems)
    unusable = _unusable_images(images, image_dir, annotation_file, on_bad_image)
    images = {key: image for key, image in images.items() if key not in unusable}
    kept = collections.defaultdict(list)
    for annotation in data["annotations"]:
        if not isinstance(annotation, dict):
            problems.add(f"annotation {json.dumps(annotation)[:_SHOWN_VALUE]}", "not an object")
            continue
        if annotation.get("image_id") in unusable:  # named in the image warning
            continue
        image = images.get(annotation.get("image_id"))
        reason = _annotation_problem(annotation, image, labels)
        if reason is not None:
            problems.add(f"annotation id {annotation.get('id')!r}", reason)
            continue
        kept[annotation["image_id"]].append(annotation)
    problems.report()
    records = [
        ImageRecord(
            image_id=image_id,
            path=image["path"],
            height=image["height"],
            width=image["width"],
            annotations=[
                dict(a, label=labels[a["category_id"]], iscrowd=int(a.get("iscrowd", 0)))
                for a in kept[image_id]
            ],
        )
        for image_id, image in images.items()
    ]
    ground_truth = {
        "images": [{k: v for k, v in images[r.image_id].items() if k != "path"} for r in records],
        "annotations": [_ground_truth_annotation(a, r) for r in records for a in r.annotations],
        "categories": categories,
    }
    return CocoSet(
        images=records,
        category_ids=[c["id"] for c in categories],
        category_names=[c.get("name", str(c["id"])) for c in categories],
        ground_truth=ground_truth,
        skipped=dict(problems.counts),
    )


def _ground_truth_annotation(annotation, record):
    area = annotation.get("area")
    if not _checks.is_number(area) or area <= 0:
        area = float(mask_utils.area(_rle(annotation["segmentation"], record.height, record.width)))
    keep = ("id", "image_id", "category_id", "bbox", "segmentation")
    return dict({k: annotation[k] for k in keep}, area=area, iscrowd=annotation["iscrowd"])


def _rle(segmentation, height, width):
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def instance_masks(record, annotations=None):
    """[N, H, W] uint8 masks of ``annotations`` (default all) of ``record``."""
    annotations = record.annotations if annotations is None else annotations
    masks = [
        mask_utils.decode(_rle(a["segmentation"], record.height, record.width)) for a in annotations
    ]
    if not masks:
        return np.zeros((0, record.height, record.width), np.uint8)
    return np.stack(masks).astype(np.uint8)
