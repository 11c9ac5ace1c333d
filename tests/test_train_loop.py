"""``--steps_per_loop``: chunks of steps in one compiled call, the same training as one step a call.

The chunking of ``train.loop.LoopPlan`` is checked against chunks cut in the
test from the rules alone (a chunk starts at every logged step and after
every step checkpoint, and holds at most K steps); then two short runs, one
step per call and K per call, must train the same weights and write the
same records and step logs, and a run killed at a mid-epoch checkpoint with
K > 1 resumes exactly there.  These runs train the small conv-GN network of
``tests/test_train_e2e.py``: the loop, not the model, is under test, and a
ResNet-20's export alone costs a run ~20 s of CPU.

The run-long iterators of ``train.iterators`` are checked against the old
way, one fresh dataset per epoch (and per evaluation): the same batches in
the same order, across windows, after a resume and on one of several input
pipelines.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from test_train_e2e import small_gn_network

from gn_keras.train import checkpoints, classify, iterators, loop
from gn_keras.train import config as config_lib
from gn_keras.train import data as data_lib
from gn_keras.train.records import EpochRecord


def reference_chunks(epochs, steps_per_epoch, steps_per_loop, log_every, checkpoint_every):
    """Chunks as (epoch, first step, end) cut by walking the steps one by one."""
    chunks = []
    for epoch in range(epochs):
        start = 0
        for step in range(1, steps_per_epoch + 1):
            global_index = epoch * steps_per_epoch + step
            cut = (
                step == steps_per_epoch
                or step - start == steps_per_loop
                or global_index % log_every == 0  # the next step is logged
                or (checkpoint_every and step % checkpoint_every == 0)
            )
            if cut:
                chunks.append((epoch, start, step))
                start = step
    return chunks


def plan_chunks(plan):
    chunks = []
    for epoch in range(plan.epochs):
        step = 0
        while step < plan.steps_per_epoch:
            end = plan.chunk_end(epoch, step)
            assert step < end <= plan.steps_per_epoch
            chunks.append((epoch, step, end))
            step = end
    return chunks


def test_chunks_start_at_logged_steps_and_end_at_checkpoints(rng):
    for _ in range(200):
        plan = loop.LoopPlan(
            epochs=int(rng.integers(1, 4)),
            steps_per_epoch=int(rng.integers(1, 40)),
            eval_steps=1,
            global_batch_size=1,
            checkpoint_every_steps=int(rng.choice([0, rng.integers(1, 12)])),
            log_every_steps=int(rng.integers(1, 25)),
            steps_per_loop=int(rng.integers(1, 20)),
        )
        expected = reference_chunks(
            plan.epochs,
            plan.steps_per_epoch,
            plan.steps_per_loop,
            plan.log_every_steps,
            plan.checkpoint_every_steps,
        )
        assert plan_chunks(plan) == expected, plan


def _config(rng, tmp_path, name, **overrides):
    values = dict(
        image_size=8,
        batch_size_per_replica=8,
        epochs=2,
        steps_per_epoch=11,
        eval_steps=2,
        log_every_steps=4,
        seed=int(rng.integers(1000)),
        warmup_epochs=0.5,
        model_dir=str(tmp_path / name),
    )
    values.update(overrides)
    return config_lib.make_config(**values)


def _train(config):
    return classify.train(config, build_model=small_gn_network)


def _weights(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    # Keras 3 models are tracked through the optimizer: weights, momenta, iterations.
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("optimizer/"))
    return {name: reader.get_tensor(name) for name in names}


def _step_losses(model_dir):
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(
        os.path.join(model_dir, "tensorboard", "train"), size_guidance={"tensors": 0}
    )
    events.Reload()
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("step/loss")}


def test_k_steps_per_call_train_and_log_as_one_step_per_call(rng, tmp_path):
    seed = int(rng.integers(1000))
    one = _train(_config(rng, tmp_path, "k1", seed=seed, steps_per_loop=1))
    many = _train(_config(rng, tmp_path, "k5", seed=seed, steps_per_loop=5))
    first, second = _weights(one["outputs"]["model_dir"]), _weights(many["outputs"]["model_dir"])
    assert first.keys() == second.keys() and first
    for name in first:
        np.testing.assert_allclose(second[name], first[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for a, b in zip(one["epochs"], many["epochs"]):
        a, b = EpochRecord.from_json(a), EpochRecord.from_json(b)
        assert a.train == pytest.approx(b.train, rel=1e-5)
        assert a.val == pytest.approx(b.val, rel=1e-5)
    losses_one, losses_many = (
        _step_losses(one["outputs"]["model_dir"]),
        _step_losses(many["outputs"]["model_dir"]),
    )
    assert sorted(losses_one) == list(range(0, 22, 4))
    assert sorted(losses_many) == sorted(losses_one)
    for step, loss in losses_one.items():
        assert losses_many[step] == pytest.approx(loss, rel=1e-5)


class _Killed(Exception):
    pass


def test_k_steps_per_call_resume_exactly_at_a_mid_epoch_checkpoint(rng, tmp_path, monkeypatch):
    seed = int(rng.integers(1000))
    reference = _train(
        _config(rng, tmp_path, "whole", seed=seed, steps_per_loop=4, checkpoint_every_steps=6)
    )
    config = _config(rng, tmp_path, "killed", seed=seed, steps_per_loop=4, checkpoint_every_steps=6)
    real_save = checkpoints.Checkpointer.save

    def save_then_die(self, epoch, step_in_epoch, global_step):
        path = real_save(self, epoch, step_in_epoch, global_step)
        if (epoch, step_in_epoch) == (1, 6):
            raise _Killed()
        return path

    monkeypatch.setattr(checkpoints.Checkpointer, "save", save_then_die)
    with pytest.raises(_Killed):
        _train(config)
    monkeypatch.setattr(checkpoints.Checkpointer, "save", real_save)
    resumed = _train(config)
    assert resumed["epochs"][1]["resumed_at_step"] == 6
    first, second = _weights(reference["outputs"]["model_dir"]), _weights(config.model_dir)
    for name in first:
        np.testing.assert_allclose(second[name], first[name], rtol=1e-5, atol=1e-6, err_msg=name)
    with open(os.path.join(config.model_dir, "results.json"), encoding="utf-8") as handle:
        assert [r["epoch"] for r in json.load(handle)["epochs"]] == [0, 1]


def _digits_pipeline(rng, batch_size):
    config = config_lib.make_config(
        image_size=8, batch_size_per_replica=batch_size, seed=int(rng.integers(1000))
    )
    return data_lib.InputPipeline(data_lib.make_source(config), config)


def _arrays(elements):
    """Each element (a tuple of tensors) as one tuple of NumPy arrays."""
    return [tuple(np.asarray(t) for t in element) for element in elements]


def _assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=f"batch {index}")


def test_epochs_dataset_is_each_epochs_own_dataset_back_to_back(rng):
    """On pipeline 1 of 2 feeding 4 replicas (2 batches a step), resumed at step 3."""
    pipeline = _digits_pipeline(rng, batch_size=4)
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4
    )
    steps, first_epoch, first_step, end_epoch = 7, 2, 3, 5
    dataset_fn = iterators.epochs_dataset_fn(
        pipeline.train_dataset_fn, steps, first_epoch, first_step, end_epoch
    )
    got = _arrays(dataset_fn(context))
    expected = []
    for epoch in range(first_epoch, end_epoch):
        skip = first_step if epoch == first_epoch else 0
        own = pipeline.train_dataset_fn(epoch, skip)(context)
        expected += _arrays(own.take(2 * (steps - skip)))
    _assert_same_batches(got, expected)
    # Epochs differ: the comparison above could not pass by repetition alone.
    assert not np.array_equal(got[0][0], got[2 * (steps - first_step)][0])


class _Data:
    def __init__(self, pipeline):
        self.train_dataset_fn = pipeline.train_dataset_fn
        self.eval_dataset_fn = pipeline.eval_dataset_fn


def test_train_input_serves_every_epoch_across_windows_and_jumps(rng):
    pipeline = _digits_pipeline(rng, batch_size=8)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    plan = loop.LoopPlan(epochs=5, steps_per_epoch=3, eval_steps=1, global_batch_size=8)
    train_input = iterators.TrainInput(strategy, _Data(pipeline), plan, epochs_per_iterator=2)
    one_pipeline = tf.distribute.InputContext()
    built = []
    # A resumed run starts mid-epoch; then epochs follow; then a jump back.
    for epoch, first_step in [(0, 1), (1, 0), (2, 0), (3, 0), (4, 0), (1, 2)]:
        iterator = train_input.epoch_iterator(epoch, first_step)
        built.append(id(iterator))
        got = _arrays(next(iterator) for _ in range(plan.steps_per_epoch - first_step))
        own = pipeline.train_dataset_fn(epoch, first_step)(one_pipeline)
        _assert_same_batches(got, _arrays(own.take(plan.steps_per_epoch - first_step)))
    # New iterators: at the start, at each window (epochs 2 and 4) and at the jump.
    assert built[0] == built[1] and built[2] == built[3]
    assert len({built[0], built[2], built[4], built[5]}) == 4


def test_eval_input_gives_the_same_batches_every_pass(rng):
    pipeline = _digits_pipeline(rng, batch_size=16)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    eval_steps = 3
    eval_input = iterators.EvalInput(strategy, _Data(pipeline), eval_steps)
    fresh = _arrays(pipeline.eval_dataset_fn(eval_steps)(tf.distribute.InputContext()))
    assert len(fresh) == eval_steps
    for _ in range(3):
        iterator = eval_input.iterator()
        _assert_same_batches(_arrays(next(iterator) for _ in range(eval_steps)), fresh)


@pytest.mark.parametrize("seconds_per_example", [0.004, 0.9, 1.0, 1.6, 125.0, 4000.0])
def test_the_epoch_line_reads_the_rate_at_any_speed(rng, seconds_per_example):
    """Issue 24: a 125 s/step detector printed ``0.0 examples/s``."""
    per_second = 1.0 / (seconds_per_example * rng.uniform(0.999, 1.001))
    record = EpochRecord(0, {"loss": 1.0}, {"top1_error": 0.5}, 0.1, per_second, 1.0)
    rate = loop._describe(record, "top1_error").rsplit("; ", 1)[-1]
    number, unit = rate.split(" ")
    if per_second >= 1:
        assert unit == "examples/s" and float(number) == pytest.approx(per_second, abs=0.05)
    else:
        assert unit == "s/example" and float(number) == pytest.approx(1 / per_second, abs=0.05)
    assert float(number) > 0
    assert loop.rate_text(per_second, "image").split(" ")[1] in ("images/s", "s/image")
