"""An end-to-end run of a small GN network on digits and everything it leaves behind.

The zoo's models go through the same path in the command-line tests
(``test_train_resume.py``, ``test_train_multiworker.py``); a two-conv GN
network keeps this file fast.

The reported validation error is recomputed here from ``last.keras`` on the
fixed digits split preprocessed in NumPy, the SavedModel is run on raw
pixels, and TensorBoard's event files are read back.
"""

import glob
import json
import os
import statistics
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SESSION_SEED
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from test_train_optimizer import softmax_cross_entropy

from gn_keras import GroupNormalization
from gn_keras.train import classify
from gn_keras.train import config as config_lib

EPOCHS = 3


def small_gn_network(config, preprocessing):
    """conv-GN-ReLU ×2 (16, 32 channels, 4 groups), pooled, dense logits."""
    x = inputs = keras.Input((*preprocessing["image_size"], preprocessing["channels"]))
    for index, width in enumerate((16, 32)):
        x = keras.layers.Conv2D(
            width, 3, strides=1 + index, padding="same", use_bias=False, name=f"conv{index}"
        )(x)
        x = GroupNormalization(groups=4, name=f"gn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(preprocessing["num_classes"], name="logits")(x)
    return keras.Model(inputs, logits, name="small_gn")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("digits") / "run")
    seed = int(
        np.random.default_rng([SESSION_SEED, zlib.crc32(b"test_train_e2e.run")]).integers(1000)
    )
    config = config_lib.make_config(
        model="small_gn",
        image_size=8,
        epochs=EPOCHS,
        warmup_epochs=0,
        model_dir=model_dir,
        seed=seed,
    )
    return config, classify.train(config, build_model=small_gn_network)


def digits_validation_split():
    """The split the data module promises: stratified 80/20, random_state=0."""
    digits = load_digits()
    _, images, _, labels = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return images.astype(np.float64) * 255 / 16, labels


def read_scalars(directory):
    scalars = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                scalars.setdefault(value.tag, {})[event.step] = float(tensor)
    return scalars


def test_run_learns_and_writes_a_complete_results_file(run):
    config, results = run
    on_disk = json.load(open(os.path.join(config.model_dir, "results.json")))
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["flags"] == config.as_dict()
    assert [e["epoch"] for e in on_disk["epochs"]] == list(range(EPOCHS))
    errors = [e["val"]["top1_error"] for e in on_disk["epochs"]]
    assert errors[-1] < 0.5  # chance is 0.9 for ten balanced classes
    assert on_disk["final_top1_error"] == errors[-1]
    assert on_disk["median_last5_top1_error"] == pytest.approx(statistics.median(errors))
    assert on_disk["best_top1_error"] == min(errors)
    assert on_disk["images_per_sec"] > 0 and on_disk["global_batch_size"] == 32
    assert on_disk["steps_per_epoch"] == 1437 // 32 and on_disk["eval_steps"] == 12
    train_losses = [e["train"]["loss"] for e in on_disk["epochs"]]
    assert train_losses[-1] < train_losses[0]


def test_reported_validation_error_matches_last_keras_on_numpy_preprocessed_digits(run):
    config, results = run
    preprocessing = json.load(open(os.path.join(config.model_dir, "preprocessing.json")))
    assert preprocessing["image_size"] == [8, 8] and preprocessing["channels"] == 1
    assert preprocessing["num_classes"] == 10 and preprocessing["data_format"] == "channels_last"
    pixels, labels = digits_validation_split()
    inputs = (pixels[..., None] - preprocessing["mean"][0]) / preprocessing["std"][0]
    model = keras.saving.load_model(os.path.join(config.model_dir, "last.keras"))
    logits = model.predict(inputs.astype("float32"), verbose=0).astype(np.float64)
    error = np.mean(logits.argmax(1) != labels)
    assert results["final_top1_error"] == pytest.approx(error, abs=0.5 / len(labels))
    loss = softmax_cross_entropy(logits, labels)
    assert results["epochs"][-1]["val"]["loss"] == pytest.approx(loss, rel=1e-4)
    top5 = np.mean([label not in np.argsort(row)[-5:] for row, label in zip(logits, labels)])
    assert results["final_top5_error"] == pytest.approx(top5, abs=0.5 / len(labels))
    best = keras.saving.load_model(os.path.join(config.model_dir, "best.keras"))
    best_error = np.mean(best.predict(inputs.astype("float32"), verbose=0).argmax(1) != labels)
    assert results["best_top1_error"] == pytest.approx(best_error, abs=0.5 / len(labels))


def test_saved_model_serves_raw_pixels(run):
    config, _ = run
    pixels, _ = digits_validation_split()
    preprocessing = json.load(open(os.path.join(config.model_dir, "preprocessing.json")))
    loaded = tf.saved_model.load(os.path.join(config.model_dir, "saved_model"))
    served = loaded.signatures["serving_default"](
        images=tf.constant(pixels[:16, ..., None], tf.float32)
    )
    model = keras.saving.load_model(os.path.join(config.model_dir, "last.keras"))
    normalized = (pixels[:16, ..., None] - preprocessing["mean"][0]) / preprocessing["std"][0]
    expected = model.predict(normalized.astype("float32"), verbose=0)
    np.testing.assert_allclose(served["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(served["probabilities"].numpy().sum(1), 1.0, rtol=1e-5)


def test_tensorboard_logs_hold_epoch_and_step_scalars(run):
    config, results = run
    board = os.path.join(config.model_dir, "tensorboard")
    train, val = (
        read_scalars(os.path.join(board, "train")),
        read_scalars(os.path.join(board, "val")),
    )
    for epoch, record in enumerate(results["epochs"]):
        assert val["epoch/top1_error"][epoch] == pytest.approx(record["val"]["top1_error"])
        assert val["epoch/top5_error"][epoch] == pytest.approx(record["val"]["top5_error"])
        assert train["epoch/loss"][epoch] == pytest.approx(record["train"]["loss"])
        assert train["epoch/learning_rate"][epoch] == pytest.approx(record["learning_rate"])
    assert sorted(train["step/loss"]) == list(range(0, EPOCHS * 44, 10))
    assert train["step/learning_rate"][0] == pytest.approx(0.1)


def tiny_model(width):
    def build(config, preprocessing):
        inputs = keras.Input((*preprocessing["image_size"], preprocessing["channels"]))
        x = keras.layers.Conv2D(width, 3, padding="same", name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))

    return build


def test_resuming_a_model_dir_with_another_model_is_refused(tmp_path):
    config = config_lib.make_config(
        image_size=8,
        epochs=1,
        steps_per_epoch=2,
        eval_steps=1,
        warmup_epochs=0,
        model_dir=str(tmp_path / "run"),
    )
    classify.train(config, build_model=tiny_model(4))
    again = config_lib.make_config(
        **{
            **config.as_dict(),
            "epochs": 2,
            "extend_epochs": True,  # past the settings check, to the checkpoint's own
            "lr_boundaries": tuple(config.lr_boundaries),
        }
    )
    with pytest.raises(ValueError, match=r"--model_dir=.*holds checkpoint .* different model"):
        classify.train(again, build_model=tiny_model(6))


@pytest.mark.parametrize(
    "fields, per_stage",
    [({}, (2, 4, 8)), ({"group_size": 4}, (4, 4, 4)), ({"groups": 16}, (1, 2, 4))],
)
def test_zoo_model_gets_the_grouping_flags(fields, per_stage):
    """Channels per group in ResNet-20's 16/32/64-channel stages."""
    config = config_lib.make_config(**fields)
    model = classify.build_zoo_model(
        config, {"image_size": [16, 16], "channels": 1, "num_classes": 10}
    )
    sizes = {
        layer.gamma.shape[0] // layer.resolved_groups
        for layer in model.layers
        if isinstance(layer, GroupNormalization)
    }
    widths = sorted(
        {layer.gamma.shape[0] for layer in model.layers if isinstance(layer, GroupNormalization)}
    )
    assert widths == [16, 32, 64]
    assert sizes == set(per_stage)
