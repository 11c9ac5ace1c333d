"""Kill a training job with SIGKILL mid-epoch, rerun the same command, check nothing
was lost or repeated: epochs in ``results.json`` are 0..E-1 exactly once, the
resumed epoch starts at the checkpointed step, and the optimizer took exactly
``epochs × steps_per_epoch`` steps in total."""

import json
import os
import signal
import subprocess
import sys
import time

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS, EVERY = 3, 16, 4


def command(model_dir, seed):
    return [
        sys.executable,
        "-m",
        "gn_keras.train.classify",
        f"--model_dir={model_dir}",
        "--model=resnet20",
        "--image_size=16",
        f"--epochs={EPOCHS}",
        f"--steps_per_epoch={STEPS}",
        "--eval_steps=2",
        f"--checkpoint_every_steps={EVERY}",
        "--warmup_epochs=0",
        f"--seed={seed}",
    ]


def environment():
    return {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}


def checkpoint_state(directory):
    latest = tf.train.latest_checkpoint(directory)
    if latest is None:
        return None

    def read(name):
        return int(tf.train.load_variable(latest, f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))

    return read("epoch"), read("step_in_epoch"), read("optimizer/_iterations")


def wait_for_mid_epoch_checkpoint(process, directory, timeout=600):
    """Poll until a checkpoint inside epoch >= 1 exists (or the job ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            state = checkpoint_state(directory)
        except (tf.errors.OpError, ValueError):  # being written right now
            state = None
        if state and state[0] >= 1 and state[1] > 0:
            return
        # Each look opens the checkpoint three times: polling every few ms
        # took CPU from the job being watched (which checkpoints every few steps).
        time.sleep(0.025)
    raise AssertionError(f"no mid-epoch checkpoint in {directory} (exit {process.poll()})")


def test_sigkill_mid_epoch_then_rerun_loses_and_repeats_nothing(rng, tmp_path):
    model_dir = str(tmp_path / "run")
    checkpoints = os.path.join(model_dir, "checkpoints")
    seed = int(rng.integers(1000))
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        command(model_dir, seed), env=environment(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_mid_epoch_checkpoint(first, checkpoints)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=60)
        log.close()
    assert first.returncode == -signal.SIGKILL
    epoch, step, iterations = checkpoint_state(checkpoints)
    assert step > 0 and iterations == epoch * STEPS + step
    before = json.load(open(os.path.join(model_dir, "results.json")))["epochs"]
    assert [r["epoch"] for r in before][:epoch] == list(range(epoch))

    second = subprocess.run(
        command(model_dir, seed), env=environment(), capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"Resuming at epoch {epoch + 1}, step {step}" in second.stdout  # printed 1-based
    epoch_lines = [
        line for line in second.stdout.replace("\r", "\n").splitlines() if line.startswith("Epoch ")
    ]
    assert epoch_lines == [f"Epoch {e + 1}/{EPOCHS}" for e in range(epoch, EPOCHS)]
    # stdout is a pipe: one plain progress line per epoch, no terminal codes.
    assert "\x1b[" not in second.stdout and "\r" not in second.stdout
    progress_lines = [
        line for line in second.stdout.splitlines() if line.startswith(f"{STEPS}/{STEPS} - ")
    ]
    assert len(progress_lines) == EPOCHS - epoch

    results = json.load(open(os.path.join(model_dir, "results.json")))
    assert [r["epoch"] for r in results["epochs"]] == list(range(EPOCHS))
    assert results["epochs"][:epoch] == before[:epoch]  # completed epochs kept as they were
    assert results["epochs"][epoch]["resumed_at_step"] == step
    assert checkpoint_state(checkpoints) == (EPOCHS, 0, EPOCHS * STEPS)
    assert os.path.isdir(os.path.join(model_dir, "saved_model"))
