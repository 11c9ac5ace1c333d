"""The video study (Table 8, Figure 7) end to end on tiny gn-video runs.

The study trains every cell for real (resnet20_i3d on moving_shapes, 2- and
4-frame 16×16 clips at one clips-per-replica value, 2 epochs of 2 steps),
then this test parses the Markdown table it wrote and compares each cell
with the run's own ``results.json`` final-test entry, read back here
independently; it also checks each run trained the setting its column
names, that the figure was written, and that a rerun skips every finished
run.  The grid of two clips values (a short-clip column per value, the long
clip at the smallest) is checked on the study's planned runs, untrained.
"""

import json
import os

import matplotlib.image
import pytest
from absl import flags

from gn_keras.train import study as study_cli
from gn_keras.train.records import EpochRecord
from gn_keras.train.studies import jobs, runner, specs

TINY_VIDEO = {
    "epochs": 2,
    "steps_per_epoch": 2,
    "eval_steps": 1,
    "crop_size": 16,
    "train_short_side": "16,20",
    "eval_short_side": 16,
    "test_clips": 2,
    "test_batch_size_per_replica": 32,
    "warmup_epochs": 0,
    "log_every_steps": 1,
}
SHORT, LONG = 2, 4
# The table prints one decimal, so a cell is within half of its last digit of
# the run's value; the 1e-9 is float slack (31.25 prints as 31.2, and
# 31.25 - 31.2 is 0.05000000000000071 in floats).
HALF_LAST_DIGIT = 0.05 + 1e-9
# One clips value trains both rows' frames pair (4 runs); the grid of two
# values is checked without training.
CLIPS = (2,)


def _flag_values(argv):
    flag_values = flags.FlagValues()
    study_cli.define_study_flags(flag_values)
    flag_values(["gn-study"] + argv)
    return flag_values


def _read_results(run_dir):
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _table(markdown):
    """``{row label: {column: cell}}`` of the report's one table."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]
    header = rows[0]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in rows[2:]}


def _expected_cells(seed, clips_values=CLIPS):
    """``{(norm, column): (run name, frames, stride, clips)}`` of Table 8's layout."""
    cells = [(SHORT, LONG // SHORT, c) for c in clips_values] + [(LONG, 1, min(clips_values))]
    return {
        (norm, f"{frames} frames, {clips} clips/replica"): (
            f"{norm}_f{frames}_c{clips}_seed{seed}",
            frames,
            stride,
            clips,
        )
        for norm in ("bn", "gn")
        for frames, stride, clips in cells
    }


def test_video_study_writes_table_8_and_figure_7_and_skips_on_rerun(rng, tmp_path):
    seed = int(rng.integers(0, 1000))
    argv = [
        "--study=video",
        f"--study_video_frames={SHORT},{LONG}",
        f"--study_video_clips={','.join(map(str, CLIPS))}",
        f"--out_dir={tmp_path}",
        f"--seed={seed}",
    ] + [f"--{name}={value}" for name, value in TINY_VIDEO.items()]
    outcome = study_cli.run_from_flags(_flag_values(argv))
    cells = _expected_cells(seed)
    assert sorted(outcome.runs.trained) == sorted(name for name, *_ in cells.values())
    study_dir = tmp_path / "video"
    with open(outcome.report_path, encoding="utf-8") as handle:
        table = _table(handle.read())
    assert set(table) == {"BN", "GN"}
    for (norm, column), (name, frames, stride, clips) in cells.items():
        results = _read_results(study_dir / name)
        used = results["flags"]
        assert (used["norm"], used["frames"], used["frame_stride"]) == (norm, frames, stride)
        assert used["batch_size_per_replica"] == clips
        test = results["test"]
        assert test["views_per_video"] == TINY_VIDEO["test_clips"]
        top1, top5 = (float(v) for v in table[norm.upper()][column].split("/"))
        assert top1 == pytest.approx(100 * test["top1_accuracy"], abs=HALF_LAST_DIGIT)
        assert top5 == pytest.approx(100 * test["top5_accuracy"], abs=HALF_LAST_DIGIT)
    image = matplotlib.image.imread(study_dir / "video_curves.png")
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side
    with open(study_dir / "summary.json", encoding="utf-8") as handle:
        summary = json.load(handle)
    for name, *_ in cells.values():
        key = name.rsplit("_seed", 1)[0]
        results = _read_results(study_dir / name)
        # Figure 7's curve: the 1-clip val error after each epoch.
        curve = [100 * epoch["val"]["top1_error"] for epoch in results["epochs"]]
        assert len(curve) == TINY_VIDEO["epochs"]
        assert summary["settings"][key]["val_curve"] == pytest.approx(curve)
        assert summary["settings"][key]["test_top1_top5"] == pytest.approx(
            [100 * results["test"]["top1_accuracy"], 100 * results["test"]["top5_accuracy"]]
        )

    again = study_cli.run_from_flags(_flag_values(argv))
    assert again.runs.trained == []
    assert sorted(again.runs.skipped) == sorted(outcome.runs.trained)


def test_each_clips_value_has_a_short_clip_column_and_the_smallest_a_long_one(rng):
    seed = int(rng.integers(0, 1000))
    clips_values = (4, 2)
    options = specs.StudyOptions(video_frames=(SHORT, LONG), video_clips=clips_values)
    planned = {
        (spec.setting.overrides["norm"], spec.setting.column): (
            spec.name,
            spec.setting.overrides["frames"],
            spec.setting.overrides["frame_stride"],
            spec.setting.overrides["batch_size_per_replica"],
        )
        for spec in specs.get_study("video").runs(options, first_seed=seed)
    }
    assert planned == _expected_cells(seed, clips_values)


def test_a_video_run_without_its_final_test_is_not_finished(tmp_path):
    config_dir = tmp_path / "run"
    (config_dir / "saved_model").mkdir(parents=True)
    (config_dir / "saved_model" / "saved_model.pb").write_bytes(b"")

    class _Config:
        model_dir = str(config_dir)
        epochs = 1

    record = EpochRecord(0, {}, {}, learning_rate=0.1, images_per_sec=1.0, seconds=1.0)
    results = {"epochs": [record.as_json()]}
    assert runner.is_finished(_Config, results, jobs.CLASSIFY)
    assert not runner.is_finished(_Config, results, jobs.VIDEO)
    assert runner.is_finished(_Config, {**results, "test": {}}, jobs.VIDEO)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--study=video", "--frames=8"], "--frames cannot be set with --study=video"),
        (["--study=video", "--image_size=8"], "--image_size is not a flag of the gn-video"),
        (["--study=norms", "--crop_size=8"], "--crop_size is not a flag of the gn-train"),
        (["--study=video", "--study_video_frames=4,6"], "--study_video_frames='4,6'"),
        (["--study=video", "--study_video_clips=4,0"], "--study_video_clips='4,0'"),
    ],
)
def test_bad_video_study_flags_are_named(argv, message, tmp_path):
    flag_values = _flag_values(argv + [f"--out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=message):
        study_cli.run_from_flags(flag_values)
    assert not os.listdir(tmp_path)


def test_the_kinetics_preset_keeps_its_clips_and_the_default_is_cpu_sized():
    study = specs.get_study("video")
    config = study_cli.base_config_from_flags(study, _flag_values(["--study=video"]))
    assert (config.dataset, config.crop_size) == ("moving_shapes", study.defaults["crop_size"])
    flag_values = _flag_values(
        ["--study=video", "--preset=paper_kinetics", "--data_dir=/data/kinetics"]
    )
    config = study_cli.base_config_from_flags(study, flag_values)
    assert (config.model, config.crop_size, config.train_short_side) == (
        "resnet50_i3d",
        224,
        (256, 320),
    )


def test_each_run_starts_from_the_2d_model_of_its_own_norm(tmp_path):
    study = specs.get_study("video")
    flag_values = _flag_values(["--study=video", "--trained_model=/models/r20_{norm}.keras"])
    base = study_cli.base_config_from_flags(study, flag_values)
    for spec in study.runs(specs.StudyOptions()):
        config = runner.run_config(base, spec, str(tmp_path), jobs.VIDEO)
        assert config.trained_model == f"/models/r20_{spec.setting.overrides['norm']}.keras"
        assert config.model_dir == str(tmp_path / spec.name)
