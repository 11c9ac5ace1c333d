"""Issue 23's smaller scenarios: reruns compared by data, refused flags, folders and advice.

Each ends in one line naming the file, flag or value, and leaves nothing
behind; as in ``test_bad_input_detection``, the functions the scripts
call are called in-process and ``train.cli.exit_with_error`` gives the
script's line and exit status.
"""

import json
import logging
import os

import keras
import numpy as np
import pytest
from PIL import Image
from test_bad_input_detection import assert_one_line, coco_set, ending, small_config, snapshot

from gn_keras._checks import FlagError
from gn_keras.train import classify as classify_lib
from gn_keras.train import config as train_config
from gn_keras.train import detect as detect_lib
from gn_keras.train import finetune as finetune_lib
from gn_keras.train import settings, workdir
from gn_keras.train.video import config as video_config
from gn_keras.train.video import data as video_data
from gn_keras.train.video import folders
from gn_keras.train.video import main as video_main
from gn_keras.train.video import sources as video_sources


def coco_config(model_dir, root, **changes):
    """A gn-detect config of the COCO set under ``root`` (``train/`` and ``val/``)."""
    paths = {}
    for split in ("train", "val"):
        paths[f"{split}_annotations"] = os.path.join(root, split, "annotations.json")
        paths[f"{split}_images"] = os.path.join(root, split, "images")
    return small_config(model_dir, dataset="coco", **dict(paths, **changes))


def make_coco_tree(root, rng):
    for split in ("train", "val"):
        coco_set(os.path.join(root, split), rng)


def test_reruns_compare_resolved_paths_and_the_annotation_bytes(rng, tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    make_coco_tree(first, rng)
    make_coco_tree(second, rng)
    run = str(tmp_path / "run")
    monkeypatch.chdir(first)
    settings.record(run, settings.shaping_settings(coco_config(run, "."), 1), [])
    # The same files by absolute paths: the same run.
    assert settings.check(run, settings.shaping_settings(coco_config(run, str(first)), 1)) == []
    # The same relative strings from another directory name other data.
    monkeypatch.chdir(second)
    with pytest.raises(FlagError) as refused:
        settings.check(run, settings.shaping_settings(coco_config(run, "."), 1))
    assert_one_line(str(refused.value), f"--train_annotations '{os.path.realpath(first)}/train/")
    # The same path, other bytes.
    monkeypatch.chdir(first)
    with open(first / "val" / "annotations.json", encoding="utf-8") as handle:
        data = json.load(handle)
    data["annotations"] = data["annotations"][1:]
    with open(first / "val" / "annotations.json", "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    with pytest.raises(FlagError) as refused:
        settings.check(run, settings.shaping_settings(coco_config(run, "."), 1))
    status, line = ending(refused.value)
    assert status == 2
    assert_one_line(line, "--val_annotations content 'sha256 ")
    assert "--train_annotations" not in line


def test_num_classes_that_the_data_does_not_have_names_the_flag(rng, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FlagError) as refused:
        small_config(run, num_classes=5)
    status, line = ending(refused.value)
    assert status == 2
    assert_one_line(line, "--num_classes=5 but --dataset=shapes has 3 categories", "=3.")
    make_coco_tree(tmp_path / "data", rng)
    config = coco_config(str(run), str(tmp_path / "data"), num_classes=5)
    with pytest.raises(FlagError) as refused:
        detect_lib.train(config)
    assert_one_line(str(refused.value), "--num_classes=5 but ", "train/annotations.json has 3")
    assert not os.path.exists(run)  # no shapes_data, no run directory


def test_a_validation_set_without_annotations_is_warned_about_once(rng, tmp_path, caplog):
    make_coco_tree(tmp_path / "data", rng)
    val = tmp_path / "data" / "val" / "annotations.json"
    with open(val, encoding="utf-8") as handle:
        data = json.load(handle)
    with open(val, "w", encoding="utf-8") as handle:
        json.dump(dict(data, annotations=[]), handle)
    with caplog.at_level(logging.WARNING):
        detect_lib.make_task(coco_config(str(tmp_path / "run"), str(tmp_path / "data")))
    warned = [r.getMessage() for r in caplog.records if "no annotations" in r.getMessage()]
    assert len(warned) == 1 and str(val) in warned[0] and "-100.0" in warned[0]


def test_a_model_dir_that_is_a_file_is_one_line_and_stays_as_it_was(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a run\n")
    before = snapshot(tmp_path)
    starts = [
        lambda: detect_lib.train(small_config(path)),
        lambda: detect_lib.evaluate(small_config(path)),
        lambda: video_main.train(video_config.make_config(model_dir=str(path))),
        lambda: finetune_lib.finetune(
            train_config.make_config(model_dir=str(path)),
            finetune_lib.FinetuneOptions(str(tmp_path / "anything")),
        ),
        # gn-train and gn-study reach it through the machinery's claim.
        lambda: classify_lib.train(train_config.make_config(model_dir=str(path))),
        lambda: workdir.claim(str(path)).__enter__(),
    ]
    for start in starts:
        with pytest.raises(FlagError) as refused:
            start()
        status, line = ending(refused.value)
        assert status == 2
        assert_one_line(line, f"--model_dir={path} is a file")
    assert snapshot(tmp_path) == before


def test_a_class_folder_without_videos_is_refused_naming_it(rng, tmp_path):
    for name in ("circles", "squares"):
        for video in range(2):
            frames = tmp_path / name / f"v{video}"
            frames.mkdir(parents=True)
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(frames / "0001.png")
    empty = tmp_path / "triangles"
    empty.mkdir()
    (empty / "README.txt").write_text("no videos yet\n")
    with pytest.raises(ValueError) as refused:
        folders.folder_source(str(tmp_path))
    status, line = ending(refused.value, "gn-video")
    assert status == 1
    assert_one_line(line, f"class folder '{empty}' holds no videos")


def test_gn_finetune_on_a_video_run_points_to_gn_video(tmp_path):
    source = video_sources.moving_shapes_source(2, 2)
    spec = video_config.clip_spec(video_config.make_config())
    preprocessing = video_data.VideoPipeline(source, spec, 1).preprocessing()
    run = tmp_path / "video_run"
    run.mkdir()
    with open(run / "preprocessing.json", "w", encoding="utf-8") as handle:
        json.dump(preprocessing, handle)
    frames, height, width = preprocessing["clip_shape"]
    inputs = keras.Input((frames, height, width, 3))
    pooled = keras.layers.GlobalAveragePooling3D()(inputs)
    keras.Model(inputs, keras.layers.Dense(preprocessing["num_classes"])(pooled)).save(
        run / "best.keras"
    )
    config = train_config.make_config(
        None, finetune_lib.FINETUNE_DEFAULTS, model_dir=str(tmp_path / "ft")
    )
    with pytest.raises(FlagError) as refused:
        finetune_lib.finetune(config, finetune_lib.FinetuneOptions(str(run)))
    status, line = ending(refused.value, "gn-finetune")
    assert status == 2
    assert_one_line(line, f"--trained_model={run} is a video model", "gn-video")
    assert "--image_size" not in line
    assert not os.path.exists(tmp_path / "ft")
