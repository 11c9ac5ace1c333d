"""The video SavedModel: uint8 clips in, logits and probabilities out.

Checked by reloading it in a fresh Python process against the Keras
model's outputs saved by the test, by ``saved_model_cli show``, and under
both mixed-precision policies.
"""

import json
import shutil
import subprocess

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from subprocess_utils import run_python

import gn_keras
from gn_keras import export as image_export
from gn_keras import models
from gn_keras.train.video import export

CLIP = (4, 16, 16, 3)
PREPROCESSING = {
    "clip_shape": list(CLIP[:3]),
    "channels": 3,
    "mean": [120.0, 110.0, 100.0],
    "std": [60.0, 55.0, 50.0],
    "num_classes": 5,
}


def _model(rng, name="resnet20_i3d", shape=CLIP, randomize=True):
    model = models.build(name, num_classes=5, input_shape=shape, groups=8, zero_init_residual=False)
    for variable in model.weights if randomize else ():  # away from init so every layer matters
        values = rng.normal(size=variable.shape) * 0.1
        if variable.name in ("gamma", "moving_variance"):
            values = rng.uniform(0.5, 1.5, variable.shape)
        variable.assign(values.astype("float32"))
    return model


def _keras_outputs(model, clips):
    mean, std = (np.array(PREPROCESSING[k], np.float32) for k in ("mean", "std"))
    logits = np.asarray(model((clips.astype(np.float32) - mean) / std), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return logits, exp / exp.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One float32 export shared by the tests below (exports are slow on 2 cores)."""
    directory = tmp_path_factory.mktemp("video_export")
    model = _model(np.random.default_rng(int(np.random.randint(1 << 30))))
    report = export.export_video_saved_model(model, directory / "sm", PREPROCESSING)
    return model, directory, report


def test_export_reloads_in_a_fresh_process(rng, exported):
    model, tmp_path, report = exported
    assert set(report) == {"logits", "probabilities"}
    clips = rng.integers(0, 256, (3, *CLIP), dtype=np.uint8)
    views = rng.integers(0, 256, (2, 3, *CLIP), dtype=np.uint8)
    np.save(tmp_path / "clips.npy", clips)
    np.save(tmp_path / "views.npy", views)
    out = run_python(
        f"""
        import json, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(tmp_path / "sm")!r})
        clips = np.load({str(tmp_path / "clips.npy")!r})
        views = np.load({str(tmp_path / "views.npy")!r})
        served = loaded.signatures["serving_default"](clips=tf.constant(clips))
        averaged = loaded.signatures["views"](views=tf.constant(views))["probabilities"]
        ops = {{node.op for f in loaded.signatures["serving_default"].graph.as_graph_def()
               .library.function for node in f.node_def}}
        print(json.dumps({{"logits": served["logits"].numpy().tolist(),
                          "probabilities": served["probabilities"].numpy().tolist(),
                          "averaged": averaged.numpy().tolist(), "ops": sorted(ops)}}))
        """
    )
    result = json.loads(out.strip().splitlines()[-1])
    logits, probabilities = _keras_outputs(model, clips)
    np.testing.assert_allclose(result["logits"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
    flat_logits, _ = _keras_outputs(model, views.reshape(-1, *CLIP))
    exp = np.exp(flat_logits - flat_logits.max(-1, keepdims=True))
    mean_softmax = (exp / exp.sum(-1, keepdims=True)).reshape(2, 3, 5).mean(1)
    np.testing.assert_allclose(result["averaged"], mean_softmax, rtol=1e-4, atol=1e-6)
    assert "Conv3D" in result["ops"]
    assert not [op for op in result["ops"] if "GroupNorm" in op or op.startswith("Gn")]


def test_saved_model_cli_shows_the_uint8_clip_signature(exported):
    _, tmp_path, _ = exported
    cli = shutil.which("saved_model_cli")
    assert cli, "saved_model_cli is installed with TensorFlow"
    shown = subprocess.run(
        [
            cli,
            "show",
            "--dir",
            str(tmp_path / "sm"),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "inputs['clips'] tensor_info:" in shown
    assert "dtype: DT_UINT8" in shown and "shape: (-1, 4, 16, 16, 3)" in shown
    assert "outputs['logits']" in shown and "outputs['probabilities']" in shown
    assert "shape: (-1, 5)" in shown


# Both policies on the small model, whose res2 temporal pool is the
# VideoMaxPooling3D that float16 failed without.  ResNet-50 I3D is not
# exported here (a minute on 2 cores for the same export code): its float16
# stem pool and blocks are run by
# test_models_video.py::test_every_3d_model_trains_under_mixed_precision.
@pytest.mark.parametrize(
    "name,shape,policy",
    [
        ("resnet20_i3d", CLIP, "mixed_float16"),
        ("resnet20_i3d", CLIP, "mixed_bfloat16"),
    ],
)
def test_3d_models_export_under_mixed_precision(rng, tmp_path, policy, name, shape):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        # He init: random weights of scale 0.1 blow 50 float16 layers up far
        # beyond what the float16 tolerance is meant for.
        model = _model(rng, name, shape, randomize=False)
    finally:
        keras.config.set_dtype_policy(previous)
    prep = {**PREPROCESSING, "clip_shape": list(shape[:3])}
    export.export_video_saved_model(model, tmp_path / "sm", prep, verify=False)
    clips = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    served = loaded.signatures["serving_default"](clips=tf.constant(clips))["logits"].numpy()
    assert served.dtype == np.float32
    # TF's graph runtime rounds 16-bit convolutions differently from eager
    # calls (3-5x Keras's eager gap to float32 on this network), so the
    # SavedModel is compared with the same Keras model traced as a graph:
    # one rounding of the logits at most.  Eager 16-bit stays near float32.
    float32_logits, _ = _keras_outputs(image_export.float32_copy(model), clips)
    keras_logits, _ = _keras_outputs(model, clips)
    with gn_keras.portable_ops():
        graph_logits, _ = _keras_outputs(tf.function(model), clips)
    scale = np.abs(float32_logits).max()
    eps = float(ml_dtypes.finfo(policy.split("_")[1]).eps)
    assert np.abs(served - graph_logits).max() <= eps * scale
    assert np.abs(keras_logits - float32_logits).max() <= 0.05 * scale  # 16-bit, not broken
    tolerance = image_export.default_tolerance(model) * max(1.0, scale)
    assert np.abs(served - float32_logits).max() <= tolerance
    # ... which is what the export's own verification allows.
    export.verify_video_saved_model(tmp_path / "sm", model, prep, batch=clips)


def test_export_rejects_a_model_of_other_clips(rng, tmp_path):
    prep = {**PREPROCESSING, "clip_shape": [8, 16, 16]}
    with pytest.raises(ValueError, match=r"takes clips \(4, 16, 16, 3\) but preprocessing gives"):
        export.export_video_saved_model(_model(rng), tmp_path / "sm", prep)
