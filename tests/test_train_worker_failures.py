"""Multi-worker faults on 127.0.0.1: a lone worker, a preempted job, a lost worker, a rerun.

Each worker is a ``gn-train`` process (``train.cli.run_command``, the real
command line and its error handling) with its own TF_CONFIG.  To keep the
tracing of the distributed step short, the processes swap the zoo model for
a one-convolution GN network (``classify.build_zoo_model``); everything the
faults go through (strategy, loop, checkpoints, preemption handler) is the
real machinery.  Each check asserts the one line a user gets, the exit
status, that no traceback is printed, and what is on disk.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from gn_keras.train import checkpoints

TINY_GN_TRAIN = """
import sys
import keras
from gn_keras import GroupNormalization
from gn_keras.train import classify

def tiny_network(config, preprocessing):
    height, width = preprocessing["image_size"]
    inputs = keras.Input((height, width, preprocessing["channels"]))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = GroupNormalization(groups=2, name="gn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(preprocessing["num_classes"], name="logits")(x)
    return keras.Model(inputs, outputs)

classify.build_zoo_model = tiny_network
sys.argv[0] = "gn-train"
classify.run()
"""
# TensorFlow's own start-up, gRPC and coordination-service lines, whose count
# varies with timing (CI saw 17, e.g. a late "Shutdown() was called while
# coordination agent is in error state"); the traceback wall was ~90.
MAX_STDERR_LINES = 24


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """``size`` gn-train workers on loopback ports, started and read by index."""

    def __init__(self, tmp_path, size, flags, name):
        self.tmp_path, self.flags, self.name = tmp_path, flags, name
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(size)]
        self.processes, self.launches, self.logs = {}, 0, []

    def start(self, indices):
        self.launches += 1
        for index in indices:
            tf_config = {
                "cluster": {"worker": self.addresses},
                "task": {"type": "worker", "index": index},
            }
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
            stem = self.tmp_path / f"{self.name}{self.launches}-worker{index}"
            self.logs += [open(f"{stem}.out", "w"), open(f"{stem}.err", "w")]
            self.processes[index] = subprocess.Popen(
                [sys.executable, "-c", TINY_GN_TRAIN, *self.flags],
                env=env,
                stdout=self.logs[-2],
                stderr=self.logs[-1],
            )

    def output(self, index, stream):
        return (self.tmp_path / f"{self.name}{self.launches}-worker{index}.{stream}").read_text()

    def wait_for(self, index, pattern, timeout=240):
        """The first match of ``pattern`` in worker ``index``'s stdout, polling."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output(index, "out"))
            if found:
                return found
            if self.processes[index].poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"worker {index} never printed {pattern!r}: {self.report()}")

    def wait(self, timeout=120):
        try:
            return {i: p.wait(timeout=timeout) for i, p in self.processes.items()}
        finally:
            self.kill()

    def kill(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()
        self.logs = []

    def report(self):
        return "\n".join(
            f"--- worker {i} {stream}\n{self.output(i, stream)[-2500:]}"
            for i in self.processes
            for stream in ("out", "err")
        )


def one_line_of_ours(stderr, prefix):
    """The single stderr line starting with ``prefix``; no traceback, few lines in all."""
    ours = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(ours) == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) <= MAX_STDERR_LINES, stderr
    return ours[0]


def checkpoint_numbers(directory):
    return sorted(
        int(name[len("ckpt-") : -len(".index")])
        for name in os.listdir(directory)
        if re.fullmatch(r"ckpt-\d+\.index", name)
    )


@pytest.fixture
def cluster_factory(tmp_path):
    clusters = []

    def make(size, flags, name="run"):
        clusters.append(Cluster(tmp_path, size, flags, name))
        return clusters[-1]

    yield make
    for cluster in clusters:
        cluster.kill()


def test_lone_workers_say_they_wait_then_give_up_naming_the_missing_one(tmp_path, cluster_factory):
    # Worker 0 runs the coordination service and waits for worker 1; worker 1
    # (its own cluster) finds no worker 0.  Each alone, each named.  A third
    # worker finds its own port taken.
    timeout = 6
    lone = {}
    for index in (0, 1, "busy"):
        lone[index] = cluster_factory(
            2,
            [
                "--strategy=multi_worker",
                f"--model_dir={tmp_path / f'lone{index}'}",
                f"--worker_wait_timeout={timeout}",
            ],
            name=f"lone{index}-",
        )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        lone["busy"].addresses[0] = f"127.0.0.1:{squatter.getsockname()[1]}"
        for index, cluster in lone.items():
            cluster.start([0 if index == "busy" else index])
        started = time.monotonic()
        codes = {index: cluster.wait(timeout=240) for index, cluster in lone.items()}
    assert time.monotonic() - started < 200
    for index in (0, 1):
        cluster = lone[index]
        assert codes[index] == {index: 1}, cluster.report()
        waiting = [
            line
            for line in cluster.output(index, "out").splitlines()
            if line.startswith(f"Waiting for 2 workers at {', '.join(cluster.addresses)}")
        ]
        assert waiting, cluster.report()  # every timeout/3 s
        line = one_line_of_ours(cluster.output(index, "err"), "gn-train: error:")
        missing = 1 - index
        assert f"worker /job:worker/task:{missing} ({cluster.addresses[missing]})" in line
        assert f"did not start within --worker_wait_timeout={timeout} s" in line
        assert not os.path.exists(tmp_path / f"lone{index}" / "results.json")
    busy = lone["busy"]
    assert codes["busy"] == {0: 1}, busy.report()
    line = one_line_of_ours(busy.output(0, "err"), "gn-train: error:")
    assert f"worker /job:worker/task:0 ({busy.addresses[0]}), this process, could not" in line
    assert "is another process using that port?" in line


def test_preemption_saves_in_the_step_numbering_and_a_lost_worker_is_named(
    tmp_path, cluster_factory
):
    steps_per_epoch, epochs = 4, 6  # epochs to spare: the kill must come before the end
    model_dir = tmp_path / "run"
    ckpt_dir = model_dir / "checkpoints"
    cluster = cluster_factory(
        2,
        [
            "--strategy=multi_worker",
            f"--model_dir={model_dir}",
            "--image_size=8",
            "--batch_size_per_replica=16",
            f"--epochs={epochs}",
            f"--steps_per_epoch={steps_per_epoch}",
            "--eval_steps=1",
            "--log_every_steps=1",
        ],
    )

    # 1. SIGTERM to worker 1 in epoch 2: both workers save, say so, exit 42.
    cluster.start([0, 1])
    cluster.wait_for(0, rf"Epoch 2/{epochs}")
    cluster.processes[1].send_signal(signal.SIGTERM)
    codes = cluster.wait()
    assert codes == {0: 42, 1: 42} == {i: checkpoints.PREEMPTED_EXIT_STATUS for i in (0, 1)}, (
        cluster.report()
    )
    lines = [one_line_of_ours(cluster.output(i, "err"), "Preempted (SIGTERM):") for i in (0, 1)]
    assert lines[0] == lines[1]
    saved = re.search(
        r"after (\d+) steps \((\d+) epochs and (\d+) steps\) was saved to (\S+);", lines[0]
    )
    step, epoch, step_in_epoch = (int(saved.group(k)) for k in (1, 2, 3))
    assert saved.group(4) == str(ckpt_dir / f"ckpt-{step}")
    assert "rerun the same command on all workers to resume" in lines[0]
    assert step == epoch * steps_per_epoch + step_in_epoch
    assert steps_per_epoch < step < (epochs - 1) * steps_per_epoch
    # One numbering: the epoch-end checkpoints and the preemption one, by step.
    epoch_ends = list(range(steps_per_epoch, step, steps_per_epoch))
    assert checkpoint_numbers(ckpt_dir) == epoch_ends + [step]
    leftovers = [name for name in os.listdir(model_dir) if re.search(r"worker\d+-tmp", name)]
    assert leftovers == []  # worker 1's temporary copies are gone

    # 2. The index is lost: the one rebuilt from the files on disk must take
    # the preemption checkpoint for the newest, so the rerun resumes from it.
    os.remove(ckpt_dir / "checkpoint")
    cluster.start([0, 1])
    resumed = cluster.wait_for(0, r"Resuming at epoch \d+, step (\d+)")
    assert int(resumed.group(1)) == step_in_epoch  # not 0: an epoch-end checkpoint
    next_end = (epoch + 1) * steps_per_epoch
    cluster.wait_for(0, rf"Epoch {epoch + 2}/{epochs}")  # after the checkpoint of epoch + 1

    # 3. Worker 0 (the chief, which also runs the coordination service) dies.
    cluster.processes[0].kill()
    codes = cluster.wait()
    assert codes[1] == 1, cluster.report()
    line = one_line_of_ours(cluster.output(1, "err"), "gn-train: error:")
    assert f"lost worker /job:worker/task:0 ({cluster.addresses[0]})" in line, line
    assert (
        f"rerun all workers to resume from the last checkpoint in --model_dir={model_dir}" in line
    )
    # The rerun trained on from the preemption checkpoint, in the same numbering.
    state = tf.train.get_checkpoint_state(str(ckpt_dir))
    kept = [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]
    assert kept == sorted(kept) and kept[-2:] == [step, next_end], kept


@pytest.mark.parametrize("error", [tf.errors.UnavailableError(None, None, "gone"), KeyError("k")])
def test_after_a_lost_worker_the_watchers_late_failures_print_nothing(error):
    """CI saw a watcher print a traceback after the one line: late errors stay quiet."""
    from gn_keras.train import cluster

    passed_on = []
    hook = cluster._quiet_watcher_failures(passed_on.append, Exception)
    for name in ("PeerTerminationWatcher-1", "WorkerTerminationSignalWatcher-1", "Thread-7"):
        thread = threading.Thread(target=lambda: None, name=name)
        hook(threading.ExceptHookArgs((type(error), error, None, thread)))
    assert [args.thread.name for args in passed_on] == ["Thread-7"]
    # Before any loss, only peer failures are dropped.
    hook = cluster._quiet_watcher_failures(passed_on.append)
    hook(
        threading.ExceptHookArgs(
            (type(error), error, None, threading.Thread(name="PeerTerminationWatcher-2"))
        )
    )
    dropped = isinstance(error, tf.errors.UnavailableError)
    assert len(passed_on) == (1 if dropped else 2)
