"""The embedded "shapes" detection set: generated, exact, no download.

``write_shapes(directory, num_images)`` draws images of circles, squares
and triangles (random colours, sizes, positions; later shapes may cover
earlier ones) on random backgrounds and writes them as PNGs plus a COCO
JSON, so the set goes through the same reader as real COCO
(:func:`gn_keras.train.detection.coco.read_coco`).

Each instance's mask is exactly its visible pixels: the image and the masks
are painted by the same rasterizer, and the pixels a later shape covers are
removed from the earlier masks. Masks are stored as compressed RLE, boxes
are the tight boxes of the visible pixels; an instance covered down to
fewer than ``min_visible_pixels`` is dropped. The same seed gives the same
files.

``ensure_shapes`` is how a run gets its set: the JSON's ``info`` records
what generated it, so a set already made with the same parameters is used
as it is (nothing rewritten), and any other is generated whole in a
staging folder and swapped in at once (``gn_keras.staging.staging`` and
``publish``), so a reader never sees half of one set and half of another.
"""

import json
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from gn_keras import _checks, staging

CATEGORIES = (
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "square"},
    {"id": 3, "name": "triangle"},
)
ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"
GENERATOR = "gn_keras shapes v1"  # changes whenever the same seed would draw other files


def _draw(draw, kind, centre, radius, fill):
    cy, cx = centre
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill
        )


def _shape_mask(size, kind, centre, radius):
    canvas = Image.new("L", (size, size), 0)
    _draw(ImageDraw.Draw(canvas), kind, centre, radius, 255)
    return np.asarray(canvas) > 0


def _random_image(rng, size, max_shapes, min_radius, max_radius):
    """One image and its (category id, visible mask) instances."""
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    instances = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        radius = int(rng.integers(min_radius, max_radius + 1))
        centre = tuple(int(v) for v in rng.integers(radius, size - radius, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        _draw(draw, category["name"], centre, radius, colour)
        mask = _shape_mask(size, category["name"], centre, radius)
        for _, earlier in instances:
            earlier &= ~mask
        instances.append((category["id"], mask))
    return image, instances


def _annotation(annotation_id, image_id, category_id, mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, w, h],
        "area": float(mask.sum()),
        "segmentation": rle,
        "iscrowd": 0,
    }


def generator_info(num_images, image_size=64, max_shapes=4, seed=0, min_visible_pixels=16):
    """What a set's JSON records under ``info``: everything that decides its files."""
    return {
        "generator": GENERATOR,
        "num_images": num_images,
        "image_size": image_size,
        "max_shapes": max_shapes,
        "seed": seed,
        "min_visible_pixels": min_visible_pixels,
    }


def write_shapes(directory, num_images, image_size=64, max_shapes=4, seed=0, min_visible_pixels=16):
    """Write the set into ``directory``; return the annotation file's path."""
    _checks.check_int(num_images, "`num_images`", minimum=1, where="write_shapes")
    _checks.check_int(image_size, "`image_size`", minimum=16, where="write_shapes")
    info = generator_info(num_images, image_size, max_shapes, seed, min_visible_pixels)
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, IMAGE_DIR), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, instances = _random_image(
            rng, image_size, max_shapes, image_size // 10, image_size // 4
        )
        name = f"{image_id:06d}.png"
        image.save(os.path.join(directory, IMAGE_DIR, name))
        images.append(
            {"id": image_id, "file_name": name, "height": image_size, "width": image_size}
        )
        for category_id, mask in instances:
            if mask.sum() >= min_visible_pixels:
                annotations.append(_annotation(len(annotations) + 1, image_id, category_id, mask))
    path = os.path.join(directory, ANNOTATION_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "info": info,
                "images": images,
                "annotations": annotations,
                "categories": list(CATEGORIES),
            },
            handle,
        )
    return path


def recorded_info(directory):
    """The ``info`` of the set in ``directory``, or None (no set, or not one of ours)."""
    try:
        with open(os.path.join(directory, ANNOTATION_FILE), encoding="utf-8") as handle:
            info = json.load(handle).get("info")
    except (OSError, ValueError, AttributeError):
        return None
    return info if isinstance(info, dict) else None


def ensure_shapes(directory, num_images, image_size=64, seed=0, replace=True):
    """The set of these parameters in ``directory``; return its annotation file's path.

    A set already there with the same parameters is kept untouched.
    Otherwise (none, a damaged one, or one of other parameters) a new one is
    generated beside it and swapped in whole; ``replace=False`` refuses to
    swap out a set of other parameters instead (a ``ValueError`` naming
    both), for a folder that other runs may be reading.
    """
    wanted = generator_info(num_images, image_size, seed=seed)
    found = recorded_info(directory)
    if found == wanted:
        return os.path.join(directory, ANNOTATION_FILE)
    if found is not None and not replace:
        raise ValueError(
            f"{directory} holds a shapes set of {found.get('num_images')} images at "
            f"{found.get('image_size')} px, not {num_images} at {image_size} px; use another "
            "--data_dir or remove it."
        )
    with staging.staging(directory) as stage:
        write_shapes(stage, num_images, image_size=image_size, seed=seed)
        staging.publish(stage, directory)
    return os.path.join(directory, ANNOTATION_FILE)
