"""COCO box and mask AP of a detection model, through pycocotools.

:class:`CocoEvaluator` follows the ``Evaluator`` protocol of
:mod:`gn_keras.train.task`: ``replica_step`` runs the model on a batch in
the graph and returns its detections with the batch's ``image_id``,
``scale`` and ``original_size``; ``accumulate`` (on the host, NumPy)
takes boxes back to input-image pixels, pastes each 28×28 mask into its
box at the image's size (TF Model Garden's ``paste_instance_masks_v2``:
continuous box edges, pixel centres at +0.5, unlike the v1 paste's
inclusive integer boxes) and encodes it as RLE; ``result`` runs COCOeval for
``bbox`` and ``segm`` and returns the paper's Table 6 columns (AP, AP50,
AP75) plus APs/m/l, keyed ``bbox_AP``, ``segm_AP50``, … as fractions in
[0, 1] (COCO's -1 where the ground truth has no object of that size).
Rows with ``image_id < 0`` (batch padding) are ignored.
"""

import contextlib
import io

import numpy as np
from official.vision.ops import mask_ops
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5


def coco_api(ground_truth):
    """A pycocotools COCO object over an in-memory COCO dict."""
    api = COCO()
    api.dataset = ground_truth
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


class CocoEvaluator:
    """COCO AP of detections; see the module docstring.

    Args:
      ground_truth: COCO-format dict (e.g. ``CocoSet.ground_truth``).
      category_ids: COCO category id of class 1, 2, ..., K.
      iou_types: ``("bbox", "segm")`` or one of them.
    """

    primary_metric = "bbox_AP"
    primary_metric_label = "box AP"
    lower_is_better = False

    def __init__(self, ground_truth, category_ids, iou_types=IOU_TYPES):
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown or not iou_types:
            raise ValueError(
                f"CocoEvaluator: argument `iou_types` must hold some of {list(IOU_TYPES)}, "
                f"got {list(iou_types)}."
            )
        self.ground_truth = coco_api(ground_truth)
        self.category_ids = np.asarray(list(category_ids), np.int64)
        self.iou_types = tuple(iou_types)
        self.reset()

    def reset(self):
        self.detections = []
        self.image_ids = set()

    def replica_step(self, model, batch):
        inputs = {"images": batch["images"], "image_sizes": batch["image_sizes"]}
        found = model(inputs, training=False)
        keep = ("image_id", "scale", "original_size")
        return dict(found, **{key: batch[key] for key in keep})

    def accumulate(self, outputs):
        """Add one batch of outputs: a dict of arrays, a list of them, or a dict of
        per-replica tuples of arrays (``StepRunner.eval_step``'s local results)."""
        if isinstance(outputs, (list, tuple)):
            for part in outputs:
                self.accumulate(part)
            return
        if any(isinstance(value, (list, tuple)) for value in outputs.values()):
            replicas = len(next(iter(outputs.values())))
            for replica in range(replicas):
                self.accumulate({key: value[replica] for key, value in outputs.items()})
            return
        outputs = {key: np.asarray(value) for key, value in outputs.items()}
        for row in range(len(outputs["image_id"])):
            image_id = int(outputs["image_id"][row])
            if image_id < 0:
                continue
            self.image_ids.add(image_id)
            self.detections.extend(self._image_detections(outputs, row, image_id))

    def _image_detections(self, outputs, row, image_id):
        count = int(outputs["num_detections"][row])
        height, width = (int(v) for v in outputs["original_size"][row])
        ymin, xmin, ymax, xmax = (outputs["boxes"][row, :count] / outputs["scale"][row]).T
        xmin, xmax = np.clip(xmin, 0, width), np.clip(xmax, 0, width)
        ymin, ymax = np.clip(ymin, 0, height), np.clip(ymax, 0, height)
        xywh = np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)
        rles = [None] * count
        if "segm" in self.iou_types and count:
            pasted = mask_ops.paste_instance_masks_v2(
                outputs["masks"][row, :count], xywh, height, width
            )
            rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in pasted]
        classes = self.category_ids[outputs["classes"][row, :count].astype(np.int64) - 1]
        return [
            {
                "image_id": image_id,
                "category_id": int(classes[i]),
                "bbox": [float(v) for v in xywh[i]],
                "score": float(outputs["scores"][row, i]),
                "segmentation": rles[i],
            }
            for i in range(count)
        ]

    def result(self):
        """``{"bbox_AP": ..., "segm_APl": ...}`` over the accumulated images."""
        metrics = {}
        for iou_type in self.iou_types:
            stats = self._evaluate(iou_type)
            metrics.update({f"{iou_type}_{name}": float(v) for name, v in zip(METRICS, stats)})
        return metrics

    def _evaluate(self, iou_type):
        detections = [d for d in self.detections if iou_type == "bbox" or d["segmentation"]]
        if not detections:
            return np.zeros(len(METRICS))
        if iou_type == "bbox":
            detections = [{k: v for k, v in d.items() if k != "segmentation"} for d in detections]
        with contextlib.redirect_stdout(io.StringIO()):
            results = self.ground_truth.loadRes(detections)
            evaluation = COCOeval(self.ground_truth, results, iou_type)
            evaluation.params.imgIds = sorted(self.image_ids)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return evaluation.stats[: len(METRICS)]
