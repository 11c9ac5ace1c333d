"""--strategy=mirrored without a GPU says so; --cpu_replicas=N mirrors over N CPU devices.

(Issue 12, item 8: mirrored silently ran one replica on a machine with no
GPU, and there was no command-line way to try distribution on a laptop.)  The command
is ``gn-train`` with the zoo model swapped for a one-convolution GN network
(``TINY_GN_TRAIN`` of ``tests/test_train_worker_failures.py``): the replicas,
not the model, are under test.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import logging
from test_train_worker_failures import TINY_GN_TRAIN

from gn_keras._checks import FlagError
from gn_keras.train import strategy as strategy_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="the no-GPU case")
def test_mirrored_without_gpu_warns_in_one_line(monkeypatch):
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    strategy = strategy_lib.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 1
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "found no GPU: it runs one replica" in warnings[0] and "--cpu_replicas" in warnings[0]


def test_cpu_replicas_with_another_strategy_is_refused():
    with pytest.raises(FlagError, match="--cpu_replicas=2 needs --strategy=mirrored"):
        strategy_lib.make_strategy("one_device", cpu_replicas=2)


def test_gn_train_cpu_replicas_runs_two_replicas(tmp_path):
    model_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            TINY_GN_TRAIN,
            f"--model_dir={model_dir}",
            "--strategy=mirrored",
            "--cpu_replicas=2",
            "--image_size=8",
            "--batch_size_per_replica=4",
            "--epochs=1",
            "--steps_per_epoch=2",
            "--eval_steps=1",
            "--warmup_epochs=0",
        ],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GN_KERAS_KERNELS": "off"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "found no GPU" not in done.stderr
    results = json.loads((model_dir / "results.json").read_text())
    assert results["num_replicas"] == 2
    assert results["global_batch_size"] == 8
    assert results["strategy"] == "mirrored"
