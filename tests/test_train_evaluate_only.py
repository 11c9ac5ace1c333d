"""trainer.evaluate_only: a run's newest checkpoint, evaluated as the run evaluated it.

Evaluation-only is a machinery entry point (``gn-detect --eval_only`` uses
it): the run's seed, precision policy and strategy apply, so the final
checkpoint of a ``mixed_bfloat16`` run gives back the run's own last
validation numbers, which float32 would not.
"""

import dataclasses
import json
import os

import keras
import pytest

from gn_keras import GroupNormalization
from gn_keras.train import classification, classify, trainer
from gn_keras.train import config as config_lib


def _tiny_gn_network(config, preprocessing):
    inputs = keras.Input((*preprocessing["image_size"], preprocessing["channels"]))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = GroupNormalization(groups=2, name="gn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def test_the_last_checkpoint_gives_the_runs_last_numbers_under_its_policy(tmp_path):
    config = config_lib.make_config(
        image_size=8,
        epochs=2,
        steps_per_epoch=3,
        eval_steps=2,
        warmup_epochs=0,
        mixed_precision="mixed_bfloat16",
        model_dir=str(tmp_path / "run"),
    )
    results = classify.train(config, build_model=_tiny_gn_network)
    last = results["epochs"][-1]["val"]
    task = classification.ClassificationTask(_tiny_gn_network)

    metrics, epoch, step = trainer.evaluate_only(task, config)
    assert (epoch, step) == (2, 0)  # after the second epoch's end
    assert set(metrics) == set(last)
    for name, value in last.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    with open(os.path.join(config.model_dir, trainer.EVAL_FILE), encoding="utf-8") as handle:
        written = json.load(handle)
    assert written["mixed_precision"] == "mixed_bfloat16" and written["val"] == metrics
    assert keras.mixed_precision.global_policy().name == "float32"  # put back afterwards

    # The policy matters: the same checkpoint in float32 gives another loss.
    in_float32 = dataclasses.replace(config, mixed_precision="float32")
    loss32 = trainer.evaluate_only(task, in_float32)[0]["loss"]
    assert loss32 != pytest.approx(last["loss"], rel=1e-6, abs=1e-7)
