"""Flag errors name the flag, and a run that cannot start leaves nothing behind.

(An unknown --norm used to name ``gn_keras.norms.get``, --groups=7 a layer;
and a first attempt that failed at its model build stored its settings, so
the corrected rerun was refused as a "run with other settings".)
"""

import pytest
from absl import logging

from gn_keras._checks import FlagError
from gn_keras.train import classify, data
from gn_keras.train import config as config_lib


def _config(model_dir, **overrides):
    values = dict(image_size=8, epochs=1, steps_per_epoch=1, eval_steps=1, warmup_epochs=0)
    values.update(overrides)
    return config_lib.make_config(model_dir=str(model_dir), **values)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"norm": "xyz"}, "--norm='xyz' is unknown; expected one of bn,"),
        ({"groups": 7}, "--model=resnet20 --norm=gn --groups=7 cannot be built: "),
        ({"norm": "gn", "group_size": 3}, "--group_size=3 cannot be built: "),
    ],
)
def test_flag_errors_name_the_flag_and_leave_no_model_dir(tmp_path, overrides, message):
    model_dir = tmp_path / "run"
    with pytest.raises(FlagError) as refused:
        classify.train(_config(model_dir, **overrides))
    assert message in str(refused.value)
    assert not model_dir.exists()


def test_a_failed_start_stores_no_settings_so_the_fixed_rerun_runs(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()  # an existing directory stays, but holds no settings.json
    with pytest.raises(FlagError):
        classify.train(_config(model_dir, groups=7))
    assert not (model_dir / "settings.json").exists()
    results = classify.train(_config(model_dir, groups=8))
    assert [r["epoch"] for r in results["epochs"]] == [0]


def test_data_dir_with_built_in_data_is_named_as_unused(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    data.make_source(_config(tmp_path / "run", data_dir=str(tmp_path)))
    assert warnings == [
        f"--data_dir={tmp_path} is not used by --dataset=digits (its data is built in)."
    ]
