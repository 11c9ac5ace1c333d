"""The small "ImageNet" of the detection studies: backbones pre-trained on shape crops.

The paper fine-tunes Mask R-CNN from ImageNet models (§4.2): BN* is BN frozen
with the statistics it learned in pre-training, and a BN* backbone from
scratch would freeze random statistics.  On the embedded shapes set the
detection studies therefore pre-train their own backbones first, once per
norm, unless ``--trained_model`` names real ones:

* ``write_shape_crops(directory, num_scenes, seed)`` generates shapes scenes
  (``train.detection.shapes``, a seed the detection train and validation
  sets do not use) and saves every object's box, with a margin, as a
  ``CROP_SIZE`` px image in a folder per class: an image-classification set
  of circles, squares and triangles for ``gn-train --dataset=folder``;
* ``pretrain_backbones(norms, base, out_dir)`` trains the detection
  backbone (``base.backbone``, its GN groups) on those crops with
  ``train.classify``, one run per norm, in ``<out_dir>/detection_pretrain/``
  through the studies' runner (so a rerun skips finished runs), and returns
  the ``--trained_model`` template with ``{norm}`` for the detection runs.
"""

import dataclasses
import json
import os

from PIL import Image

from gn_keras.train.detection import shapes
from gn_keras.train.studies import runner, specs

PRETRAIN_DIR = "detection_pretrain"
CROP_SIZE = 32
CROP_MARGIN = 0.25  # of the box's longer side, on each side
CROPS_SEED = 2  # gn-detect's shapes train set uses seed 0, validation 1
DONE_FILE = "complete"
# About 1,900 crops (1,700 to train) at batch 32: with the study's 15 epochs
# (--study_detection_pretrain_epochs) about a minute per norm on 2 cores.
PRETRAIN_SCENES = 800
PRETRAIN_RUN = {
    "dataset": "folder",
    "image_size": CROP_SIZE,
    "batch_size_per_replica": 32,
    "base_lr": 0.1,
    "lr_reference_batch": 32,
}


def _crop_box(box, image_size):
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * CROP_MARGIN)
    cx, cy = x + w / 2, y + h / 2
    left, top = max(0.0, cx - side / 2), max(0.0, cy - side / 2)
    return (left, top, min(float(image_size), left + side), min(float(image_size), top + side))


def write_shape_crops(directory, num_scenes=PRETRAIN_SCENES, seed=CROPS_SEED):
    """Write the crops into ``directory/<class name>/`` once; return ``directory``."""
    if os.path.exists(os.path.join(directory, DONE_FILE)):
        return directory
    scenes = os.path.join(directory + "_scenes")
    annotation_file = shapes.write_shapes(scenes, num_scenes, seed=seed)
    with open(annotation_file, encoding="utf-8") as handle:
        data = json.load(handle)
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {record["id"]: record for record in data["images"]}
    for name in names.values():
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    for annotation in data["annotations"]:
        record = files[annotation["image_id"]]
        with Image.open(os.path.join(scenes, shapes.IMAGE_DIR, record["file_name"])) as image:
            crop = image.crop(_crop_box(annotation["bbox"], record["width"]))
            crop = crop.resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR)
        name = f"{annotation['id']:06d}.png"
        crop.save(os.path.join(directory, names[annotation["category_id"]], name))
    open(os.path.join(directory, DONE_FILE), "w").close()
    return directory


def pretrained_norm(backbone_norm):
    """The norm of the pre-trained model a detection backbone starts from (BN* from BN)."""
    return "bn" if backbone_norm == "frozen_bn" else backbone_norm


def _pretrain_study(norms):
    return specs.Study(
        PRETRAIN_DIR,
        "backbones pre-trained on shape crops",
        lambda options: [specs.Setting(norm, norm, {"norm": norm}) for norm in norms],
        frozenset({"norm"}),
    )


def pretrain_backbones(norms, base, out_dir, epochs, strategy=None, **run):
    """Pre-train ``base.backbone`` once per norm; return the ``{norm}`` model-dir template.

    ``base`` is the detection studies' ``DetectionConfig``: its backbone,
    GN groups, seed and execution settings are those of the pre-training.
    ``run`` overrides ``PRETRAIN_RUN``'s fields (the tests' tiny runs).
    """
    from gn_keras.train import config as classify_config

    directory = os.path.join(out_dir, PRETRAIN_DIR)
    crops = write_shape_crops(os.path.join(directory, "shape_crops"))
    config = classify_config.make_config(
        **{**PRETRAIN_RUN, "epochs": epochs, **run},
        data_dir=crops,
        model=base.backbone,
        groups=base.groups,
        group_size=base.group_size,
        seed=base.seed,
        strategy=base.strategy,
        cpu_replicas=base.cpu_replicas,
        mixed_precision=base.mixed_precision,
    )
    study = _pretrain_study(tuple(norms))
    runs = study.runs(specs.StudyOptions(), first_seed=base.seed)
    runner.run_all(study, runs, config, directory, strategy=strategy)
    return os.path.join(directory, f"{{norm}}_seed{base.seed}")


def with_pretrained(base, norms, out_dir, epochs, strategy=None, **run):
    """``base`` with ``--trained_model`` set to pre-trained backbones, unless it names its own."""
    if base.trained_model:
        return base
    template = pretrain_backbones(norms, base, out_dir, epochs, strategy=strategy, **run)
    return dataclasses.replace(base, trained_model=template)
