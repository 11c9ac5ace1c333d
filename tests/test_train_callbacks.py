"""Keras callbacks in the one training loop, against the run's own results.json.

A tiny digits run (the small conv-GN network of ``tests/test_train_e2e.py``
at 8×8, 2 epochs of 2 steps: the loop, not the model, is under test) is
trained with a recording callback; what it saw must equal what the loop wrote: per epoch,
the train and val metrics of results.json, and at the last epoch the
weights of last.keras.  A run stopped at the start of its second epoch and
resumed must report only the epoch it runs.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_train_e2e import small_gn_network

from gn_keras.train import classify
from gn_keras.train import config as config_lib

TINY = {
    "epochs": 2,
    "steps_per_epoch": 2,
    "eval_steps": 1,
    "image_size": 8,
    "batch_size_per_replica": 4,
    "groups": 4,
    "log_every_steps": 1,
}


class Stop(Exception):
    """Raised by ``Recorder`` to interrupt a run."""


class Recorder(keras.callbacks.Callback):
    """Everything the loop tells a callback; optionally dies at an epoch's start."""

    def __init__(self, checkpoint_dir, stop_at_epoch=None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.stop_at_epoch = stop_at_epoch
        self.events, self.logs, self.weights, self.checkpointed = [], {}, {}, {}

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))
        if epoch == self.stop_at_epoch:
            raise Stop(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch))
        self.logs[epoch] = dict(logs)
        self.weights[epoch] = [np.array(w) for w in self.model.weights]
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        self.checkpointed[epoch] = latest and int(
            tf.train.load_variable(latest, "epoch/.ATTRIBUTES/VARIABLE_VALUE")
        )

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def _config(rng, tmp_path):
    return config_lib.make_config(
        **TINY, seed=int(rng.integers(0, 1000)), model_dir=str(tmp_path / "run")
    )


def _recorder(config, **kwargs):
    return Recorder(os.path.join(config.model_dir, "checkpoints"), **kwargs)


def _results(config):
    with open(os.path.join(config.model_dir, "results.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _expected_logs(record):
    return {**record["train"], **{f"val_{k}": v for k, v in record["val"].items()}}


def test_callbacks_see_the_model_and_each_epochs_metrics(rng, tmp_path):
    config = _config(rng, tmp_path)
    recorder = _recorder(config)
    classify.train(config, build_model=small_gn_network, callbacks=[recorder])
    assert recorder.events == [
        "train_begin",
        ("epoch_begin", 0),
        ("epoch_end", 0),
        ("epoch_begin", 1),
        ("epoch_end", 1),
        "train_end",
    ]
    records = _results(config)["epochs"]
    assert set(recorder.logs) == {0, 1}
    for record in records:
        assert recorder.logs[record["epoch"]] == _expected_logs(record)
    # The model the callback holds is the one being trained: its weights at
    # the last epoch's end are last.keras's, and training moved them.
    last = keras.models.load_model(os.path.join(config.model_dir, "last.keras"))
    for seen, saved in zip(recorder.weights[1], last.weights, strict=True):
        np.testing.assert_array_equal(seen, np.array(saved))
    assert any(not np.array_equal(a, b) for a, b in zip(recorder.weights[0], recorder.weights[1]))
    # Each epoch is reported before its checkpoint, so an interruption after a
    # callback's record re-runs the epoch rather than leave it unrecorded.
    assert recorder.checkpointed == {0: None, 1: 1}


def test_a_resumed_run_calls_back_only_for_the_epochs_it_runs(rng, tmp_path):
    config = _config(rng, tmp_path)
    with pytest.raises(Stop):
        classify.train(
            config, build_model=small_gn_network, callbacks=[_recorder(config, stop_at_epoch=1)]
        )
    keras.backend.clear_session()
    resumed = _recorder(config)
    classify.train(config, build_model=small_gn_network, callbacks=[resumed])
    assert resumed.events == ["train_begin", ("epoch_begin", 1), ("epoch_end", 1), "train_end"]
    records = _results(config)["epochs"]
    assert [r["epoch"] for r in records] == [0, 1]
    assert resumed.logs == {1: _expected_logs(records[1])}


@pytest.mark.parametrize(
    "callbacks, message",
    [
        ("history", r"callbacks='history' is invalid"),
        (keras.callbacks.History(), r"callbacks=<.*History.*> is invalid"),
        ([keras.callbacks.History(), print], r"callbacks: <built-in function print>"),
    ],
)
def test_bad_callbacks_are_named(callbacks, message, tmp_path):
    config = config_lib.make_config(**TINY, model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=message):
        classify.train(config, callbacks=callbacks)
    assert not os.path.exists(config.model_dir)
