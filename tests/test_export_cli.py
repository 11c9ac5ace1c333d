"""``python -m gn_keras.train.export`` end to end, in a subprocess as a user runs it.

The export of a missing file runs once per module: its one-line error and
the absent "failed call to cuInit" line (train/cli.py) are two checks of the
same run.  TensorFlow's CUDA build logs that line whenever it first looks
for GPUs, and a callback it registers with absl looks at every ``app.run``;
the scripts look once first with stderr captured.  The cuInit check compares
with a bare absl app on the same machine, which must show the line (else the
check proves nothing).
"""

import glob
import json
import os
import subprocess
import sys
import textwrap

import forked_cli
import keras
import numpy as np
import onnxruntime
import pytest

from gn_keras import GroupNormalization

SIZE, CLASSES = 10, 3
PREPROCESSING = {
    "image_size": [SIZE, SIZE],
    "channels": 1,
    "mean": [40.0],
    "std": [30.0],
    "data_format": "channels_last",
    "num_classes": CLASSES,
    "class_names": ["a", "b", "c"],
}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_export(*args):
    return forked_cli.run(
        [sys.executable, "-m", "gn_keras.train.export", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def _training_dir(tmp_path, rng):
    """A directory laid out as a training run leaves it."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = GroupNormalization(groups=2)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(run_dir / "best.keras")
    (run_dir / "preprocessing.json").write_text(json.dumps(PREPROCESSING))
    return model, run_dir


def test_export_command_writes_verified_artefacts(tmp_path, rng):
    model, run_dir = _training_dir(tmp_path, rng)
    out = tmp_path / "exported"
    done = _run_export(f"--trained_model={run_dir}", f"--output_dir={out}", "--format=onnx")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onnx: verified" in done.stdout
    for name in (
        "saved_model/saved_model.pb",
        "model.keras",
        "preprocessing.json",
        "model.onnx",
        "check_images.npy",
        "export_report.json",
    ):
        assert (out / name).exists(), name
    assert not (out / "model.tflite").exists()
    images = np.load(out / "check_images.npy")
    normalized = (images.astype(np.float64) - 40.0) / 30.0
    logits = model(normalized.astype(np.float32)).numpy()
    report = json.loads((out / "export_report.json").read_text())
    assert report["check_top1"] == np.argmax(logits, -1).tolist()
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    onnx_logits = session.run(["logits"], {"images": images.astype(np.float32)})[0]
    np.testing.assert_allclose(onnx_logits, logits, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def missing_model_export(tmp_path_factory):
    """(source, completed): gn-export run on a .keras file that does not exist."""
    tmp_path = tmp_path_factory.mktemp("missing")
    source = tmp_path / "run" / "missing.keras"
    return source, _run_export(f"--trained_model={source}", f"--output_dir={tmp_path / 'out'}")


@pytest.mark.parametrize("problem", ["missing", "truncated", "class_count"])
def test_bad_input_is_one_line_error_without_traceback(tmp_path, rng, problem, request):
    if problem == "missing":
        source, done = request.getfixturevalue("missing_model_export")
        expected = f"{source}: no such file or directory."
    else:
        model, run_dir = _training_dir(tmp_path, rng)
        source = run_dir / "best.keras"
        expected = f"{source}: cannot read the Keras model"
        if problem == "truncated":
            data = source.read_bytes()
            source.write_bytes(data[: len(data) * 2 // 3])
        else:
            (run_dir / "preprocessing.json").write_text(
                json.dumps({**PREPROCESSING, "num_classes": 10})
            )
            expected = "outputs shape (None, 3) but preprocessing says num_classes=10"
        done = _run_export(f"--trained_model={source}", f"--output_dir={tmp_path / 'out'}")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gn-export: error: ") and expected in last, done.stderr[-2000:]


@pytest.mark.skipif(
    bool(glob.glob("/dev/nvidia*")), reason="the line is kept where a GPU device exists"
)
def test_a_script_hides_the_cuinit_line_a_bare_absl_app_shows(missing_model_export):
    bare = textwrap.dedent("""
        import tensorflow
        from absl import app
        app.run(lambda argv: None)
    """)
    bare_stderr = subprocess.run(
        [sys.executable, "-c", bare], capture_output=True, text=True, timeout=300
    ).stderr
    assert "failed call to cuInit" in bare_stderr, "no CUDA probe here: nothing to hide"
    _, done = missing_model_export
    assert done.returncode == 1, done.stderr
    assert "failed call to cuInit" not in done.stderr
    assert "gn-export: error:" in done.stderr
