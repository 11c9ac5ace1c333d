"""The paper's transfer pipeline end to end, as a user runs it, on tiny data (issue 14).

Five console-script subprocesses in order, then a fresh interpreter:

1. ``gn-train``: a GN ``resnet18_narrow`` classifier (C2–C5 endpoints) on
   synthetic RGB images, a few steps;
2. ``gn-export``: its SavedModel;
3. ``gn-detect --trained_model=<that SavedModel>``: Mask R-CNN fine-tuned
   from it on the embedded shapes set (tiny images, tiny RoI counts); the
   run exports the detector (standard TF ops only) into ``<model_dir>/saved_model`` itself;
4. ``gn-detect --eval_only`` on the fine-tuned ``--model_dir``;
5. ``python -c``: the detector's SavedModel loaded and run on uint8 images.

The checks: the stages frozen for a pre-trained backbone (stem and res2,
Detectron's FREEZE_AT=2) hold exactly the classifier's weights after
fine-tuning, the trained stages moved only a little away from them (and are
far from a fresh initialization), ``results.json`` records where the
backbone started, the evaluation reproduces the training run's final COCO
AP, and the fresh process's detections equal the Keras model's.
"""

import json
import math
import os
import sys

import forked_cli
import keras
import numpy as np
import pytest
from subprocess_utils import run_python

from gn_keras import load, models
from gn_keras.train.detection import export

GROUPS = 4
CLASSIFIER_FLAGS = [
    "--model=resnet18_narrow",
    f"--groups={GROUPS}",
    "--dataset=synthetic",
    "--num_classes=3",
    "--image_size=32",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--eval_steps=1",
    "--batch_size_per_replica=4",
]
# The smallest detector that still runs every part: 2 steps of 2 images.
DETECTOR_FLAGS = [
    f"--groups={GROUPS}",
    "--shapes_train_images=4",
    "--shapes_val_images=4",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--fpn_channels=16",
    "--head_conv_channels=16",
    "--box_head_fc_units=32",
    "--rois_per_image=16",
    "--masks_per_image=4",
    "--train_pre_nms_top_k=100",
    "--train_proposals=32",
    "--test_pre_nms_top_k=50",
    "--test_proposals=16",
    "--detections_per_image=8",
]
COCO_KEYS = [f"{kind}_AP{suffix}" for kind in ("bbox", "segm") for suffix in ("", "50", "75")]


def _script(name, *flags):
    completed = forked_cli.run(
        [sys.executable, "-m", f"gn_keras.train.{name}", *flags],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, (name, completed.stdout[-3000:], completed.stderr[-3000:])
    return completed.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Every step's output folder and printout, run once for the module."""
    root = tmp_path_factory.mktemp("transfer_pipeline")
    paths = {k: str(root / k) for k in ("classifier", "exported", "detector", "data")}
    _script("classify", *CLASSIFIER_FLAGS, f"--model_dir={paths['classifier']}")
    _script("export", f"--trained_model={paths['classifier']}", f"--output_dir={paths['exported']}")
    detector = [
        *DETECTOR_FLAGS,
        f"--trained_model={os.path.join(paths['exported'], 'saved_model')}",
        f"--model_dir={paths['detector']}",
        f"--data_dir={paths['data']}",
    ]
    printed = {"train": _script("detect", *detector)}
    # Only the run's folder: --eval_only takes every other setting from settings.json.
    printed["eval"] = _script("detect", f"--model_dir={paths['detector']}", "--eval_only")
    return paths, printed


def _weights(model, prefixes):
    return {
        f"{layer.name}/{i}": np.asarray(w)
        for layer in model.layers
        if layer.weights and layer.name.startswith(prefixes)
        for i, w in enumerate(layer.weights)
    }


def test_the_detector_starts_from_the_exported_classifier(pipeline):
    paths, _ = pipeline
    results = json.load(open(os.path.join(paths["detector"], "results.json")))
    start = results["backbone_start"]
    assert start["trained_model"] == os.path.join(paths["exported"], "saved_model")
    assert (start["trained_norm"], start["backbone_norm"], start["freeze_at"]) == ("gn", "gn", 2)
    classifier = load.load_model(os.path.join(paths["exported"], "saved_model"))
    detector = keras.saving.load_model(
        os.path.join(paths["detector"], "last.keras"), compile=False
    ).backbone
    # Stem and res2 are frozen for a pre-trained backbone: exactly the classifier's weights.
    frozen = _weights(detector, ("conv1", "res2"))
    assert len(frozen) > 10
    theirs = _weights(classifier, ("conv1", "res2"))
    for name, value in frozen.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
    # res3..res5 trained: moved, but little against where a fresh backbone would start.
    trained = _weights(detector, ("res3", "res4", "res5"))
    theirs = _weights(classifier, ("res3", "res4", "res5"))
    fresh = _weights(
        models.build("resnet18_narrow", groups=GROUPS, include_top=False, input_shape=(32, 32, 3)),
        ("res3", "res4", "res5"),
    )
    kernels = [name for name in trained if name.endswith("conv/0")]
    moved = [np.linalg.norm(trained[n] - theirs[n]) for n in kernels]
    from_fresh = [np.linalg.norm(trained[n] - fresh[n]) for n in kernels]
    assert max(moved) > 0, "fine-tuning changed nothing in res3..res5"
    assert sum(moved) < 0.1 * sum(from_fresh), (sum(moved), sum(from_fresh))
    preprocessing = json.load(open(os.path.join(paths["exported"], "preprocessing.json")))
    served = json.load(open(os.path.join(paths["detector"], "preprocessing.json")))
    np.testing.assert_allclose(served["mean"], preprocessing["mean"])
    np.testing.assert_allclose(served["std"], preprocessing["std"])


def test_eval_only_gives_the_runs_final_coco_ap(pipeline):
    paths, printed = pipeline
    evaluated = json.load(open(os.path.join(paths["detector"], "eval.json")))
    final = json.load(open(os.path.join(paths["detector"], "results.json")))["epochs"][-1]["val"]
    assert (evaluated["epoch"], evaluated["step_in_epoch"]) == (1, 0)
    for key in COCO_KEYS:
        assert math.isfinite(evaluated["val"][key]) and -1 <= evaluated["val"][key] <= 1, key
        assert evaluated["val"][key] == pytest.approx(final[key], abs=1e-9), key
    assert "checkpoint at epoch 1" in printed["eval"]
    row = [line for line in printed["eval"].splitlines() if line.startswith("this run")][-1]
    numbers = [float(v) for v in row.split()[2:]]
    np.testing.assert_allclose(numbers, [100 * final[k] for k in COCO_KEYS], atol=0.051)


def test_the_detector_savedmodel_runs_in_a_fresh_process(pipeline, tmp_path, rng):
    paths, _ = pipeline
    model = keras.saving.load_model(os.path.join(paths["detector"], "last.keras"), compile=False)
    preprocessing = json.load(open(os.path.join(paths["detector"], "preprocessing.json")))
    # An odd size the export must resize, with a flat shape on a noisy background.
    images = rng.integers(0, 256, (2, 75, 52, 3), dtype=np.uint8)
    images[:, 20:45, 10:35] = rng.integers(0, 256, 3, dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    want = export.keras_reference(model, preprocessing, images)
    saved_model = os.path.join(paths["detector"], "saved_model")
    out = run_python(
        f"""
        import json, numpy as np, tensorflow as tf
        serve = tf.saved_model.load({saved_model!r}).signatures["serving_default"]
        got = serve(images=tf.constant(np.load({str(tmp_path / "images.npy")!r})))
        ops = {{n.op for f in serve.graph.as_graph_def().library.function for n in f.node_def}}
        got = {{k: v.numpy().tolist() for k, v in got.items()}}
        print(json.dumps({{**got, "ops": sorted(ops)}}))
        """
    )
    got = json.loads(out.strip().splitlines()[-1])
    ops = got.pop("ops")  # standard TF ops only: the compiled GN kernel never leaves the process
    assert "Conv2D" in ops and "CombinedNonMaxSuppression" in ops
    assert not [op for op in ops if "GroupNorm" in op or op.startswith("Gn")], ops
    got = {k: np.asarray(v, want[k].dtype) for k, v in got.items()}
    assert want["num_detections"].sum() > 0
    export.compare("fresh process", got, want)
    assert got["boxes"][..., 2].max() <= 75 and got["boxes"][..., 3].max() <= 52
