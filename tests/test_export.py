"""Exported SavedModel, ONNX and LiteRT files, run by runtimes we did not write.

One small GN classifier is trained a few steps and exported once per module;
each test then runs the artefact with TensorFlow's ``saved_model_cli``, a
fresh ``tf.saved_model.load`` process, ONNX Runtime or the LiteRT
interpreter, and compares with the Keras model on inputs normalised here in
float64 NumPy (not by the exporter's own reference code).
"""

import json
import os
import shutil
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SESSION_SEED
from subprocess_utils import run_python

from gn_keras import GroupNormalization, export, load, transfer

SIZE, CHANNELS, CLASSES = 12, 3, 4
PREPROCESSING = {
    "image_size": [SIZE, SIZE],
    "channels": CHANNELS,
    "mean": [125.3, 123.0, 113.9],
    "std": [63.0, 62.1, 66.7],
    "data_format": "channels_last",
    "num_classes": CLASSES,
    "class_names": None,
}


def _small_classifier():
    """A two-stage GN network whose stage outputs carry the zoo's C names."""
    inputs = keras.Input((SIZE, SIZE, CHANNELS))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    x = GroupNormalization(groups=4, name="stem_gn")(x)
    x = keras.layers.ReLU(name="C2")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="res3_conv")(x)
    x = GroupNormalization(groups=4, name="res3_gn")(x)
    x = keras.layers.ReLU(name="C3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(x), name="tiny")


def _normalize(images):
    mean, std = np.array(PREPROCESSING["mean"]), np.array(PREPROCESSING["std"])
    return ((images.astype(np.float64) - mean) / std).astype(np.float32)


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _images(rng, batch):
    return rng.integers(0, 256, (batch, SIZE, SIZE, CHANNELS), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, export_dir): a classifier trained 2 epochs, then exported."""
    rng = np.random.default_rng([SESSION_SEED, zlib.crc32(b"test_export.trained")])
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    model = _small_classifier()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = _images(rng, 32)
    model.fit(_normalize(images), rng.integers(0, CLASSES, 32), epochs=2, batch_size=8, verbose=0)
    export_dir = tmp_path_factory.mktemp("export") / "saved_model"
    report = export.export_saved_model(model, export_dir, PREPROCESSING)
    assert set(report) == {"serving_default", "serving_uint8", "features"}
    return model, export_dir


def _saved_model_cli(*args):
    """TensorFlow's own CLI: the console script installed beside python."""
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable))
    cli = cli or shutil.which("saved_model_cli")
    done = subprocess.run(
        [cli, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_saved_model_cli_show_and_run_give_keras_top1(trained, rng, tmp_path):
    model, export_dir = trained
    shown = _saved_model_cli("show", "--dir", str(export_dir), "--all")
    for signature in ("serving_default", "serving_uint8", "features"):
        assert f"signature_def['{signature}']" in shown
    assert "shape: (-1, 12, 12, 3)" in shown and "DT_UINT8" in shown

    images = _images(rng, 6)
    want = np.argmax(model(_normalize(images)).numpy(), axis=-1)
    np.save(tmp_path / "images.npy", images)
    _saved_model_cli(
        "run",
        "--dir",
        str(export_dir),
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_uint8",
        "--inputs",
        f"images={tmp_path / 'images.npy'}",
        "--outdir",
        str(tmp_path / "out"),
    )
    np.testing.assert_array_equal(np.argmax(np.load(tmp_path / "out" / "logits.npy"), -1), want)
    np.testing.assert_array_equal(
        np.argmax(np.load(tmp_path / "out" / "probabilities.npy"), -1), want
    )


def test_fresh_process_loads_at_another_batch_size_with_core_ops_only(trained, rng, tmp_path):
    model, export_dir = trained
    images = _images(rng, 5)  # the export traced and verified a batch of 3
    np.save(tmp_path / "images.npy", images)
    extra = export_dir / "assets.extra"
    assert json.loads((extra / "preprocessing.json").read_text())["mean"] == PREPROCESSING["mean"]
    # TensorFlow alone (no gn_keras, no custom-op library) must know every
    # op in the graph, as TensorFlow Serving would.
    unknown = run_python(f"""
        import numpy as np, tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2
        from tensorflow.python.framework import op_def_registry
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(open({str(export_dir / "saved_model.pb")!r}, "rb").read())
        ops = set()
        for graph in proto.meta_graphs:
            ops |= {{node.op for node in graph.graph_def.node}}
            for function in graph.graph_def.library.function:
                ops |= {{node.op for node in function.node_def}}
        assert "Conv2D" in ops and "Rsqrt" in ops, sorted(ops)
        loaded = tf.saved_model.load({str(export_dir)!r})
        images = np.load({str(tmp_path / "images.npy")!r})
        outputs = loaded.signatures["serving_uint8"](images=tf.constant(images))
        features = loaded.signatures["features"](images=tf.constant(images, tf.float32))
        np.savez({str(tmp_path / "out.npz")!r}, logits=outputs["logits"].numpy(),
                 probabilities=outputs["probabilities"].numpy(),
                 pooled=features["pooled"].numpy(), C3=features["C3"].numpy())
        print(sorted(op for op in ops if op_def_registry.get(op) is None))
    """)
    assert unknown.strip().splitlines()[-1] == "[]"
    got = np.load(tmp_path / "out.npz")
    x = _normalize(images)
    logits = model(x).numpy().astype(np.float64)
    np.testing.assert_allclose(got["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"], _softmax(logits), rtol=1e-5, atol=1e-6)
    pooled = keras.Model(model.input, model.get_layer("pool").output)(x).numpy()
    stage3 = keras.Model(model.input, model.get_layer("C3").output)(x).numpy()
    np.testing.assert_allclose(got["pooled"], pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["C3"], stage3, rtol=1e-5, atol=1e-5)


def _run_onnx(path, images):
    """(logits, probabilities) of the ONNX file, run by ONNX Runtime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits", "probabilities"], {"images": images.astype(np.float32)})


def test_onnx_runtime_matches_keras(trained, rng, tmp_path):
    model, _ = trained
    path = export.export_onnx(model, tmp_path / "model.onnx", PREPROCESSING)
    export.verify_onnx(path, model, PREPROCESSING)
    images = _images(rng, 7)
    logits, probabilities = _run_onnx(path, images)
    want = model(_normalize(images)).numpy().astype(np.float64)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probabilities, _softmax(want), rtol=1e-5, atol=1e-6)


def test_litert_interpreter_matches_keras(trained, rng, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, export_dir = trained
    path = export.export_tflite(model, tmp_path / "model.tflite", PREPROCESSING)
    export.verify_tflite(path, model, PREPROCESSING)
    images = _images(rng, 2)
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    got = runner(images=images.astype(np.float32))
    want = model(_normalize(images)).numpy().astype(np.float64)
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"], _softmax(want), rtol=1e-5, atol=1e-6)


def test_verification_fails_loudly_when_artefact_differs(trained, tmp_path):
    model, export_dir = trained
    altered = keras.models.clone_model(model)
    altered.set_weights([w * 1.01 for w in model.get_weights()])
    with pytest.raises(export.ExportMismatchError, match=r"serving_default.*differs from Keras"):
        export.verify_saved_model(export_dir, altered, PREPROCESSING)


def test_saved_model_rebuilds_into_trainable_keras_model(trained, rng):
    model, export_dir = trained
    rebuilt = load.load_model(export_dir)
    x = _normalize(_images(rng, 3))
    np.testing.assert_array_equal(rebuilt(x).numpy(), model(x).numpy())
    gammas = [w for w in rebuilt.trainable_weights if w.path.endswith("gamma")]
    assert len(gammas) == 2
    before = [g.numpy().copy() for g in gammas]
    rebuilt.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rebuilt.train_on_batch(x, rng.integers(0, CLASSES, 3))
    assert all(np.any(g.numpy() != b) for g, b in zip(gammas, before))


def test_softmax_model_gets_log_probability_logits(rng, tmp_path):
    inputs = keras.Input((SIZE, SIZE, CHANNELS))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = GroupNormalization(groups=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    export.export_saved_model(model, tmp_path / "sm", PREPROCESSING)
    images = _images(rng, 2)
    got = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_uint8"](
        images=tf.constant(images)
    )
    probabilities = model(_normalize(images)).numpy()
    np.testing.assert_allclose(got["probabilities"].numpy(), probabilities, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        _softmax(got["logits"].numpy().astype(np.float64)), probabilities, rtol=1e-4, atol=1e-7
    )


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            {"image_size": [SIZE + 2, SIZE]},
            r"takes inputs .*12, 12, 3.* but preprocessing gives .*14, 12, 3",
        ),
        (
            {"num_classes": CLASSES + 1},
            r"outputs shape \(None, 4\) but preprocessing says num_classes=5",
        ),
        ({"std": [1.0, 0.0, 1.0]}, r"`std` must be positive"),
        ({"mean": [0.0, 0.0]}, r"`mean` must list 3 numbers"),
    ],
)
def test_mismatched_preprocessing_is_a_clear_error(trained, tmp_path, change, pattern):
    model, _ = trained
    with pytest.raises(ValueError, match=pattern):
        export.export_saved_model(model, tmp_path / "sm", {**PREPROCESSING, **change})


def test_missing_and_truncated_files_name_the_file(trained, tmp_path):
    model, export_dir = trained
    with pytest.raises(load.ModelFileError, match=r"nowhere\.keras: no such file"):
        load.load_model(tmp_path / "nowhere.keras")
    model.save(tmp_path / "whole.keras")
    data = (tmp_path / "whole.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(load.ModelFileError, match=r"cut\.keras: cannot read the Keras model"):
        load.load_model(tmp_path / "cut.keras")
    broken = tmp_path / "broken_sm"
    broken.mkdir()
    (broken / "assets.extra").mkdir()
    (broken / "assets.extra" / "keras_model.json").write_text(model.to_json())
    pb = (export_dir / "saved_model.pb").read_bytes()
    (broken / "saved_model.pb").write_bytes(pb[: len(pb) // 3])
    with pytest.raises(load.ModelFileError, match=r"broken_sm: cannot read the SavedModel"):
        load.load_model(broken)
    with pytest.raises(load.ModelFileError, match=r"holds no model"):
        load.load_model(tmp_path / "broken_sm" / "assets.extra")


def test_features_of_a_zoo_model(rng):
    """The features signature's endpoints, for a network of the zoo."""
    from gn_keras import models

    zoo = models.build(
        "resnet20", norm="gn", groups=8, num_classes=CLASSES, input_shape=(SIZE, SIZE, CHANNELS)
    )
    features = transfer.feature_model(zoo)
    assert list(features.output) == ["pooled", "C1", "C2", "C3", "C4"]
    x = _normalize(_images(rng, 2))
    got = features(x)
    zoo_endpoints = models.feature_endpoints(zoo)  # the zoo's own reading of its marks
    for name in ("C2", "C3", "C4"):
        want = keras.Model(zoo.input, zoo_endpoints[name])(x).numpy()
        np.testing.assert_array_equal(got[name].numpy(), want)
    stem = keras.Model(zoo.input, zoo.get_layer("conv1_relu").output)(x).numpy()
    np.testing.assert_array_equal(got["C1"].numpy(), stem)


def _mixed_classifier(rng, policy):
    """The small classifier computing in 16 bits, with random float32 weights."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = _small_classifier()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(
        [rng.normal(0, 0.5, size=w.shape).astype("float32") for w in mixed.get_weights()]
    )
    return mixed


def _epsilon(dtype):
    """Gap between 1 and the next value of a 16-bit float: 1's bits plus one."""
    as_numpy = tf.as_dtype(dtype).as_numpy_dtype
    one = np.array([1.0], as_numpy)
    return float((one.view(np.uint16) + np.uint16(1)).view(as_numpy).astype(np.float64)[0]) - 1.0


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_16_bit_model_verifies_with_a_tolerance_from_its_epsilon(
    rng, tmp_path, monkeypatch, policy
):
    mixed = _mixed_classifier(rng, policy)
    eps = _epsilon(mixed.get_layer("stem_conv").compute_dtype)
    assert export.default_tolerance(mixed) == pytest.approx(
        export.ROUNDINGS_ALLOWED * eps, rel=1e-6
    )
    assert export.default_tolerance(_small_classifier()) == export.DEFAULT_TOLERANCE
    report = export.export_saved_model(mixed, tmp_path / "sm", PREPROCESSING)  # verifies
    assert set(report) == {"serving_default", "serving_uint8", "features"}
    # An explicit tolerance wins over the default in every comparison.
    used = []
    original = export.compare
    monkeypatch.setattr(
        export,
        "compare",
        lambda artefact, got, want, tolerance: (
            used.append(tolerance) or original(artefact, got, want, tolerance)
        ),
    )
    export.verify_saved_model(tmp_path / "sm", mixed, PREPROCESSING, tolerance=0.5)
    assert used == [0.5] * 3


def test_mixed_precision_model_exports_and_litert_gets_float32(rng, tmp_path):
    mixed = _mixed_classifier(rng, "mixed_float16")
    reference = _small_classifier()  # the same network computing in float32
    reference.set_weights(mixed.get_weights())
    export.export_saved_model(mixed, tmp_path / "sm", PREPROCESSING)
    path = export.export_tflite(mixed, tmp_path / "model.tflite", PREPROCESSING)
    from ai_edge_litert.interpreter import Interpreter

    images = _images(rng, 3)
    got = Interpreter(model_path=str(path)).get_signature_runner("serving_default")(
        images=images.astype(np.float32)
    )
    want = reference(_normalize(images)).numpy()
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)
    assert mixed.get_layer("stem_conv").compute_dtype == "float16"


def test_mixed_bfloat16_model_exports_to_onnx_runtime(rng, tmp_path):
    """ONNX Runtime has no bfloat16 Conv: the export must hold the float32 twin."""
    mixed = _mixed_classifier(rng, "mixed_bfloat16")
    assert mixed.get_layer("stem_conv").compute_dtype == "bfloat16"
    path = export.export_onnx(mixed, tmp_path / "model.onnx", PREPROCESSING)
    export.verify_onnx(path, mixed, PREPROCESSING)
    images = _images(rng, 5)
    logits, probabilities = _run_onnx(path, images)
    want = mixed(_normalize(images)).numpy().astype(np.float64)
    allowed = export.default_tolerance(mixed) * max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(logits, want, rtol=0, atol=allowed)
    np.testing.assert_allclose(
        probabilities, _softmax(want), rtol=0, atol=export.default_tolerance(mixed)
    )
    # Closer still to the same network computing in float32, which it is.
    reference = _small_classifier()
    reference.set_weights(mixed.get_weights())
    np.testing.assert_allclose(logits, reference(_normalize(images)).numpy(), rtol=1e-5, atol=1e-5)
