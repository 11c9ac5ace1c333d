"""DetectionTask end to end on a tiny shapes set: data, loss, metrics, evaluator."""

import types

import numpy as np
import pytest
import tensorflow as tf
from detection_helpers import tiny_config

from gn_keras.train.detection import pipeline
from gn_keras.train.detection import sources as detection_sources
from gn_keras.train.detection import task as detection_task


def tiny_task(tmp_path):
    train = detection_sources.shapes_source(
        str(tmp_path / "train"), 6, image_size=32, training=True
    )
    val = detection_sources.shapes_source(str(tmp_path / "val"), 3, image_size=32, seed=1)
    model_config = tiny_config(backbone_norm="gn", train_pre_nms_top_k=100)
    input_config = pipeline.InputConfig(
        short_side=64, max_side=64, max_instances=6, mask_crop_size=16
    )
    return detection_task.DetectionTask(model_config, input_config, train, val)


def test_step_counts_follow_the_shared_rules(tmp_path):
    """The rules of train.data: --eval_steps caps; a too-big batch is refused."""
    task = tiny_task(tmp_path)
    strategy = tf.distribute.get_strategy()

    def counts(**fields):
        defaults = dict(batch_size_per_replica=2, seed=3, steps_per_epoch=None, eval_steps=None)
        config = types.SimpleNamespace(**{**defaults, "dataset": "shapes", **fields})
        data = task.make_data(config, strategy)
        return data.steps_per_epoch, data.eval_steps

    assert counts(eval_steps=10) == (3, 2)  # 3 val images in batches of 2: 2 steps at most
    assert counts(eval_steps=1, steps_per_epoch=7) == (7, 1)
    with pytest.raises(ValueError, match=r"--batch_size_per_replica=8 .* 6 training examples"):
        counts(batch_size_per_replica=8)


def test_task_trains_and_evaluates_through_the_protocol(tmp_path):
    task = tiny_task(tmp_path)
    config = types.SimpleNamespace(
        batch_size_per_replica=2, seed=3, steps_per_epoch=None, eval_steps=None
    )
    data = task.make_data(config, tf.distribute.get_strategy())
    assert (data.steps_per_epoch, data.eval_steps, data.global_batch_size) == (3, 2, 2)
    context = tf.distribute.InputContext()
    first = list(data.train_dataset_fn(1, 0)(context).take(2))
    again = list(data.train_dataset_fn(1, 1)(context).take(1))
    np.testing.assert_array_equal(again[0]["images"], first[1]["images"])  # resume skips exactly
    other = next(iter(data.train_dataset_fn(2, 0)(context)))
    assert not np.array_equal(other["image_id"], first[0]["image_id"]) or not np.array_equal(
        other["images"], first[0]["images"]
    )
    model = task.build_model(config, data)
    metrics = task.make_train_metrics()
    # Eager: the model's graph mode is covered by test_detection_model.py.
    loss, outputs = task.compute_loss(model, first[0], 2)
    task.update_train_metrics(metrics, first[0], outputs)
    np.testing.assert_allclose(float(loss), float(metrics["loss"].result()), rtol=1e-5)
    evaluation = task.make_evaluator(data)
    ids = []
    for batch in data.eval_dataset_fn(data.eval_steps)(context):
        ids += batch["image_id"].numpy().tolist()
        outputs = evaluation.replica_step(model, batch)
        evaluation.accumulate({k: v.numpy() for k, v in outputs.items()})
    assert sorted(ids) == [-1, 1, 2, 3]  # one blank pads the last batch
    assert evaluation.image_ids == {1, 2, 3}
    result = evaluation.result()
    assert {f"{t}_{m}" for t in ("bbox", "segm") for m in ("AP", "AP50")} <= set(result)
