"""Rerunning in a finished run's --model_dir: same settings resume, others are refused.

See train/settings.py. Each refusal must leave every file of the earlier run byte for byte as it
was; ``--extend_epochs`` is the one allowed change and is recorded.  The in-process runs train
the small conv-GN network of ``tests/test_train_e2e.py`` (the settings, not the model, are under
test); the command-line refusal stops before any model is built.
"""

import hashlib
import json
import os
import sys

import forked_cli
import pytest
from test_train_e2e import small_gn_network

from gn_keras._checks import FlagError
from gn_keras.train import classify
from gn_keras.train import config as config_lib


def _config(model_dir, **overrides):
    values = dict(
        image_size=8,
        batch_size_per_replica=16,
        epochs=1,
        steps_per_epoch=3,
        eval_steps=1,
        warmup_epochs=0,
        model_dir=str(model_dir),
    )
    values.update(overrides)
    return config_lib.make_config(**values)


def _train(config):
    return classify.train(config, build_model=small_gn_network)


def _digests(directory):
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name == ".lock":  # holds the pid of the latest attempt, by design
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(
                    handle.read()
                ).hexdigest()
    return digests


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    _train(_config(model_dir))
    return model_dir


@pytest.mark.parametrize(
    "change, named",
    [
        ({"groups": 4}, "--groups 8 -> 4"),
        ({"norm": "bn"}, "--norm 'gn' -> 'bn'"),
        ({"image_size": 16}, "--image_size 8 -> 16"),
        ({"batch_size_per_replica": 8}, "the global batch (per-replica batch x replicas) 16 -> 8"),
        ({"epochs": 2}, "--epochs=1, not 2"),
    ],
)
def test_a_changed_setting_is_refused_and_nothing_is_touched(finished_run, change, named):
    before = _digests(finished_run)
    with pytest.raises(FlagError) as refused:
        _train(_config(finished_run, **change))
    message = str(refused.value)
    assert named in message and "new --model_dir" in message and "\n" not in message
    assert _digests(finished_run) == before


def test_execution_settings_may_change_on_a_rerun(finished_run):
    results = _train(_config(finished_run, log_every_steps=2, steps_per_loop=3))
    assert [r["epoch"] for r in results["epochs"]] == [0]


def test_extend_epochs_trains_on_and_records_where_the_schedule_changed(tmp_path):
    model_dir = tmp_path / "run"
    _train(_config(model_dir))
    results = _train(_config(model_dir, epochs=3, extend_epochs=True))
    assert [r["epoch"] for r in results["epochs"]] == [0, 1, 2]
    expected = [{"after_epoch": 1, "epochs_from": 1, "epochs_to": 3}]
    assert results["schedule_changes"] == expected
    with open(model_dir / "settings.json", encoding="utf-8") as handle:
        stored = json.load(handle)
    assert stored["schedule_changes"] == expected and stored["settings"]["epochs"] == 3
    with pytest.raises(FlagError, match="--epochs=3, not 2"):
        _train(_config(model_dir, epochs=2, extend_epochs=True))


def test_the_command_line_refusal_is_one_line_with_status_2(finished_run):
    before = _digests(finished_run)
    result = forked_cli.run(
        [
            sys.executable,
            "-m",
            "gn_keras.train.classify",
            f"--model_dir={finished_run}",
            "--image_size=8",
            "--batch_size_per_replica=16",
            "--epochs=1",
            "--steps_per_epoch=3",
            "--eval_steps=1",
            "--warmup_epochs=0",
            "--groups=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "gn-train: error" in line]
    assert len(errors) == 1 and "--groups 8 -> 2" in errors[0]
    assert "Traceback" not in result.stderr
    assert _digests(finished_run) == before


def test_a_video_rerun_may_change_only_the_final_tests_batch(tmp_path):
    """``--test_batch_size_per_replica`` groups the 10-clip test's videos; nothing else."""
    from gn_keras.train import settings
    from gn_keras.train.video import config as video_config

    def shaping(**overrides):
        config = video_config.make_config(model_dir=str(tmp_path), **overrides)
        return settings.shaping_settings(config, global_batch_size=8)

    settings.record(str(tmp_path), shaping(test_batch_size_per_replica=1), [])
    assert settings.check(str(tmp_path), shaping(test_batch_size_per_replica=4)) == []
    with pytest.raises(FlagError, match="--frames 8 -> 4"):
        settings.check(str(tmp_path), shaping(test_batch_size_per_replica=4, frames=4))
