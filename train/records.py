"""The epoch record and the run summary of ``results.json``, for every task.

``EpochRecord`` is what one epoch leaves: its train and validation metrics,
the learning rate it started with, its speed and where it resumed.  The loop
creates it, ``train.outputs`` writes it, and the studies and summaries read
it back with ``EpochRecord.from_json``; its JSON form is the one
``results.json`` has always had.

``summarize`` turns the records into the run's headline figures, named after
the task's primary validation metric ``m``: ``final_m``,
``median_last5_m`` (§4.1 reports "the median error rate of the final 5
epochs"), ``best_m`` and ``best_epoch``, then ``final_`` of every other
validation metric, and the median speed.
"""

import dataclasses
import os
import statistics

LAST_EPOCHS_FOR_MEDIAN = 5
# Scalars of the train split's TensorBoard log that are not train metrics.
EPOCH_SCALARS = ("learning_rate", "images_per_sec", "seconds", "resumed_at_step")


@dataclasses.dataclass
class EpochRecord:
    """One epoch of one run.

    ``images_per_sec`` counts the task's examples (images or clips) over the
    steps this attempt trained; ``resumed_at_step`` is the step a resumed
    epoch started at (0 otherwise); ``epoch`` counts from 0.
    """

    epoch: int
    train: dict
    val: dict
    learning_rate: float
    images_per_sec: float
    seconds: float
    resumed_at_step: int = 0

    def as_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload):
        """A record from its ``results.json`` form; ValueError if it is not one."""
        names = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(payload, dict) or not names.issuperset(payload):
            raise ValueError(f"not an epoch record: {payload!r:.200}")
        try:
            return cls(**payload)
        except TypeError as error:
            raise ValueError(f"not an epoch record ({error}): {payload!r:.200}") from None

    def logs(self):
        """Keras-style logs: train metrics, then ``val_``-prefixed validation metrics."""
        return {**self.train, **{f"val_{name}": value for name, value in self.val.items()}}


def summarize(records, metric, lower_is_better):
    """The headline figures of ``records`` (EpochRecords, in epoch order).

    ``metric`` is the task's primary validation metric (its evaluator's),
    which picks the best epoch; ``lower_is_better`` its direction.
    """
    if not records:
        return {}
    values = [record.val[metric] for record in records]
    pick = min if lower_is_better else max
    best = pick(range(len(values)), key=values.__getitem__)
    summary = {
        "primary_metric": metric,
        f"final_{metric}": values[-1],
        f"median_last5_{metric}": statistics.median(values[-LAST_EPOCHS_FOR_MEDIAN:]),
        f"best_{metric}": values[best],
        "best_epoch": records[best].epoch,
    }
    for name, value in records[-1].val.items():
        summary.setdefault(f"final_{name}", value)
    # The first epoch includes tracing and warm-up; leave it out if we can.
    speeds = [record.images_per_sec for record in records[1:]] or [records[0].images_per_sec]
    summary["images_per_sec"] = statistics.median(speeds)
    return summary


def _latest_scalars(log_dir):
    """``{tag: {step: value}}`` of a TensorBoard log, the latest write of each step winning."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(log_dir, size_guidance={"tensors": 0})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["tensors"]:
        latest = {}
        for event in sorted(events.Tensors(tag), key=lambda e: e.wall_time):
            latest[event.step] = float(tf.make_ndarray(event.tensor_proto))
        scalars[tag] = latest
    return scalars


def records_from_tensorboard(tensorboard_dir, epochs):
    """The records of epochs ``0..epochs-1`` as the run logged them to TensorBoard.

    Raises ValueError naming the first epoch or scalar the logs lack.
    """
    prefix = "epoch/"
    splits = {}
    for split in ("train", "val"):
        scalars = _latest_scalars(os.path.join(tensorboard_dir, split))
        splits[split] = {t[len(prefix) :]: v for t, v in scalars.items() if t.startswith(prefix)}
    train_metrics = [name for name in splits["train"] if name not in EPOCH_SCALARS]
    needed = [("train", n) for n in (*train_metrics, *EPOCH_SCALARS)] + [
        ("val", n) for n in splits["val"]
    ]
    records = []
    for epoch in range(epochs):
        missing = [f"{s}/{n}" for s, n in needed if epoch not in splits[s].get(n, {})]
        if missing or not splits["val"] or not train_metrics:
            raise ValueError(f"no epoch/{(missing or ['val'])[0]} of epoch {epoch + 1}")
        train = splits["train"]
        records.append(
            EpochRecord(
                epoch=epoch,
                train={n: train[n][epoch] for n in train_metrics},
                val={n: values[epoch] for n, values in splits["val"].items()},
                learning_rate=train["learning_rate"][epoch],
                images_per_sec=train["images_per_sec"][epoch],
                seconds=train["seconds"][epoch],
                resumed_at_step=int(train["resumed_at_step"][epoch]),
            )
        )
    return records
