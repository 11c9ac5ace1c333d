"""gn-detect end to end on a tiny shapes set, in subprocesses as a user runs it.

One module-scoped run: ``--eval_only`` before training (the untrained
model's AP), a training killed with SIGKILL mid-epoch, then the same command
again, which resumes and finishes.  The tests check the resume (nothing lost
or repeated), that the trained AP beats the untrained one, the Table 6
printout, and the SavedModel: ``saved_model_cli run`` and a reload in a
fresh process give the Keras model's detections, with standard ops only.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import forked_cli
import keras
import numpy as np
import pytest
from subprocess_utils import run_python
from test_train_resume import checkpoint_state, environment, wait_for_mid_epoch_checkpoint

from gn_keras.train.detection import export

EPOCHS, STEPS, EVERY = 3, 40, 5
TINY_FLAGS = [
    "--shapes_train_images=40",
    "--shapes_val_images=16",
    f"--epochs={EPOCHS}",
    f"--steps_per_epoch={STEPS}",
    f"--checkpoint_every_steps={EVERY}",
    "--lr_schedule=constant",
    "--warmup_epochs=0.2",
]


def gn_detect(model_dir, *extra):
    module = "gn_keras.train.detect"
    return [sys.executable, "-m", module, f"--model_dir={model_dir}", *TINY_FLAGS, *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The run directory after: eval before training, a SIGKILL, and a resume."""
    root = tmp_path_factory.mktemp("gn_detect")
    model_dir = str(root / "run")
    data = f"--data_dir={root / 'data'}"
    untrained = forked_cli.run(
        [*gn_detect(model_dir, data), "--eval_only"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    eval_file = os.path.join(model_dir, "eval.json")
    untrained_ap = json.load(open(eval_file))["val"]
    os.remove(eval_file)
    with open(root / "first.log", "w") as log:
        first = subprocess.Popen(
            gn_detect(model_dir, data), env=environment(), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_mid_epoch_checkpoint(first, os.path.join(model_dir, "checkpoints"))
            os.kill(first.pid, signal.SIGKILL)
        finally:
            first.wait(timeout=60)
    killed_at = checkpoint_state(os.path.join(model_dir, "checkpoints"))
    second = forked_cli.run(
        gn_detect(model_dir, data), env=environment(), capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {
        "dir": model_dir,
        "untrained": untrained,
        "untrained_ap": untrained_ap,
        "killed_returncode": first.returncode,
        "killed_at": killed_at,
        "second": second,
    }


def test_sigkill_mid_epoch_then_rerun_resumes(run):
    assert run["killed_returncode"] == -signal.SIGKILL
    epoch, step, iterations = run["killed_at"]
    assert step > 0 and iterations == epoch * STEPS + step
    assert f"Resuming at epoch {epoch + 1}, step {step}" in run["second"].stdout
    results = json.load(open(os.path.join(run["dir"], "results.json")))
    assert [r["epoch"] for r in results["epochs"]] == list(range(EPOCHS))
    assert results["epochs"][epoch]["resumed_at_step"] == step
    assert checkpoint_state(os.path.join(run["dir"], "checkpoints")) == (EPOCHS, 0, EPOCHS * STEPS)
    assert results["task"] == "detect" and results["flags"]["backbone_norm"] == "auto"


def test_training_beats_the_untrained_model_and_prints_table6(run):
    results = json.load(open(os.path.join(run["dir"], "results.json")))
    final = results["epochs"][-1]["val"]
    untrained = run["untrained_ap"]
    assert "no checkpoint: the model as built" in run["untrained"].stdout
    # 120 steps of 2 images: far from converged, but far from an untrained model.
    best = results["epochs"][results["best_epoch"]]["val"]
    assert best["bbox_AP50"] > untrained["bbox_AP50"] + 0.03, (best, untrained)
    assert best["segm_AP50"] > untrained["segm_AP50"] + 0.01, (best, untrained)
    assert final["bbox_AP50"] > untrained["bbox_AP50"] and final["bbox_AP"] > untrained["bbox_AP"]
    printed = run["second"].stdout
    header = [line.split() for line in printed.splitlines() if "AP^bbox_50" in line][-1]
    assert header == ["AP^bbox", "AP^bbox_50", "AP^bbox_75", "AP^mask", "AP^mask_50", "AP^mask_75"]
    row = [line for line in printed.splitlines() if line.startswith("this run")][-1]
    numbers = [float(v) for v in row.split()[2:]]
    expected = [100 * final[k] for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP")]
    np.testing.assert_allclose(numbers[:4], expected, atol=0.051)


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """A uint8 batch and the Keras model's detections on it (last.keras = the final weights)."""
    root = tmp_path_factory.mktemp("detect_export")
    model = keras.saving.load_model(os.path.join(run["dir"], "last.keras"), compile=False)
    preprocessing = json.load(open(os.path.join(run["dir"], "preprocessing.json")))
    rng = np.random.default_rng(int(np.random.randint(1 << 30)))
    # Shapes-like images at a size the export must resize (90×70 → short side 64).
    images = rng.integers(0, 256, (2, 90, 70, 3), dtype=np.uint8)
    images[:, 20:50, 15:45] = rng.integers(0, 256, 3, dtype=np.uint8)
    np.save(root / "images.npy", images)
    want = export.keras_reference(model, preprocessing, images)
    return root, images, want


def test_export_reloads_in_a_fresh_process_with_standard_ops(run, reference):
    root, _, want = reference
    saved_model = os.path.join(run["dir"], "saved_model")
    out = run_python(
        f"""
        import json, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({saved_model!r})
        images = np.load({str(root / "images.npy")!r})
        got = loaded.signatures["serving_default"](images=tf.constant(images))
        ops = {{node.op for f in loaded.signatures["serving_default"].graph.as_graph_def()
               .library.function for node in f.node_def}}
        print(json.dumps({{**{{k: v.numpy().tolist() for k, v in got.items()}},
                          "ops": sorted(ops)}}))
        """
    )
    got = json.loads(out.strip().splitlines()[-1])
    ops = got.pop("ops")
    assert "Conv2D" in ops and "CombinedNonMaxSuppression" in ops
    assert not [op for op in ops if "GroupNorm" in op or op.startswith("Gn")]
    got = {k: np.asarray(v) for k, v in got.items()}
    assert (want["num_detections"] > 0).all()
    export.compare("fresh process", got, want)
    boxes = got["boxes"]
    assert boxes[..., 2].max() <= 90 and boxes[..., 3].max() <= 70


def test_saved_model_cli_runs_the_serving_signature(run, reference):
    root, _, want = reference
    cli = shutil.which("saved_model_cli")
    assert cli, "saved_model_cli is installed with TensorFlow"
    completed = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            os.path.join(run["dir"], "saved_model"),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={root / 'images.npy'}",
            "--outdir",
            str(root / "cli"),
        ],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    got = {name: np.load(root / "cli" / f"{name}.npy") for name in export.OUTPUTS}
    export.compare("saved_model_cli", got, want)
