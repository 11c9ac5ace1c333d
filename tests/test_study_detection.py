"""The detection studies (Tables 4-7) on tiny gn-detect runs, and their flags.

One real study runs end to end: ``detection_heads`` restricted to its
"BN* backbone, GN head" row, whose BN* backbone comes from the study's own
pre-training on shape crops (cut to a few steps here).  The test parses the
Markdown table the study wrote and compares every cell with the run's own
``results.json``, read back here; it checks the run fine-tuned the BN model
the study pre-trained, that the figure and summary were written, and that a
rerun trains nothing.  The other tests build every row's config of the three
studies without training, and check the flags a study refuses.
"""

import dataclasses
import json
import os

import matplotlib.image
import pytest
from absl import flags

from gn_keras.train import study as study_cli
from gn_keras.train.studies import jobs, pretrain, runner, specs

TINY_DETECTION = {
    "epochs": 2,
    "steps_per_epoch": 2,
    "lr_boundaries": 1,
    "warmup_epochs": 0,
    "shapes_train_images": 6,
    "shapes_val_images": 3,
    "image_size": 64,
    "train_pre_nms_top_k": 50,
    "train_proposals": 16,
    "test_pre_nms_top_k": 50,
    "test_proposals": 16,
    "rois_per_image": 16,
    "masks_per_image": 4,
    "detections_per_image": 8,
    "log_every_steps": 1,
}
COLUMNS = {
    "AP^bbox": "bbox_AP",
    "AP^bbox_50": "bbox_AP50",
    "AP^bbox_75": "bbox_AP75",
    "AP^mask": "segm_AP",
    "AP^mask_50": "segm_AP50",
    "AP^mask_75": "segm_AP75",
}


def _flag_values(argv):
    flag_values = flags.FlagValues()
    study_cli.define_study_flags(flag_values)
    flag_values(["gn-study"] + argv)
    return flag_values


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _tables(markdown):
    """Every Markdown table of the report as a list of rows of cells (header first)."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append([current[0]] + current[2:])
            current = []
    return tables


def test_heads_study_reports_its_runs_numbers_and_skips_on_rerun(rng, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "PRETRAIN_SCENES", 40)
    monkeypatch.setitem(pretrain.PRETRAIN_RUN, "steps_per_epoch", 2)
    seed = int(rng.integers(0, 1000))
    argv = [
        "--study=detection_heads",
        "--study_detection_rows=bnstar_gn_head",
        "--study_detection_pretrain_epochs=1",
        f"--out_dir={tmp_path}",
        f"--seed={seed}",
    ] + [f"--{name}={value}" for name, value in TINY_DETECTION.items()]
    outcome = study_cli.run_from_flags(_flag_values(argv))
    name = f"bnstar_gn_head_seed{seed}"
    assert outcome.runs.trained == [name]
    study_dir = tmp_path / "detection_heads"
    results = _read_json(study_dir / name / "results.json")
    used = results["flags"]
    assert (used["backbone_norm"], used["box_head"]) == ("frozen_bn", "4conv1fc")
    assert (used["box_head_norm"], used["mask_head_norm"], used["fpn_norm"]) == ("gn", "gn", "none")
    pretrained = tmp_path / pretrain.PRETRAIN_DIR / f"bn_seed{seed}"
    assert used["trained_model"] == str(pretrained)
    assert _read_json(pretrained / "results.json")["flags"]["norm"] == "bn"

    with open(outcome.report_path, encoding="utf-8") as handle:
        ours, paper = _tables(handle.read())
    header, row = ours[0], ours[1]
    assert header[:2] == ["backbone", "box head"] and row[:2] == ["BN*", "4conv1fc, GN"]
    for column, cell in zip(header[2:], row[2:]):
        final = results["epochs"][-1]["val"][COLUMNS[column]]
        assert float(cell) == pytest.approx(100 * final, abs=0.051)
    assert paper[1][2] == "39.5"  # the paper's Table 5, same row
    image = matplotlib.image.imread(study_dir / "detection_heads_ap.png")
    assert image.shape[1] > image.shape[0]
    curve = _read_json(study_dir / "summary.json")["settings"]["bnstar_gn_head"]
    assert curve["steps"] == [2, 4]
    assert curve["box_ap_curve"] == pytest.approx(
        [100 * epoch["val"]["bbox_AP"] for epoch in results["epochs"]]
    )

    again = study_cli.run_from_flags(_flag_values(argv))
    assert (again.runs.trained, again.runs.skipped) == ([], [name])


def _row_configs(study_name, tmp_path, argv=()):
    study = specs.get_study(study_name)
    base = study_cli.base_config_from_flags(study, _flag_values([f"--study={study_name}", *argv]))
    if study.fine_tunes:
        base = dataclasses.replace(base, trained_model=str(tmp_path / "pre" / "{norm}"))
    return {
        spec.setting.key: runner.run_config(base, spec, str(tmp_path), jobs.DETECT)
        for spec in study.runs(specs.StudyOptions())
    }


def test_every_row_builds_its_config_with_the_norms_of_the_paper(tmp_path):
    heads = _row_configs("detection_heads", tmp_path)
    parts = ("backbone_norm", "fpn_norm", "box_head", "box_head_norm", "mask_head_norm")
    assert {key: tuple(getattr(c, p) for p in parts) for key, c in heads.items()} == {
        "bnstar_2fc": ("frozen_bn", "none", "2fc", "none", "none"),
        "bnstar_4conv1fc": ("frozen_bn", "none", "4conv1fc", "none", "none"),
        "bnstar_gn_head": ("frozen_bn", "none", "4conv1fc", "gn", "gn"),
        "gn_everywhere": ("gn", "gn", "4conv1fc", "gn", "gn"),
        "bnstar_bn_head": ("frozen_bn", "none", "4conv1fc", "bn", "gn"),
    }
    # BN* fine-tunes the BN model, GN the GN one (§4.2).
    assert heads["bnstar_2fc"].trained_model == str(tmp_path / "pre" / "bn")
    assert heads["gn_everywhere"].trained_model == str(tmp_path / "pre" / "gn")
    scratch = _row_configs("detection_scratch", tmp_path)
    assert {c.trained_model for c in scratch.values()} == {None}
    assert scratch["scratch_sync_bn"].backbone_norm == "sync_bn"
    assert scratch["scratch_gn"].box_head_norm == "gn"
    backbones = _row_configs("detection_backbones", tmp_path)
    assert {key: (c.architecture, c.backbone_norm) for key, c in backbones.items()} == {
        "c4_bnstar": ("c4", "frozen_bn"),
        "c4_gn": ("c4", "gn"),
        "c4_ln": ("c4", "ln"),
        "fpn_bnstar": ("fpn", "frozen_bn"),
        "fpn_gn": ("fpn", "gn"),
    }
    assert backbones["c4_ln"].trained_model == str(tmp_path / "pre" / "ln")
    assert heads["bnstar_2fc"].architecture == "fpn"
    assert all(c.epochs == 3 for c in backbones.values())


def test_the_coco_preset_keeps_its_schedule(tmp_path):
    coco = [f"--{name}=/coco/x" for name in ("train_annotations", "train_images")]
    coco += [f"--{name}=/coco/y" for name in ("val_annotations", "val_images")]
    configs = _row_configs("detection_scratch", tmp_path, ["--preset=paper_coco", *coco])
    config = configs["scratch_gn"]
    assert (config.backbone, config.epochs, config.image_size) == ("resnet50", 24, (1344, 1344))
    configs = _row_configs("detection_scratch", tmp_path, ["--image_size=128"])
    assert configs["scratch_gn"].image_size == (128, 128)


def test_given_trained_models_replace_the_pre_training(tmp_path):
    base = study_cli.base_config_from_flags(
        specs.get_study("detection_heads"),
        _flag_values(["--study=detection_heads", "--trained_model=/models/r50_{norm}"]),
    )
    assert pretrain.with_pretrained(base, ["bn", "gn"], str(tmp_path), 1) is base
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--study=detection_heads", "--box_head_norm=gn"],
            "--box_head_norm cannot be set with --study=detection_heads",
        ),
        (
            ["--study=detection_scratch", "--trained_model=/m"],
            "--trained_model cannot be set with --study=detection_scratch",
        ),
        (["--study=detection_backbones", "--norm=gn"], "--norm is not a flag of the gn-detect"),
        (
            ["--study=detection_backbones", "--architecture=c4"],
            "--architecture cannot be set with --study=detection_backbones",
        ),
        (["--study=norms", "--fpn_channels=8"], "--fpn_channels is not a flag of the gn-train"),
        (
            ["--study=detection_heads", "--study_detection_rows=c4_gn"],
            "--study_detection_rows='c4_gn'",
        ),
    ],
)
def test_bad_detection_study_flags_are_named_in_one_line(argv, message, tmp_path):
    flag_values = _flag_values(argv + [f"--out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=message) as error:
        study_cli.run_from_flags(flag_values)
    assert "\n" not in str(error.value)
    assert not os.listdir(tmp_path)
