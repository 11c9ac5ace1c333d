"""Everything a run leaves in ``--model_dir`` besides its checkpoints, for every task.

* ``results.json``: the flags, one ``train.records.EpochRecord`` per epoch
  (train and validation metrics, lr, examples/s) and the summary of
  ``train.records.summarize`` over the task's primary validation metric.
  Rewritten atomically after every epoch; on resume the records of epochs
  not covered by the checkpoint are dropped, so each epoch appears exactly
  once.
* ``preprocessing.json``: how inputs become model inputs (the task's data).
* ``tensorboard/train`` and ``tensorboard/val``: ``tf.summary`` scalars.
* ``last.keras`` every epoch, ``best.keras`` at the best primary metric.
* ``saved_model/``: the task's export at the end, built and checked in a
  staging directory, then exchanged with the old one in one step.

Only the chief writes; other workers' saves (which must happen, see
``train.strategy``) go to throw-away directories.
"""

import json
import os

import tensorflow as tf
from absl import logging

from gn_keras import export as export_lib
from gn_keras import staging as staging_lib
from gn_keras.train import records as records_lib
from gn_keras.train import strategy as strategy_lib

RESULTS_FILE = "results.json"
PREPROCESSING_FILE = "preprocessing.json"


def write_json_atomically(path, payload):
    """Write JSON to a temporary file and ``os.replace`` it into place."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def run_paths(model_dir):
    """Where each output of a run in ``model_dir`` goes."""
    return {
        "model_dir": model_dir,
        "results": os.path.join(model_dir, RESULTS_FILE),
        "preprocessing": os.path.join(model_dir, PREPROCESSING_FILE),
        "checkpoints": os.path.join(model_dir, "checkpoints"),
        "tensorboard": os.path.join(model_dir, "tensorboard"),
        "best_keras": os.path.join(model_dir, "best.keras"),
        "last_keras": os.path.join(model_dir, "last.keras"),
        "saved_model": os.path.join(model_dir, "saved_model"),
    }


class RunOutputs:
    """Results, logs and models of one training run in ``model_dir``.

    ``metric`` and ``lower_is_better`` name the task's primary validation
    metric, which picks ``best.keras`` and the summary.
    """

    def __init__(
        self,
        model_dir,
        strategy,
        config_dict,
        preprocessing,
        run_info,
        *,
        metric,
        lower_is_better,
    ):
        self.model_dir = model_dir
        self.strategy = strategy
        self.is_chief = strategy_lib.is_chief(strategy)
        self.preprocessing = preprocessing
        self.metric = metric
        self.lower_is_better = lower_is_better
        self.paths = run_paths(model_dir)
        self.run_info = {"flags": config_dict, **run_info}
        self.records = []
        if self.is_chief:
            os.makedirs(model_dir, exist_ok=True)
            write_json_atomically(self.paths["preprocessing"], preprocessing)
            self._writers = {
                split: tf.summary.create_file_writer(os.path.join(self.paths["tensorboard"], split))
                for split in ("train", "val")
            }
        else:
            self._writers = {split: tf.summary.create_noop_writer() for split in ("train", "val")}

    @property
    def results(self):
        """The ``results.json`` contents."""
        return {
            **self.run_info,
            "epochs": [record.as_json() for record in self.records],
            "outputs": self.paths,
            **records_lib.summarize(self.records, self.metric, self.lower_is_better),
        }

    def resume(self, completed_epochs):
        """Keep the epoch records a checkpoint covers; drop the rest.

        A damaged ``results.json`` (not JSON, cut off, the wrong shape) is
        rebuilt from the TensorBoard logs with a warning naming it; if they
        lack an epoch too, the run stops with one line naming both.
        """
        path = self.paths["results"]
        if not os.path.exists(path):
            return
        try:
            previous = [records_lib.EpochRecord.from_json(r) for r in read_json(path)["epochs"]]
        except (ValueError, KeyError, TypeError) as error:
            previous = self._rebuild(completed_epochs, f"{type(error).__name__}: {error}")
        self.records = [r for r in previous if r.epoch < completed_epochs]

    def _rebuild(self, completed_epochs, problem):
        path, logs = self.paths["results"], self.paths["tensorboard"]
        problem = problem.splitlines()[0][:200] if problem.strip() else "damaged"
        try:
            rebuilt = records_lib.records_from_tensorboard(logs, completed_epochs)
        except ValueError as error:
            raise ValueError(
                f"{path} is damaged ({problem}) and cannot be rebuilt: the TensorBoard logs in "
                f"{logs} have {error}; put back a good copy, or start over in a new --model_dir."
            ) from None
        logging.warning(
            "%s is damaged (%s); rebuilt its %d epoch record(s) from the TensorBoard logs in %s.",
            path,
            problem,
            len(rebuilt),
            logs,
        )
        return rebuilt

    def _improves(self, record):
        value = record.val[self.metric]
        previous = [r.val[self.metric] for r in self.records]
        if not previous:
            return True
        return value < min(previous) if self.lower_is_better else value > max(previous)

    def log_step(self, global_step, loss, learning_rate):
        with self._writers["train"].as_default(step=global_step):
            tf.summary.scalar("step/loss", loss)
            tf.summary.scalar("step/learning_rate", learning_rate)

    def _log_epoch(self, record):
        for split, metrics in (("train", record.train), ("val", record.val)):
            with self._writers[split].as_default(step=record.epoch):
                for name, value in metrics.items():
                    tf.summary.scalar(f"epoch/{name}", value)
        with self._writers["train"].as_default(step=record.epoch):
            tf.summary.scalar("epoch/learning_rate", record.learning_rate)
            tf.summary.scalar("epoch/images_per_sec", record.images_per_sec)
            # With these two, results.json can be rebuilt from the logs alone.
            tf.summary.scalar("epoch/seconds", record.seconds)
            tf.summary.scalar("epoch/resumed_at_step", record.resumed_at_step)
        for writer in self._writers.values():
            writer.flush()

    def end_epoch(self, record, model):
        """Record an epoch: TensorBoard, ``last``/``best`` .keras, results.json."""
        improved = self._improves(record)
        self.records.append(record)
        self._log_epoch(record)
        if self.is_chief:
            _save_keras_atomically(model, self.paths["last_keras"])
            if improved:
                _save_keras_atomically(model, self.paths["best_keras"])
            self.write_results()

    def write_results(self):
        if self.is_chief:
            write_json_atomically(self.paths["results"], self.results)

    def export(self, model, export_fn):
        """Write the export with ``export_fn(model, staging_dir, verify)`` and swap it in.

        Every worker must call this (see the module doc); only the chief's
        export is kept and verified.  The swap is ``gn_keras.staging.publish``
        (one atomic exchange), so ``saved_model/`` is at every moment the old
        export or the new one; a failed build or check leaves it as it was
        and its staging removed.
        """
        target = strategy_lib.worker_write_dir(self.strategy, self.paths["saved_model"])
        with staging_lib.staging(target) as staging:
            try:
                export_fn(model, staging, self.is_chief)
            except export_lib.ExportMismatchError as error:
                kept = f"{error} {target} is left as it was."
                raise export_lib.ExportMismatchError(kept) from None
            if self.is_chief:
                staging_lib.publish(staging, target)
        return target


def _save_keras_atomically(model, path):
    temporary = f"{path[: -len('.keras')]}.tmp-{os.getpid()}.keras"
    model.save(temporary)
    os.replace(temporary, path)
