"""COCO AP through the evaluator, against pycocotools run directly here.

Ground truth: rectangles (their masks fill their boxes) in 96×128 images.
Predictions are made in the model's input pixels (images scaled by 1.5) as
the evaluator receives them; the references are built in original pixels
here, without the evaluator's code.
"""

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from gn_keras.train.detection import evaluator

HEIGHT, WIDTH, SCALE, DETECTIONS = 96, 128, 1.5, 10
CATEGORY_IDS = [5, 9]


def ground_truth(rng, images=4):
    annotations, records = [], []
    for image_id in range(1, images + 1):
        records.append(
            {"id": image_id, "file_name": f"{image_id}.png", "height": HEIGHT, "width": WIDTH}
        )
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(v) for v in rng.integers(24, 48, 2))
            x, y = int(rng.integers(0, WIDTH - w)), int(rng.integers(0, HEIGHT - h))
            mask = np.zeros((HEIGHT, WIDTH), np.uint8)
            mask[y : y + h, x : x + w] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "segmentation": rle,
                    "iscrowd": 0,
                }
            )
    return {
        "images": records,
        "annotations": annotations,
        "categories": [{"id": i, "name": str(i)} for i in CATEGORY_IDS],
    }


def model_outputs(predictions, image_ids):
    """Padded per-image arrays as ``replica_step`` returns them."""
    batch = len(image_ids)
    out = {
        "boxes": np.zeros((batch, DETECTIONS, 4), np.float32),
        "scores": np.zeros((batch, DETECTIONS), np.float32),
        "classes": np.ones((batch, DETECTIONS), np.int32),
        "masks": np.zeros((batch, DETECTIONS, 28, 28), np.float32),
        "num_detections": np.zeros(batch, np.int32),
        "image_id": np.array(image_ids),
        "scale": np.full(batch, SCALE, np.float32),
        "original_size": np.tile([[HEIGHT, WIDTH]], (batch, 1)),
    }
    for row, image_id in enumerate(image_ids):
        mine = [p for p in predictions if p["image_id"] == image_id]
        out["num_detections"][row] = len(mine)
        for i, p in enumerate(mine):
            x, y, w, h = p["bbox"]
            out["boxes"][row, i] = np.array([y, x, y + h, x + w]) * SCALE
            out["scores"][row, i] = p["score"]
            out["classes"][row, i] = CATEGORY_IDS.index(p["category_id"]) + 1
            out["masks"][row, i] = 1.0  # the rectangle fills its box
    return out


def run_evaluator(truth, predictions, batch=3):
    coco_eval = evaluator.CocoEvaluator(truth, CATEGORY_IDS)
    ids = [image["id"] for image in truth["images"]]
    ids += [-1] * (-len(ids) % batch)  # a padded last batch
    for start in range(0, len(ids), batch):
        coco_eval.accumulate(model_outputs(predictions, ids[start : start + batch]))
    return coco_eval.result()


def reference_stats(truth, predictions, iou_type):
    api = evaluator.coco_api(truth)
    detections = []
    for p in predictions:
        d = {k: p[k] for k in ("image_id", "category_id", "bbox", "score")}
        if iou_type == "segm":
            # A full-box mask covers the pixels whose centres lie inside the box.
            x, y, w, h = p["bbox"]
            rows = (np.arange(HEIGHT) + 0.5 > y) & (np.arange(HEIGHT) + 0.5 < y + h)
            cols = (np.arange(WIDTH) + 0.5 > x) & (np.arange(WIDTH) + 0.5 < x + w)
            mask = np.outer(rows, cols).astype(np.uint8)
            d["segmentation"] = mask_utils.encode(np.asfortranarray(mask))
        detections.append(d)
    with contextlib.redirect_stdout(io.StringIO()):
        run = COCOeval(api, api.loadRes(detections), iou_type)
        run.params.imgIds = [image["id"] for image in truth["images"]]
        run.evaluate()
        run.accumulate()
        run.summarize()
    return run.stats[:6]


def test_ground_truth_as_predictions_scores_ap_one(rng):
    truth = ground_truth(rng)
    predictions = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": float(rng.uniform(0.5, 1.0)),
        }
        for a in truth["annotations"]
    ]
    metrics = run_evaluator(truth, predictions)
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75"):
            assert metrics[f"{iou_type}_{name}"] == pytest.approx(1.0)


def test_perturbed_predictions_match_pycocotools_run_directly(rng):
    truth = ground_truth(rng, images=5)
    predictions = []
    for a in truth["annotations"]:
        if rng.uniform() < 0.2:
            continue  # a miss
        # Whole-pixel jitter: every pixel centre is clearly inside or outside a box.
        jitter = np.round(np.r_[rng.normal(0, 3, 2), rng.normal(0, 4, 2)])
        x, y, w, h = np.array(a["bbox"], float) + jitter
        x, y = max(x, 0.0), max(y, 0.0)
        w, h = min(w, WIDTH - x), min(h, HEIGHT - y)
        category = a["category_id"] if rng.uniform() < 0.85 else CATEGORY_IDS[0]
        predictions.append(
            {
                "image_id": a["image_id"],
                "category_id": category,
                "bbox": [x, y, w, h],
                "score": float(rng.uniform(0.05, 1.0)),
            }
        )
    for image in truth["images"]:  # false positives
        x, y = (float(v) for v in rng.integers(0, 60, 2))
        predictions.append(
            {
                "image_id": image["id"],
                "category_id": int(rng.choice(CATEGORY_IDS)),
                "bbox": [x, y, 30.0, 30.0],
                "score": float(rng.uniform(0.05, 1.0)),
            }
        )
    metrics = run_evaluator(truth, predictions)
    bbox = reference_stats(truth, predictions, "bbox")
    np.testing.assert_allclose([metrics[f"bbox_{n}"] for n in evaluator.METRICS], bbox, atol=1e-4)
    assert 0 < metrics["bbox_AP"] < 1
    segm = reference_stats(truth, predictions, "segm")
    np.testing.assert_allclose([metrics[f"segm_{n}"] for n in evaluator.METRICS], segm, atol=1e-4)


def test_bad_iou_types_are_refused():
    with pytest.raises(ValueError, match="argument `iou_types`"):
        evaluator.CocoEvaluator(
            {"images": [], "annotations": [], "categories": []}, [1], ("keypoints",)
        )
