"""Resuming ``train.classify`` from a damaged checkpoint (train/checkpoints.py).

A tiny run leaves two epoch-end checkpoints; the tests damage them the way a
killed save or a full disk does (a data file cut short, an index file gone)
and resume.  The newest intact checkpoint must be used, with a warning that
names the damaged one; with none intact, the run must stop with a one-line
error naming the file, in Python and on the command line.  A damaged
manager index (the ``checkpoint`` file) must not restart the run from
scratch: the checkpoints on disk are used, and the index rewritten.
"""

import logging
import os
import re
import shutil
import sys

import forked_cli
import pytest
import tensorflow as tf
from test_train_e2e import tiny_model

from gn_keras import load
from gn_keras.train import classify
from gn_keras.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def _config(model_dir, epochs):
    return config_lib.make_config(
        image_size=8,
        epochs=epochs,
        steps_per_epoch=STEPS,
        eval_steps=1,
        warmup_epochs=0,
        model_dir=str(model_dir),
        # The tests resume a finished 2-epoch run for a third epoch.
        extend_epochs=True,
    )


def _kept_checkpoints(model_dir):
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    return list(state.all_model_checkpoint_paths)


def _damage(prefix, how):
    if how == "truncated_data":
        data = f"{prefix}.data-00000-of-00001"
        with open(data, "r+b") as handle:
            handle.truncate(os.path.getsize(data) // 2)
    else:
        os.remove(f"{prefix}.index")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(model_dir, results) of a 2-epoch run: checkpoints after epochs 1 and 2."""
    model_dir = tmp_path_factory.mktemp("checkpoints") / "run"
    results = classify.train(_config(model_dir, 2), build_model=tiny_model(4))
    return model_dir, results


@pytest.fixture
def copy_of_run(finished, tmp_path):
    model_dir, results = finished
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    return copy, results


@pytest.mark.parametrize("how", ["truncated_data", "missing_index"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(copy_of_run, caplog, capsys, how):
    model_dir, first = copy_of_run
    older, newest = _kept_checkpoints(model_dir)
    _damage(newest, how)
    with caplog.at_level(logging.WARNING):
        results = classify.train(_config(model_dir, 3), build_model=tiny_model(4))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith(f"{newest}: cannot read the checkpoint") and older in m for m in warnings
    ), warnings
    # Epoch 1 (index 0) is kept from the first run; epoch 2 (printed 1-based) is trained again.
    assert (
        f"Resuming at epoch 2, step 0 from {model_dir / 'checkpoints'}" in capsys.readouterr().out
    )
    assert [record["epoch"] for record in results["epochs"]] == [0, 1, 2]
    assert results["epochs"][0] == first["epochs"][0]
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    load.check_checkpoint_file(latest)  # the new one reads in full
    iterations = tf.train.load_variable(latest, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
    assert int(iterations) == 3 * STEPS


def test_no_intact_checkpoint_is_a_clear_error(copy_of_run):
    model_dir, _ = copy_of_run
    kept = _kept_checkpoints(model_dir)
    for prefix in kept:
        _damage(prefix, "truncated_data")
    pattern = (
        rf"^{re.escape(kept[-1])}: cannot read the checkpoint \(truncated or corrupt\?\)"
        rf".*no older checkpoint in {re.escape(str(model_dir / 'checkpoints'))} is intact"
    )
    with pytest.raises(load.ModelFileError, match=pattern):
        classify.train(_config(model_dir, 3), build_model=tiny_model(4))

    # The same from gn-train: one message, no traceback.
    done = forked_cli.run(
        [
            sys.executable,
            "-m",
            "gn_keras.train.classify",
            f"--model_dir={model_dir}",
            "--model=resnet20",
            "--image_size=8",
            "--epochs=3",
            "--extend_epochs",
            f"--steps_per_epoch={STEPS}",
            "--eval_steps=1",
            "--warmup_epochs=0",  # the run's own settings, so only the damage stops it
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if f"{kept[-1]}: cannot read" in line]
    assert len(lines) == 1 and "delete that directory" in lines[0], done.stderr[-3000:]


@pytest.mark.parametrize("how", ["garbage", "empty", "missing", "garbage_and_newest_truncated"])
def test_damaged_index_file_resumes_from_the_checkpoints_on_disk(copy_of_run, caplog, capsys, how):
    model_dir, first = copy_of_run
    older, newest = _kept_checkpoints(model_dir)
    index = model_dir / "checkpoints" / "checkpoint"
    if how == "missing":
        index.unlink()
    else:  # a write cut short, or overwritten with bytes that are no text proto
        index.write_bytes(b"" if how == "empty" else b'model_checkpoint_path: "ck\x00\xff{')
    if how.endswith("newest_truncated"):
        _damage(newest, "truncated_data")
    resumed_from = older if how.endswith("newest_truncated") else newest
    with caplog.at_level(logging.WARNING):
        results = classify.train(_config(model_dir, 3), build_model=tiny_model(4))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    problem = "is missing" if how == "missing" else "is unreadable"
    assert any(m.startswith(f"{index} {problem}") and "ckpt-4, ckpt-2" in m for m in warnings), (
        warnings
    )
    epochs_kept = 1 if resumed_from == older else 2
    assert (
        f"Resuming at epoch {epochs_kept + 1}, step 0 from {model_dir / 'checkpoints'}"
        in capsys.readouterr().out
    )
    assert [record["epoch"] for record in results["epochs"]] == [0, 1, 2]
    assert results["epochs"][:epochs_kept] == first["epochs"][:epochs_kept]
    # The rewritten index lists the old files too, so the manager rotates them out.
    assert _kept_checkpoints(model_dir) == [
        older,
        newest,
        str(model_dir / "checkpoints" / "ckpt-6"),
    ]
