"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train together.

The same command runs in two processes that differ only in TF_CONFIG's task
index: ``gn-train`` with the zoo model swapped for a one-convolution GN
network (``TINY_GN_TRAIN`` of ``tests/test_train_worker_failures.py``; the
strategy, loop, outputs and export are the real ones, and a ResNet-20 costs
each worker ~30 s of CPU in tracing and export).  Both must finish cleanly;
the chief (worker 0) writes the outputs, whose SavedModel must load and
reproduce the chief's ``last.keras`` on raw digits pixels, and the other
worker must leave no files behind.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from test_train_worker_failures import TINY_GN_TRAIN

import gn_keras  # noqa: F401  (registers the layers last.keras is made of)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_workers_on_loopback_train_and_the_chief_exports(rng, tmp_path):
    model_dir = str(tmp_path / "run")
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    command = [
        sys.executable,
        "-c",
        TINY_GN_TRAIN,
        "--strategy=multi_worker",
        f"--model_dir={model_dir}",
        "--model=resnet20",
        "--image_size=8",
        "--epochs=2",
        "--steps_per_epoch=4",
        "--eval_steps=2",
        "--batch_size_per_replica=16",
        f"--seed={int(rng.integers(1000))}",
    ]
    processes, logs = [], []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "PYTHONPATH": REPO,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_CONFIG": json.dumps(tf_config),
        }
        logs.append(open(tmp_path / f"worker{index}.log", "w+"))
        processes.append(
            subprocess.Popen(command, env=env, stdout=logs[-1], stderr=subprocess.STDOUT)
        )
    try:
        codes = [process.wait(timeout=900) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert codes == [0, 0], "\n\n".join(text[-3000:] for text in outputs)

    results = json.load(open(os.path.join(model_dir, "results.json")))
    assert (results["strategy"], results["num_workers"], results["num_replicas"]) == (
        "multi_worker",
        2,
        2,
    )
    assert results["global_batch_size"] == 32
    assert [r["epoch"] for r in results["epochs"]] == [0, 1]
    # Metrics are reduced over both workers, so both print the same summary.
    summaries = [
        [line.split(";")[0] for line in text.splitlines() if line.startswith("Median")]
        for text in outputs
    ]
    assert summaries[0] == summaries[1] and len(summaries[0]) == 1
    names = set(os.listdir(model_dir))
    outputs_of_the_chief = {
        "best.keras",
        "checkpoints",
        "last.keras",
        "preprocessing.json",
        "results.json",
        "saved_model",
        "tensorboard",
    }
    assert outputs_of_the_chief <= names
    assert [name for name in names if name.endswith("-tmp")] == []  # worker 1's copies are gone

    preprocessing = json.load(open(os.path.join(model_dir, "preprocessing.json")))
    pixels = load_digits().images[:12, ..., None].astype(np.float64) * 255 / 16
    loaded = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    served = loaded.signatures["serving_default"](images=tf.constant(pixels, tf.float32))
    model = keras.saving.load_model(os.path.join(model_dir, "last.keras"))
    normalized = (pixels - preprocessing["mean"][0]) / preprocessing["std"][0]
    expected = model.predict(normalized.astype("float32"), verbose=0)
    np.testing.assert_allclose(served["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
