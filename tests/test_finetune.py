"""Fine-tuning from a trained GN model: the CLI, resume, mismatches, TFSMLayer.

A tiny GN network is pre-trained once per module on sklearn's digits (as a
folder of PNGs, through ``train.classify``), then fine-tuned to the
re-labelled task even/odd.  Accuracy is measured here on the held-out images
with our own NumPy normalization, not taken from the run's own metrics.
"""

import json
import logging
import os
import sys
import zlib

import forked_cli
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SESSION_SEED
from PIL import Image
from sklearn.datasets import load_digits
from test_train_checkpoints import _damage, _kept_checkpoints

from gn_keras import GroupNormalization, load
from gn_keras.train import classify, finetune
from gn_keras.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
COMMON = dict(
    dataset="folder", image_size=SIZE, augment="none", warmup_epochs=0.0, log_every_steps=1000
)


def _write_folders(root):
    """digits/<0..9>/ and parity/<even|odd>/ holding the same PNG images."""
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = (image * (255.0 / 16.0)).astype(np.uint8)
        for task, name in (("digits", str(label)), ("parity", ("even", "odd")[label % 2])):
            folder = root / task / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return root / "digits", root / "parity"


def _tiny_gn_network(config, preprocessing):
    """Stem conv1_* and one stage marked C2, named as the zoo names them."""
    height, width = preprocessing["image_size"]
    inputs = keras.Input((height, width, preprocessing["channels"]))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1_conv")(inputs)
    x = GroupNormalization(groups=4, name="conv1_norm")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="res2_conv")(x)
    x = GroupNormalization(groups=8, name="res2_norm")(x)
    x = keras.layers.ReLU(name="C2")(x)
    x = keras.layers.Flatten(name="pool")(x)
    logits = keras.layers.Dense(preprocessing["num_classes"], name="logits")(x)
    return keras.Model(inputs, logits, name="tiny_gn")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(run_dir, parity_dir): a digits model trained by train.classify."""
    root = tmp_path_factory.mktemp("transfer")
    digits_dir, parity_dir = _write_folders(root)
    seed = zlib.crc32(f"{SESSION_SEED}-pretrain".encode()) % 2**31
    config = config_lib.make_config(
        **COMMON,
        data_dir=str(digits_dir),
        epochs=3,
        batch_size_per_replica=32,
        base_lr=0.1,
        lr_reference_batch=32,
        seed=seed,
        model_dir=str(root / "digits_run"),
    )
    results = classify.train(config, build_model=_tiny_gn_network)
    assert results["final_top1_error"] < 0.3  # a real digits model to start from
    return root / "digits_run", parity_dir


def _held_out_parity(parity_dir):
    """The validation images of the folder source (every 10th file of a class)."""
    images, labels = [], []
    for label, name in enumerate(("even", "odd")):
        files = sorted(os.listdir(parity_dir / name))
        for file in files[9::10]:
            image = np.asarray(Image.open(parity_dir / name / file), np.float64)
            images.append(image)
            labels.append(label)
    return np.stack(images), np.array(labels)


def _accuracy(model, preprocessing, images, labels):
    resized = tf.image.resize(np.repeat(images[..., None], 3, -1), (SIZE, SIZE)).numpy()
    normalized = (resized - np.array(preprocessing["mean"])) / np.array(preprocessing["std"])
    logits = model(normalized.astype(np.float32)).numpy()
    return float(np.mean(np.argmax(logits, -1) == labels))


def _run_cli(*args):
    return forked_cli.run(
        [sys.executable, "-m", "gn_keras.train.finetune", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_cli_finetunes_saved_model_to_parity_beating_chance(pretrained, tmp_path):
    run_dir, parity_dir = pretrained
    out = tmp_path / "parity_run"
    done = _run_cli(
        f"--trained_model={run_dir / 'saved_model'}",
        "--dataset=folder",
        f"--data_dir={parity_dir}",
        f"--image_size={SIZE}",
        "--augment=none",
        "--epochs=1",
        "--steps_per_epoch=150",
        "--base_lr=0.01",
        "--lr_reference_batch=2",
        "--warmup_epochs=0",
        "--freeze_at=1",
        "--freeze_bn",
        f"--model_dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # A GN model has no BN: --freeze_bn warns and the run goes on.
    assert "no BatchNormalization layer" in done.stderr
    report = json.loads((out / "finetune.json").read_text())
    assert report["frozen_layers"] == ["conv1_conv", "conv1_norm"]
    assert report["num_classes"] == 2 and report["frozen_batchnorm_layers"] == 0
    results = json.loads((out / "results.json").read_text())
    assert results["flags"]["batch_size_per_replica"] == 2
    assert results["flags"]["decay_norm_params"] is False

    tuned = load.load_model(out / "best.keras")
    images, labels = _held_out_parity(parity_dir)
    assert _accuracy(tuned, load.load_preprocessing(out), images, labels) > 0.7  # chance: 0.5
    start = load.load_model(run_dir / "saved_model")
    for name in ("conv1_conv", "conv1_norm"):  # frozen by --freeze_at=1
        for before, after in zip(start.get_layer(name).weights, tuned.get_layer(name).weights):
            np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert not np.array_equal(
        start.get_layer("res2_norm").weights[0].numpy(),
        tuned.get_layer("res2_norm").weights[0].numpy(),
    )
    assert isinstance(tuned.get_layer("res2_norm"), GroupNormalization)


def test_rerun_resumes_from_checkpoint_and_skips_a_damaged_one(pretrained, tmp_path, caplog):
    run_dir, parity_dir = pretrained
    model_dir = tmp_path / "run"

    def config(epochs):
        return config_lib.make_config(
            **COMMON,
            data_dir=str(parity_dir),
            epochs=epochs,
            steps_per_epoch=10,
            eval_steps=5,
            batch_size_per_replica=2,
            decay_norm_params=False,
            model_dir=str(model_dir),
            extend_epochs=True,  # each rerun trains the run one epoch longer
        )

    options = finetune.FinetuneOptions(str(run_dir / "best.keras"))
    first = finetune.finetune(config(1), options)
    second = finetune.finetune(config(2), options)
    assert [record["epoch"] for record in second["epochs"]] == [0, 1]
    assert second["epochs"][0] == first["epochs"][0]  # kept, not retrained

    # As gn-train: a damaged newest checkpoint costs its epoch, not the run.
    older, newest = _kept_checkpoints(model_dir)
    _damage(newest, "truncated_data")
    with caplog.at_level(logging.WARNING):
        third = finetune.finetune(config(3), options)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith(f"{newest}: cannot read the checkpoint") and older in m for m in warnings
    ), warnings
    assert [record["epoch"] for record in third["epochs"]] == [0, 1, 2]
    assert third["epochs"][0] == first["epochs"][0]
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    iterations = tf.train.load_variable(latest, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
    assert int(iterations) == 3 * 10

    # None intact: one line from gn-finetune, as from gn-train.
    kept = _kept_checkpoints(model_dir)
    for prefix in kept:
        _damage(prefix, "truncated_data")
    done = _run_cli(
        f"--trained_model={run_dir / 'best.keras'}",
        "--dataset=folder",
        f"--data_dir={parity_dir}",
        f"--image_size={SIZE}",
        "--augment=none",
        "--warmup_epochs=0",
        "--epochs=4",
        "--extend_epochs",
        "--steps_per_epoch=10",
        "--eval_steps=5",
        f"--model_dir={model_dir}",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gn-finetune: error: {kept[-1]}: cannot read the checkpoint"), last
    assert f"no older checkpoint in {model_dir / 'checkpoints'} is intact" in last


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"num_classes": 5}, r"--num_classes=5 but --dataset=folder has 2 classes"),
        (
            {"image_size": 24},
            r"takes images of shape \(16, 16, 3\) but --dataset=folder "
            r"with --image_size=24 gives \(24, 24, 3\)",
        ),
    ],
)
def test_mismatch_with_the_data_is_a_clear_error(pretrained, tmp_path, change, pattern):
    run_dir, parity_dir = pretrained
    values = {**COMMON, **change}
    config = config_lib.make_config(
        **values, data_dir=str(parity_dir), epochs=1, model_dir=str(tmp_path / "run")
    )
    with pytest.raises(ValueError, match=pattern):
        finetune.finetune(config, finetune.FinetuneOptions(str(run_dir)))


def test_flags_give_finetuning_defaults_and_refuse_architecture_flags():
    from absl import flags

    values = flags.FlagValues()
    finetune.define_flags(values)
    values(["gn-finetune", "--trained_model=runs/x", "--epochs=3"])
    config = finetune.config_from_flags(values)
    assert (config.batch_size_per_replica, config.decay_norm_params, config.epochs) == (2, False, 3)
    values = flags.FlagValues()
    finetune.define_flags(values)
    values(["gn-finetune", "--trained_model=runs/x", "--norm=bn"])
    with pytest.raises(ValueError, match="--norm is not used by train.finetune"):
        finetune.config_from_flags(values)
    with pytest.raises(ValueError, match=r"--freeze_at=7 is invalid"):
        finetune.FinetuneOptions("runs/x", freeze_at=7)


def test_missing_trained_model_is_one_line_error(tmp_path):
    missing = tmp_path / "no_such_run"
    done = _run_cli(f"--trained_model={missing}", f"--model_dir={tmp_path / 'out'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"gn-finetune: error: {missing}: no such file or directory."
    )


def test_tfsm_layer_gives_trainable_gn_variables(pretrained, rng):
    """The route for a SavedModel without its Keras config: TFSMLayer(features).

    Its gradients must be Keras's: those of the same network rebuilt as a
    Keras model, on the same pixels normalised here in NumPy.
    """
    run_dir, _ = pretrained
    saved_model = str(run_dir / "saved_model")
    features = keras.layers.TFSMLayer(saved_model, call_endpoint="features")
    rebuilt = load.load_model(saved_model)
    pooled = keras.Model(rebuilt.input, rebuilt.get_layer("pool").output)
    preprocessing = load.load_preprocessing(saved_model)
    images = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    normalized = (images - np.float32(preprocessing["mean"])) / np.float32(preprocessing["std"])
    projection = rng.normal(size=pooled.output.shape[-1]).astype(np.float32)

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(features(tf.constant(images))["pooled"] * projection)
    got = dict(
        zip(
            (w.name.split(":")[0] for w in features.trainable_weights),
            tape.gradient(loss, features.trainable_weights),
        )
    )
    with tf.GradientTape() as tape:
        terms = pooled(normalized) * projection
        reference = tf.reduce_sum(terms)
    want = dict(
        zip(
            (w.path.replace("/", "_") for w in pooled.trainable_weights),
            tape.gradient(reference, pooled.trainable_weights),
        )
    )
    # The sum cancels (CI saw -0.235 from terms whose magnitudes add up to
    # ~650), so its float32 rounding scales with that magnitude, not with the
    # sum: ~sqrt(256 terms) x eps(float32) ≈ 1e-6 of it.
    magnitude = float(tf.reduce_sum(tf.abs(terms)))
    assert abs(float(loss) - float(reference)) <= 1e-6 * magnitude
    assert sorted(got) == sorted(want) and "res2_norm_gamma" in got
    for name, gradient in want.items():
        np.testing.assert_allclose(
            got[name].numpy(),
            gradient.numpy(),
            rtol=1e-4,
            atol=1e-5 * float(np.max(np.abs(gradient.numpy()))),
        )

    gamma = next(w for w in features.trainable_weights if w.name.startswith("res2_norm_gamma"))
    before = gamma.numpy().copy()
    keras.optimizers.SGD(0.1).apply_gradients(
        [(got[w.name.split(":")[0]], w) for w in features.trainable_weights]
    )
    np.testing.assert_allclose(
        gamma.numpy(), before - 0.1 * got["res2_norm_gamma"].numpy(), rtol=1e-6, atol=1e-7
    )
