"""A damaged results.json is rebuilt from the TensorBoard logs, or refused in one line naming it.

(Issue: garbage bytes gave a usage error with a --helpfull hint, a cut-off
file a traceback.)  The rebuilt records must equal what the run wrote
before the damage, up to TensorBoard's float32.  The in-process runs train the small conv-GN
network of ``tests/test_train_e2e.py``: the records, not the model, are under test.  The command
line builds the zoo's ResNet-20, so its run is one of those, left without the export (~20 s of
CPU) that the command never reaches.
"""

import json
import shutil
import sys

import forked_cli
import pytest
from test_train_e2e import small_gn_network

from gn_keras.train import classify, outputs
from gn_keras.train import config as config_lib

DAMAGES = {
    "garbage bytes": lambda text: b"\xff\xfe\x00garbage" + text[:5],
    "cut off": lambda text: text[: len(text) // 2],
    "wrong shape": lambda text: b"[1, 2, 3]",
    "no epochs": lambda text: b'{"flags": {}}',
}
FLAGS = dict(
    image_size=8,
    batch_size_per_replica=16,
    epochs=2,
    steps_per_epoch=2,
    eval_steps=1,
    warmup_epochs=0,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("damage") / "run"
    results = classify.train(
        config_lib.make_config(model_dir=str(model_dir), **FLAGS), build_model=small_gn_network
    )
    return model_dir, results["epochs"]


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """A finished ResNet-20 run (the command's default model) without its SavedModel."""
    model_dir = tmp_path_factory.mktemp("damage_zoo") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outputs.RunOutputs, "export", lambda self, model, export_fn: None)
        results = classify.train(config_lib.make_config(model_dir=str(model_dir), **FLAGS))
    return model_dir, results["epochs"]


def _copy(finished_run, tmp_path):
    model_dir, epochs = finished_run
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    return copy, epochs


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_results_are_rebuilt_from_tensorboard(finished_run, tmp_path, damage):
    model_dir, epochs = _copy(finished_run, tmp_path)
    path = model_dir / "results.json"
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    results = classify.train(
        config_lib.make_config(model_dir=str(model_dir), **FLAGS), build_model=small_gn_network
    )
    rebuilt = json.loads(path.read_text(encoding="utf-8"))["epochs"]
    assert rebuilt == results["epochs"]
    assert [r["epoch"] for r in rebuilt] == [r["epoch"] for r in epochs] == [0, 1]
    for got, want in zip(rebuilt, epochs):
        assert got["train"] == pytest.approx(want["train"], rel=1e-6)
        assert got["val"] == pytest.approx(want["val"], rel=1e-6)
        for key in ("learning_rate", "images_per_sec", "seconds"):
            assert got[key] == pytest.approx(want[key], rel=1e-6)
        assert got["resumed_at_step"] == want["resumed_at_step"]


def test_damaged_results_without_logs_stop_the_command_in_one_line(zoo_run, tmp_path):
    model_dir, _ = _copy(zoo_run, tmp_path)
    shutil.rmtree(model_dir / "tensorboard")
    (model_dir / "results.json").write_bytes(b"\x00\x01 not json")
    argv = [f"--{key}={value}" for key, value in FLAGS.items()]
    result = forked_cli.run(
        [sys.executable, "-m", "gn_keras.train.classify", f"--model_dir={model_dir}", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "gn-train: error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert f"{model_dir / 'results.json'} is damaged" in errors[0]
    assert "cannot be rebuilt" in errors[0] and "--helpfull" not in errors[0]
    assert (model_dir / "results.json").read_bytes() == b"\x00\x01 not json"
