"""Each study end to end on a tiny configuration, checked against results.json.

Each study test trains for real (8×8 digits, 2 epochs of 2 steps) through
``train.classify.train``, then parses the Markdown table the study wrote and
compares each number with the value it must come from: the runs' own
``results.json`` (median val error of the last 5 epochs, median over seeds),
read back here independently.  The zoo model is swapped for a stand-in with
ResNet-20's stage widths (``classify.build_zoo_model``, as
``tests/test_train_worker_failures.py`` does): the studies, not the network,
are under test, and a ResNet-20 run costs ~30 s of CPU, two thirds of it in
its export.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from gn_keras import models, norms
from gn_keras.train import classify, loop, studies
from gn_keras.train import config as config_lib
from gn_keras.train import study as study_cli
from gn_keras.train.studies import feature_stats, runner, specs

TINY = {
    "epochs": 2,
    "steps_per_epoch": 2,
    "eval_steps": 1,
    "image_size": 8,
    "batch_size_per_replica": 4,
    "groups": 4,
    "log_every_steps": 1,
}


def resnet20_stand_in(config, preprocessing):
    """conv-norm-ReLU at ResNet-20's stage widths 16 and 32, pooled, dense logits.

    Normalization, groups and group size come from ``config`` as the zoo
    takes them, so G=32 cannot split the first 16 channels here either.
    """
    factory = norms.get(
        config.norm,
        groups=None if config.group_size else config.groups,
        group_size=config.group_size,
    )
    x = inputs = keras.Input((*preprocessing["image_size"], preprocessing["channels"]))
    for index, width in enumerate((16, 32)):
        conv = factory.conv(2, width, 3, strides=1 + index, padding="same", name=f"conv{index}")
        x = factory.normalize_relu(conv(x), f"norm{index}", f"relu{index}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(preprocessing["num_classes"], name="logits")(x)
    return keras.Model(inputs, logits, name="resnet20_stand_in")


@pytest.fixture(autouse=True)
def _small_zoo_model():
    # Its own patch: a test's ``monkeypatch.undo()`` must not bring ResNet-20 back.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classify, "build_zoo_model", resnet20_stand_in)
        yield


def _tiny_config(rng, **fields):
    return config_lib.make_config(**{**TINY, "seed": int(rng.integers(0, 1000)), **fields})


def parse_tables(markdown):
    """``[{row label: {column: cell}}]`` for every table in ``markdown``."""
    tables, block = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if block:
            header, rows = block[0], block[2:]
            tables.append({row[0]: dict(zip(header[1:], row[1:])) for row in rows})
            block = []
    return tables


def _read_results(run_dir):
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as handle:
        return json.load(handle)


def expected_error(study_dir, key, seeds):
    """The setting's error as the table must show it: % median over seeds."""
    errors = [
        100.0
        * _read_results(os.path.join(study_dir, f"{key}_seed{seed}"))["median_last5_top1_error"]
        for seed in seeds
    ]
    return float(np.median(errors))


def assert_cell(cell, value):
    assert float(cell) == pytest.approx(value, abs=0.005 + 1e-9)


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _assert_pngs(study_dir, names):
    for name in names:
        with open(os.path.join(study_dir, name), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def _interrupt_after_first_epoch(run_dir):
    """Leave ``run_dir`` as a job killed during its second epoch leaves it."""
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    first, last = state.all_model_checkpoint_paths[0], state.all_model_checkpoint_paths[-1]
    for name in os.listdir(checkpoint_dir):
        if name.startswith(os.path.basename(last) + "."):
            os.remove(os.path.join(checkpoint_dir, name))
    tf.compat.v1.train.update_checkpoint_state(
        checkpoint_dir, first, all_model_checkpoint_paths=[first]
    )
    results = _read_results(run_dir)
    results["epochs"] = results["epochs"][:1]
    with open(os.path.join(run_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle)
    shutil.rmtree(os.path.join(run_dir, "saved_model"))
    return results["epochs"][0]


def test_norms_study_table_figure_and_resume(rng, tmp_path):
    # One norm keeps this test short; the Δ-vs-BN row is checked in the
    # feature_stats test, whose table has the same layout.
    config = _tiny_config(rng)
    options = specs.StudyOptions(norms=("gn",))
    outcome = studies.run_study("norms", config, str(tmp_path), options)
    study_dir = str(tmp_path / "norms")
    assert outcome.runs.trained == [f"gn_seed{config.seed}"]
    _assert_pngs(study_dir, ["norms_curves.png"])
    (table,) = parse_tables(_read(outcome.report_path))
    assert_cell(table["val error (%)"]["GN"], expected_error(study_dir, "gn", [config.seed]))

    # Re-run: the run is finished, nothing is trained, results untouched.
    gn_dir = os.path.join(study_dir, f"gn_seed{config.seed}")
    stamp = os.stat(os.path.join(gn_dir, "results.json")).st_mtime_ns
    again = studies.run_study("norms", config, str(tmp_path), options)
    assert again.runs.trained == [] and again.runs.skipped == [f"gn_seed{config.seed}"]
    assert os.stat(os.path.join(gn_dir, "results.json")).st_mtime_ns == stamp

    # A run interrupted in its second epoch resumes there: epoch 0 is kept
    # as it was, epoch 1 is trained once more, the table is rewritten.
    first_epoch = _interrupt_after_first_epoch(gn_dir)
    resumed = studies.run_study("norms", config, str(tmp_path), options)
    assert resumed.runs.trained == [f"gn_seed{config.seed}"]
    records = _read_results(gn_dir)["epochs"]
    assert [r["epoch"] for r in records] == [0, 1] and records[0] == first_epoch
    (table,) = parse_tables(_read(resumed.report_path))
    assert_cell(table["val error (%)"]["GN"], expected_error(study_dir, "gn", [config.seed]))

    # Other settings in the same --out_dir are refused, naming the field.
    with pytest.raises(ValueError, match="epochs"):
        studies.run_study(
            "norms",
            config_lib.make_config(**{**TINY, "epochs": 3, "seed": config.seed}),
            str(tmp_path),
            options,
        )


def _flag_values(argv):
    flag_values = flags.FlagValues()
    study_cli.define_study_flags(flag_values)
    flag_values(["gn-study"] + argv)
    return flag_values


def _tiny_flags(rng):
    seed = int(rng.integers(0, 1000))
    return seed, [
        f"--{name}={value}"
        for name, value in {**TINY, "seed": seed}.items()
        if name != "batch_size_per_replica"
    ]  # the study sets it


def test_batch_size_study_from_flags_scales_the_learning_rate(rng, tmp_path):
    seed, tiny = _tiny_flags(rng)
    flag_values = _flag_values(
        ["--study=batch_size", "--study_batch_sizes=2", f"--out_dir={tmp_path}"] + tiny
    )
    outcome = study_cli.run_from_flags(flag_values)
    study_dir = str(tmp_path / "batch_size")
    _assert_pngs(study_dir, ["batch_size_error.png", "batch_size_curves.png"])
    (table,) = parse_tables(_read(outcome.report_path))
    bn = expected_error(study_dir, "bn_b2", [seed])
    gn = expected_error(study_dir, "gn_b2", [seed])
    assert_cell(table["BN"]["2"], bn)
    assert_cell(table["GN"]["2"], gn)
    assert float(table["Δ (GN − BN)"]["2"]) == pytest.approx(gn - bn, abs=0.01)
    # §4.1's linear rule (0.1·N/32 per GPU): lr = base_lr · batch / reference.
    for key in ("bn_b2", "gn_b2"):
        results = _read_results(os.path.join(study_dir, f"{key}_seed{seed}"))
        flags_used = results["flags"]
        assert flags_used["batch_size_per_replica"] == 2
        assert results["peak_learning_rate"] == pytest.approx(
            flags_used["base_lr"] * 2 / flags_used["lr_reference_batch"]
        )


def test_groups_study_medians_over_seeds_and_marks_unbuildable_groups(rng, tmp_path):
    config = _tiny_config(rng)
    # The first stage has 16 channels (as ResNet-20's): G=32 cannot split it.
    options = specs.StudyOptions(groups=(32,), group_sizes=(1,), runs_per_config=2)
    outcome = studies.run_study("groups", config, str(tmp_path), options)
    study_dir = str(tmp_path / "groups")
    assert list(outcome.runs.not_applicable) == ["gn_G32"]
    seeds = [config.seed, config.seed + 1]
    assert sorted(outcome.runs.trained) == [f"gn_cpg1_seed{s}" for s in seeds]
    _assert_pngs(study_dir, ["groups.png"])
    markdown = _read(outcome.report_path)
    by_count, by_size = parse_tables(markdown)
    assert by_count["val error (%)"]["32"] == "n/a"
    assert "gn_G32" in markdown
    assert_cell(by_size["val error (%)"]["1 (=IN)"], expected_error(study_dir, "gn_cpg1", seeds))


class _Killed(Exception):
    """Stands for the end of a process killed mid-run."""


def _killed_in_second_epoch(monkeypatch):
    """Make the next run die in its second epoch, after training, before evaluation."""
    evaluations = []

    def evaluate(*args):
        if evaluations:
            raise _Killed()
        evaluations.append(args)
        return real_evaluate(*args)

    real_evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", evaluate)


def _stats(run_dir):
    return json.loads(_read(os.path.join(run_dir, "feature_stats.json")))


def _checkpoints_on_disk(run_dir):
    return [
        name for name in os.listdir(os.path.join(run_dir, "checkpoints")) if name.endswith(".index")
    ]


def test_feature_stats_study_records_percentiles_live_through_a_resume(rng, tmp_path, monkeypatch):
    config = _tiny_config(rng, model="resnet20", keep_checkpoints=1)
    study_dir = str(tmp_path / "feature_stats")
    none_dir = os.path.join(study_dir, f"none_seed{config.seed}")
    # The first run ("none") is killed after epoch 0: only that epoch is recorded.
    _killed_in_second_epoch(monkeypatch)
    with pytest.raises(_Killed):
        studies.run_study("feature_stats", config, str(tmp_path))
    monkeypatch.undo()
    keras.backend.clear_session()
    first_epoch = _stats(none_dir)["epochs"]
    assert [r["epoch"] for r in first_epoch] == [0]

    outcome = studies.run_study("feature_stats", config, str(tmp_path))
    assert outcome.runs.trained == [f"{key}_seed{config.seed}" for key in ("none", "bn", "gn")]
    _assert_pngs(study_dir, ["feature_stats.png"])
    (table,) = parse_tables(_read(outcome.report_path))
    errors = {key: expected_error(study_dir, key, [config.seed]) for key in ("none", "bn", "gn")}
    for key, column in (("none", "none"), ("bn", "BN"), ("gn", "GN")):
        assert_cell(table["val error (%)"][column], errors[key])
    assert table["Δ (vs. BN)"]["BN"] == "-"
    for key, column in (("none", "none"), ("gn", "GN")):
        assert float(table["Δ (vs. BN)"][column]) == pytest.approx(
            errors[key] - errors["bn"], abs=0.01
        )
    # Every run, the resumed one too, has one record per epoch, and no run
    # keeps more checkpoints than --keep_checkpoints.
    for run in outcome.runs.configs.values():
        assert [r["epoch"] for r in _stats(run.model_dir)["epochs"]] == [0, 1]
        assert len(_checkpoints_on_disk(run.model_dir)) <= config.keep_checkpoints
    assert _stats(none_dir)["epochs"][0] == first_epoch[0]
    # The last epoch's record equals NumPy percentiles of the response of the
    # model the loop saved at that epoch's end, on the same fixed batch.
    for key in ("none", "gn"):
        run = outcome.runs.configs[f"{key}_seed{config.seed}"]
        model = keras.models.load_model(os.path.join(run.model_dir, "last.keras"))
        layer = model.get_layer(feature_stats.last_conv_layer(model))
        response = keras.Model(model.input, layer.output)(feature_stats.fixed_batch(run))
        stats = _stats(run.model_dir)
        assert stats["layer"] == layer.name
        np.testing.assert_allclose(
            stats["epochs"][-1]["values"],
            np.percentile(np.asarray(response, np.float64), [1, 20, 80, 99]),
            rtol=1e-5,
            atol=1e-5,
        )


def test_a_run_missing_feature_stats_epochs_is_refused(rng, tmp_path):
    config = _tiny_config(rng, model_dir=str(tmp_path))
    results = {"epochs": [{"epoch": 0}, {"epoch": 1}]}
    (tmp_path / "feature_stats.json").write_text(
        json.dumps(
            {
                "layer": "conv",
                "percentiles": [1, 20, 80, 99],
                "epochs": [{"epoch": 1, "values": [0.0, 0.0, 0.0, 0.0]}],
            }
        )
    )
    with pytest.raises(ValueError, match=r"no feature statistics for epochs \[0\]"):
        feature_stats.check_recorded(config, results)


def test_checkpoint_retention_does_not_make_a_run_different(rng, tmp_path):
    config = _tiny_config(rng, model_dir=str(tmp_path))
    stored = {**config.as_dict(), "keep_checkpoints": config.epochs, "checkpoint_every_steps": 1}
    runner.check_same_settings(config, {"flags": stored})
    with pytest.raises(ValueError, match="seed"):
        runner.check_same_settings(config, {"flags": {**stored, "seed": config.seed + 1}})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--study=norms", "--norm=bn"], "--norm cannot be set with --study=norms"),
        (["--study=groups", "--group_size=4"], "--group_size cannot be set"),
        (["--study=norms", "--model_dir=/tmp/x"], "--model_dir cannot be set"),
        (["--study=norms", "--study_norms=bn,fancy"], "--study_norms: 'fancy'"),
        (["--study=batch_size", "--study_batch_sizes=8,0"], "--study_batch_sizes='8,0'"),
        (["--study=groups", "--study_groups=a"], "--study_groups='a'"),
        (["--study=groups", "--study_group_sizes=4,4"], "--study_group_sizes='4,4'"),
        (["--study=norms", "--study_norms="], "--study_norms=''"),
        (["--study=norms", "--runs_per_config=0"], "--runs_per_config=0"),
        ([], "--study is required"),
    ],
)
def test_bad_study_flags_are_named(argv, message, tmp_path):
    flag_values = _flag_values(argv + [f"--out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=message):
        study_cli.run_from_flags(flag_values)
    assert not os.listdir(tmp_path)


def test_feature_stats_defaults_to_the_papers_vgg16_with_32_groups():
    flag_values = _flag_values(["--study=feature_stats"])
    config = study_cli.base_config_from_flags(specs.get_study("feature_stats"), flag_values)
    assert (config.model, config.groups, config.image_size) == ("vgg16", 32, 32)
    # The default must build: VGG-16's five 2x2 poolings leave 1x1 at 32 px
    # (digits' own default, 16 px, did not).
    model = models.build(
        config.model,
        norm="gn",
        groups=config.groups,
        num_classes=10,
        input_shape=(config.image_size, config.image_size, 1),
    )
    assert model.get_layer("block5_3_conv").output.shape[1:3] == (2, 2)
    flag_values = _flag_values(["--study=feature_stats", "--groups=8", "--image_size=64"])
    config = study_cli.base_config_from_flags(specs.get_study("feature_stats"), flag_values)
    assert (config.groups, config.image_size) == (8, 64)
