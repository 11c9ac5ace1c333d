"""``VideoTask`` against the task protocol: data, model, loss, evaluators, export.

No training loop (that is the shared machinery's); each protocol method is
run once on the embedded set with tiny clips, and the 10-clip evaluator's
metrics are checked against NumPy on the same batch.
"""

import types

import numpy as np
import pytest
import tensorflow as tf

from gn_keras.train.video import clips, sources
from gn_keras.train.video import task as video_task

SPEC = clips.ClipSpec(
    frames=4, crop_size=16, train_short_side=(16, 18), eval_short_side=16, test_clips=3
)
CONFIG = types.SimpleNamespace(
    dataset="moving_shapes",
    data_dir=None,
    model="resnet20_i3d",
    norm="gn",
    groups=8,
    group_size=None,
    zero_init_residual=False,
    batch_size_per_replica=4,
    seed=3,
    steps_per_epoch=None,
    eval_steps=None,
)


@pytest.fixture(scope="module")
def prepared():
    task = video_task.VideoTask(
        SPEC, source=sources.moving_shapes_source(16, 6), test_batch_size_per_replica=4
    )
    strategy = tf.distribute.get_strategy()
    data = task.make_data(CONFIG, strategy)
    return task, data, task.build_model(CONFIG, data)


def test_task_data(prepared):
    _, data, model = prepared
    assert (data.steps_per_epoch, data.eval_steps, data.global_batch_size) == (4, 2, 4)
    assert data.info["test_steps"] == 2
    assert data.preprocessing["clip_shape"] == [4, 16, 16]
    assert tuple(model.inputs[0].shape) == (None, 4, 16, 16, 3)
    assert model.outputs[0].shape[-1] == 4


def test_loss_is_the_mean_cross_entropy(prepared):
    task, data, model = prepared
    context = tf.distribute.InputContext()
    batch = next(iter(data.train_dataset_fn(0, 0)(context)))
    loss, outputs = task.compute_loss(model, batch, data.global_batch_size)
    logits = outputs["logits"].numpy().astype(np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_softmax[np.arange(4), batch[1].numpy()].mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_ten_clip_evaluator_matches_numpy(prepared):
    task, data, model = prepared
    batch = next(iter(data.extras.test_dataset_fn(1)(tf.distribute.InputContext())))
    views, labels, weights = (t.numpy() for t in batch)
    evaluator = task.make_test_evaluator(data)
    evaluator.reset()
    evaluator.replica_step(model, batch)
    result = evaluator.result()
    logits = np.asarray(model(views.reshape(-1, *views.shape[2:])), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    averaged = (exp / exp.sum(-1, keepdims=True)).reshape(len(labels), 3, -1).mean(1)
    correct = averaged.argmax(-1) == labels
    assert weights.tolist() == [1.0] * 4
    np.testing.assert_allclose(result["top1_error"], 1 - correct.mean(), atol=1e-6)
    nll = -np.log(averaged[np.arange(len(labels)), labels]).mean()
    np.testing.assert_allclose(result["loss"], nll, rtol=1e-4)
    assert evaluator.primary_metric == "top1_error" and evaluator.lower_is_better


def test_unknown_dataset_is_one_line():
    with pytest.raises(ValueError, match=r"--dataset='kinetics' is not a video dataset"):
        video_task.make_video_source("kinetics")
    with pytest.raises(ValueError, match="--dataset=folder needs --data_dir"):
        video_task.make_video_source("folder")
