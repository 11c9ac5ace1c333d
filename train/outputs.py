"""Everything a run leaves in ``--model_dir`` besides its checkpoints.

* ``results.json``: the flags, one record per epoch (train/val loss and
  top-1/top-5 error, lr, images/s), the final, best and median-of-last-5
  top-1 error (§4.1 reports "the median error rate of the final 5 epochs"),
  and the throughput.  Rewritten atomically after every epoch; on resume
  the records of epochs not covered by the checkpoint are dropped, so each
  epoch appears exactly once.
* ``preprocessing.json``: how pixels become model inputs (``train.data``).
* ``tensorboard/train`` and ``tensorboard/val``: ``tf.summary`` scalars.
* ``last.keras`` every epoch, ``best.keras`` at the lowest val top-1 error.
* ``saved_model/``: ``gn_keras.export.export_saved_model`` at the end.

Only the chief writes; other workers' saves (which must happen, see
``train.strategy``) go to throw-away directories.
"""

import json
import os
import shutil
import statistics

import keras
import tensorflow as tf

from gn_keras import export as export_lib
from gn_keras.train import strategy as strategy_lib

RESULTS_FILE = "results.json"
PREPROCESSING_FILE = "preprocessing.json"
LAST_EPOCHS_FOR_MEDIAN = 5
# How far the exported graph may drift from Keras, relative to the logits'
# scale: float32 rounding by default; 16-bit compute rounds at ~1e-3 (float16)
# and ~8e-3 (bfloat16) per operation, so a deep net needs more room.
EXPORT_TOLERANCE = {"float16": 1e-2, "bfloat16": 5e-2}


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


def summarize(epochs):
    """Final, best and median-of-last-5 val top-1 error, and throughput."""
    errors = [record["val"]["top1_error"] for record in epochs]
    speeds = [record["images_per_sec"] for record in epochs[1:]] or [
        record["images_per_sec"] for record in epochs
    ]
    if not errors:
        return {}
    best = min(range(len(errors)), key=errors.__getitem__)
    return {
        "final_top1_error": errors[-1],
        "median_last5_top1_error": statistics.median(errors[-LAST_EPOCHS_FOR_MEDIAN:]),
        "best_top1_error": errors[best],
        "best_epoch": epochs[best]["epoch"],
        "final_top5_error": epochs[-1]["val"]["top5_error"],
        # The first epoch includes tracing and warm-up; leave it out if we can.
        "images_per_sec": statistics.median(speeds),
    }


class RunOutputs:
    """Results, logs and models of one training run in ``model_dir``."""

    def __init__(self, model_dir, strategy, config_dict, preprocessing, run_info):
        self.model_dir = model_dir
        self.strategy = strategy
        self.is_chief = strategy_lib.is_chief(strategy)
        self.preprocessing = preprocessing
        self.paths = {
            "model_dir": model_dir,
            "results": os.path.join(model_dir, RESULTS_FILE),
            "preprocessing": os.path.join(model_dir, PREPROCESSING_FILE),
            "checkpoints": os.path.join(model_dir, "checkpoints"),
            "tensorboard": os.path.join(model_dir, "tensorboard"),
            "best_keras": os.path.join(model_dir, "best.keras"),
            "last_keras": os.path.join(model_dir, "last.keras"),
            "saved_model": os.path.join(model_dir, "saved_model"),
        }
        self.results = {"flags": config_dict, **run_info, "epochs": [], "outputs": self.paths}
        if self.is_chief:
            os.makedirs(model_dir, exist_ok=True)
            write_json_atomically(self.paths["preprocessing"], preprocessing)
            self._writers = {
                split: tf.summary.create_file_writer(os.path.join(self.paths["tensorboard"], split))
                for split in ("train", "val")
            }
        else:
            self._writers = {split: tf.summary.create_noop_writer() for split in ("train", "val")}

    def resume(self, completed_epochs):
        """Keep the epoch records a checkpoint covers; drop the rest."""
        if os.path.exists(self.paths["results"]):
            previous = read_json(self.paths["results"]).get("epochs", [])
            self.results["epochs"] = [r for r in previous if r["epoch"] < completed_epochs]

    def best_error(self):
        errors = [record["val"]["top1_error"] for record in self.results["epochs"]]
        return min(errors) if errors else float("inf")

    def log_step(self, global_step, loss, learning_rate):
        with self._writers["train"].as_default(step=global_step):
            tf.summary.scalar("step/loss", loss)
            tf.summary.scalar("step/learning_rate", learning_rate)

    def _log_epoch(self, record):
        for split in ("train", "val"):
            with self._writers[split].as_default(step=record["epoch"]):
                for name, value in record[split].items():
                    tf.summary.scalar(f"epoch/{name}", value)
        with self._writers["train"].as_default(step=record["epoch"]):
            tf.summary.scalar("epoch/learning_rate", record["learning_rate"])
            tf.summary.scalar("epoch/images_per_sec", record["images_per_sec"])
        for writer in self._writers.values():
            writer.flush()

    def end_epoch(self, record, model):
        """Record an epoch: TensorBoard, ``last``/``best`` .keras, results.json."""
        improved = record["val"]["top1_error"] < self.best_error()
        self.results["epochs"].append(record)
        self._log_epoch(record)
        if self.is_chief:
            _save_keras_atomically(model, self.paths["last_keras"])
            if improved:
                _save_keras_atomically(model, self.paths["best_keras"])
            self.write_results()

    def write_results(self):
        self.results.update(summarize(self.results["epochs"]))
        if self.is_chief:
            write_json_atomically(self.paths["results"], self.results)

    def export(self, model):
        """Export the SavedModel (every worker must call this, see module doc)."""
        target = strategy_lib.worker_write_dir(self.strategy, self.paths["saved_model"])
        staging = f"{target}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        compute_dtype = keras.mixed_precision.global_policy().compute_dtype
        export_lib.export_saved_model(
            model,
            staging,
            self.preprocessing,
            verify=self.is_chief,
            tolerance=EXPORT_TOLERANCE.get(compute_dtype, export_lib.DEFAULT_TOLERANCE),
        )
        if self.is_chief:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _save_keras_atomically(model, path):
    temporary = f"{path[: -len('.keras')]}.tmp-{os.getpid()}.keras"
    model.save(temporary)
    os.replace(temporary, path)
