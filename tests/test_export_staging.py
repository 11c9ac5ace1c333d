"""gn-export builds in a staging folder and swaps it in whole (issue 12, item 2).

A failed export, a kill at a random moment while staging, and a re-export
with fewer formats must each leave ``--output_dir`` either exactly as it was
or exactly the new export; the next export sweeps a dead export's staging.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import forked_cli
import keras
import pytest
from absl import logging

from gn_keras import GroupNormalization, export, load
from gn_keras import staging as staging_lib
from gn_keras.train import export as export_script

SIZE, CLASSES = 8, 3
PREPROCESSING = {
    "image_size": [SIZE, SIZE],
    "channels": 1,
    "mean": [40.0],
    "std": [30.0],
    "data_format": "channels_last",
    "num_classes": CLASSES,
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_dir(tmp_path, rng, name="run"):
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = GroupNormalization(groups=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    run_dir = tmp_path / name
    run_dir.mkdir()
    model.save(run_dir / "best.keras")
    (run_dir / "preprocessing.json").write_text(json.dumps(PREPROCESSING))
    return run_dir


def _tree(root):
    """{relative path: sha256} of every file under ``root``."""
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def _export(run_dir, out, formats=()):
    return export_script.export_all(
        load.load_model(run_dir), out, load.load_preprocessing(run_dir), formats=formats
    )


def _stagings(out):
    return sorted(p for p in os.listdir(out.parent) if p.startswith(f"{out.name}.tmp-"))


def test_failed_export_leaves_old_folder_byte_identical(tmp_path, rng, monkeypatch):
    out = tmp_path / "exported"
    _export(_model_dir(tmp_path, rng), out, formats=("onnx",))
    before = _tree(out)
    assert "model.onnx" in before and "model.keras" in before

    def mismatch(path, *args):
        raise export.ExportMismatchError(f"{path}: output 'logits' differs from Keras by 1")

    monkeypatch.setattr(export, "verify_onnx", mismatch)
    other = _model_dir(tmp_path, rng, "other")
    with pytest.raises(export_script.ExportError) as caught:
        _export(other, out, formats=("onnx",))
    message = str(caught.value)
    assert f"{out}/model.onnx: output 'logits'" in message and "left as it was" in message
    assert _tree(out) == before
    assert _stagings(out) == []


def test_reexport_without_onnx_leaves_no_stale_onnx(tmp_path, rng):
    out = tmp_path / "exported"
    run_dir = _model_dir(tmp_path, rng)
    _export(run_dir, out, formats=("onnx",))
    assert (out / "model.onnx").exists()
    report = _export(run_dir, out, formats=())
    assert sorted(os.listdir(out)) == sorted(
        [
            "saved_model",
            "model.keras",
            "preprocessing.json",
            "check_images.npy",
            "export_report.json",
        ]
    )
    assert set(report["max_abs_difference"]) == {"saved_model", "model.keras"}
    assert _stagings(out) == []


def test_output_dir_with_foreign_files_is_refused_untouched(tmp_path, rng):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_bytes(rng.bytes(50))
    before = _tree(out)
    with pytest.raises(ValueError, match=r"--output_dir=.*mine holds files that are not an export"):
        _export(_model_dir(tmp_path, rng), out)
    assert _tree(out) == before


def test_sweep_removes_only_stagings_whose_writer_is_gone(tmp_path, monkeypatch):
    target = tmp_path / "exported"
    dead = tmp_path / "exported.tmp-4242"
    (dead / "saved_model").mkdir(parents=True)
    (tmp_path / "exported.tmp-x").mkdir()  # not our pattern
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    with staging_lib.staging(target) as live:
        assert not dead.exists()
        assert os.path.isdir(live)
        assert staging_lib.sweep_stagings(target) == []  # the live one is locked
        assert os.path.isdir(live)
    assert not os.path.exists(live)
    assert (tmp_path / "exported.tmp-x").is_dir()
    assert len(warnings) == 1 and str(dead) in warnings[0]


def test_export_killed_while_staging_keeps_old_folder_and_is_swept(tmp_path, rng):
    out = tmp_path / "exported"
    run_dir = _model_dir(tmp_path, rng)
    _export(run_dir, out)
    before = _tree(out)
    command = [
        sys.executable,
        "-m",
        "gn_keras.train.export",
        f"--trained_model={run_dir}",
        f"--output_dir={out}",
        "--format=onnx",
        "--format=tflite",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _stagings(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(float(rng.uniform(0.0, 1.5)))  # a random moment of the staging
    assert process.poll() is None, "the export ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert _tree(out) == before
    assert _stagings(out), "a killed export leaves its staging"

    done = forked_cli.run(command[:-2], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left by an interrupted write" in done.stderr
    assert _stagings(out) == []
    assert "saved_model: verified" in done.stdout
