"""gn-detect and its neighbours under bad input, a held run and the wrong kind of model (issue 23).

Every scenario must end in one line naming the file, flag or value (exit
status 1 for bad data, 2 for a usage error), and a refused command must
leave every file of the run it was refused for as it was: same bytes and
same modification times, ``.lock`` included.

The runs are made without training: a run directory is what gn-detect
leaves (its generated set, ``settings.json``, a saved Mask R-CNN, a
serving SavedModel with the task's ``preprocessing.json``), built by the
same functions.  The functions the scripts call are called in-process; how
a script turns their errors into its one line and exit status is
``train.cli.exit_with_error``, called here on the same errors.
"""

import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from detection_helpers import TINY, tiny_config
from PIL import Image
from test_detection_data import shapes_as_tfrecords

from gn_keras import load
from gn_keras._checks import FlagError
from gn_keras.models.detection import MaskRCNN
from gn_keras.train import cli, settings, workdir
from gn_keras.train import config as train_config
from gn_keras.train import detect as detect_lib
from gn_keras.train import finetune as finetune_lib
from gn_keras.train.detection import coco, shapes
from gn_keras.train.detection import config as config_lib
from gn_keras.train.detection import sources as detection_sources
from gn_keras.train.detection import transfer as detection_transfer
from gn_keras.train.video import config as video_config
from gn_keras.train.video import main as video_main

SMALL = dict(
    {k: v for k, v in TINY.items() if k != "image_size"},
    shapes_train_images=3,
    shapes_val_images=2,
    batch_size_per_replica=1,
    epochs=1,
    steps_per_epoch=1,
    lr_boundaries=(1,),
    warmup_epochs=0.0,
)


def small_config(model_dir, **changes):
    return config_lib.make_config(model_dir=str(model_dir), **dict(SMALL, **changes))


def snapshot(directory):
    """``{path: (sha256, mtime_ns)}`` of every file under ``directory``."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            found[os.path.relpath(path, directory)] = (digest, os.stat(path).st_mtime_ns)
    return found


def ending(error, program="gn-detect"):
    """``(exit status, stderr line)`` with which a script ends on ``error`` (train.cli)."""
    with pytest.raises(SystemExit) as stopped:
        cli.exit_with_error(program, error)
    code = stopped.value.code
    if isinstance(code, str):  # sys.exit(message): the message on stderr, status 1
        return 1, code
    return code, f"{program}: error: {error} {cli.HELP_HINT}"


def assert_one_line(line, *named):
    assert "\n" not in line and "\x1b" not in line, line
    for text in named:
        assert text in line, line


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    """A finished gn-detect run as it lies on disk (see the module docstring)."""
    model_dir = tmp_path_factory.mktemp("detect") / "run"
    config = small_config(model_dir)
    with workdir.claim(str(model_dir)):
        task = detect_lib.make_task(config)
    settings.record(str(model_dir), settings.shaping_settings(config, 1), [])
    model = MaskRCNN(tiny_config())
    model(np.zeros((1, 64, 64, 3), np.float32))
    model.save(model_dir / "best.keras")
    preprocessing = task.preprocessing()
    with open(model_dir / "preprocessing.json", "w", encoding="utf-8") as handle:
        json.dump(preprocessing, handle)
    serving = model_dir / "saved_model"
    module = tf.Module()
    module.scale = tf.Variable(1.0)
    tf.saved_model.save(module, str(serving))
    os.makedirs(serving / load.EXTRA_DIR)
    with open(serving / load.EXTRA_DIR / load.PREPROCESSING_FILE, "w", encoding="utf-8") as f:
        json.dump(preprocessing, f)
    return model_dir


# Item 1: a refused gn-detect leaves the run alone.


@pytest.mark.parametrize(
    "change, named",
    [
        ({"shapes_image_size": 32}, "--shapes_image_size 64 -> 32"),
        ({"shapes_val_images": 3}, "--shapes_val_images 2 -> 3"),
    ],
)
def test_a_rerun_with_other_shapes_flags_is_refused_before_writing(detect_run, change, named):
    before = snapshot(detect_run)
    with pytest.raises(FlagError) as refused:
        detect_lib.train(small_config(detect_run, **change))
    status, line = ending(refused.value)
    assert status == 2
    assert_one_line(line, f"--model_dir={detect_run}", named)
    assert snapshot(detect_run) == before


def test_a_run_held_by_a_live_job_is_refused_before_writing(tmp_path):
    """The held job has just started: its set is there, its settings not yet."""
    model_dir = tmp_path / "run"
    holder = subprocess.Popen(  # the other job, alive (a claim nests within one process)
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom gn_keras.train import workdir\n"
            f"with workdir.claim({str(model_dir)!r}):\n"
            "    print('held', flush=True)\n    time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        detect_lib.make_sources(small_config(model_dir))
        before = snapshot(model_dir)
        with pytest.raises(ValueError) as refused:
            detect_lib.train(small_config(model_dir, shapes_image_size=32))
        assert snapshot(model_dir) == before
    finally:
        holder.kill()
        holder.wait()
    status, line = ending(refused.value)
    assert status == 1 and "in use by a running job" in line
    assert_one_line(line, f"--model_dir={model_dir}")


def test_the_generated_set_is_kept_when_it_fits_and_swapped_whole_when_not(tmp_path):
    directory = str(tmp_path / "set")
    path = shapes.ensure_shapes(directory, 3, image_size=32, seed=4)
    first = snapshot(directory)
    assert shapes.ensure_shapes(directory, 3, image_size=32, seed=4) == path
    assert snapshot(directory) == first  # same parameters: not one byte or mtime changes
    shapes.ensure_shapes(directory, 2, image_size=16, seed=4)
    data = coco.read_coco(path, os.path.join(directory, shapes.IMAGE_DIR))
    assert [(r.height, r.width) for r in data.images] == [(16, 16)] * 2
    assert sorted(os.listdir(tmp_path)) == ["set"]  # no staging left beside it
    with pytest.raises(ValueError, match=f"{directory} holds a shapes set of 2 images at 16 px"):
        shapes.ensure_shapes(directory, 3, image_size=32, seed=4, replace=False)


# Item 4: bad image content and malformed annotation files.


def coco_set(directory, rng):
    """Three generated images, each with its objects, as a COCO set; (json, image folder)."""
    path = shapes.write_shapes(str(directory), 3, image_size=32, seed=int(rng.integers(100)))
    return path, os.path.join(str(directory), shapes.IMAGE_DIR)


def damage(image_dir, rng):
    """Random bytes, zero bytes and another size in place of the three images."""
    names = sorted(os.listdir(image_dir))
    with open(os.path.join(image_dir, names[0]), "wb") as handle:
        handle.write(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    open(os.path.join(image_dir, names[1]), "wb").close()
    pixels = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(image_dir, names[2]))
    return names


def test_bad_image_files_fail_in_one_line_naming_them(rng, tmp_path):
    path, image_dir = coco_set(tmp_path, rng)
    names = damage(image_dir, rng)
    with pytest.raises(ValueError) as refused:
        coco.read_coco(path, image_dir, on_bad_image="fail")
    status, line = ending(refused.value)
    assert status == 1
    assert_one_line(
        line,
        f"{names[0]} (not an image)",
        f"{names[1]} (not an image)",
        f"{names[2]} (24x16 pixels, not the 32x32 of its record)",
        "--on_bad_image=skip",
        path,
    )


def test_bad_image_files_are_skipped_with_their_annotations_naming_them(rng, tmp_path, caplog):
    path, image_dir = coco_set(tmp_path, rng)
    names = damage(image_dir, rng)
    intact = os.path.join(image_dir, "000004.png")
    shapes.write_shapes(str(tmp_path / "more"), 1, image_size=32)
    os.rename(tmp_path / "more" / shapes.IMAGE_DIR / "000001.png", intact)
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    data["images"].append({"id": 4, "file_name": "000004.png", "height": 32, "width": 32})
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    with caplog.at_level(logging.WARNING):
        read = coco.read_coco(path, image_dir)
    assert [r.image_id for r in read.images] == [4]
    assert not read.ground_truth["annotations"] and not read.skipped
    warning = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warning) == 1 and all(name in warning[0] for name in names)


def test_the_detect_flag_reaches_the_reader_for_both_splits(rng, tmp_path):
    path, image_dir = coco_set(tmp_path / "train", rng)
    val_path, val_dir = coco_set(tmp_path / "val", rng)
    open(os.path.join(val_dir, sorted(os.listdir(val_dir))[0]), "wb").close()  # zero bytes
    config = small_config(
        tmp_path / "run",
        dataset="coco",
        train_annotations=path,
        train_images=image_dir,
        val_annotations=val_path,
        val_images=val_dir,
        on_bad_image="fail",
    )
    with pytest.raises(ValueError) as refused:
        detect_lib.train(config)
    assert_one_line(str(refused.value), val_dir, "000001.png (not an image)")
    assert not os.path.exists(tmp_path / "run")  # a run that never started leaves nothing
    with pytest.raises(FlagError, match="--on_bad_image='never' is invalid"):
        small_config(tmp_path / "run", on_bad_image="never")


@pytest.mark.parametrize(
    "content, named",
    [
        ([{"images": []}], "must be a JSON object with 'images', 'annotations' and 'categories'"),
        (
            {"images": [], "annotations": [], "categories": [{"id": 1}, {"name": "dog"}]},
            'categories[1] has no integer \'id\': {"name": "dog"}',
        ),
        (
            {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 1}]},
            "categories[1] repeats an 'id'",
        ),
    ],
)
def test_malformed_annotation_files_are_one_line_naming_the_file(tmp_path, content, named):
    path = str(tmp_path / "annotations.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle)
    with pytest.raises(ValueError) as refused:
        coco.read_coco(path, str(tmp_path))
    status, line = ending(refused.value)
    assert status == 1
    assert_one_line(line, f"{path}: ", named)


def test_a_damaged_tfrecord_is_one_line_naming_the_file(tmp_path):
    data, records = shapes_as_tfrecords(tmp_path, seed=3)
    good = str(tmp_path / "a.tfrecord")
    os.rename(records, good)
    with open(good, "rb") as handle:
        content = handle.read()
    bad = str(tmp_path / "b.tfrecord")
    with open(bad, "wb") as handle:  # the second record's length field garbled
        handle.write(content[: len(content) // 2] + b"\xff" * 12 + content[len(content) // 2 :])
    pattern = str(tmp_path / "*.tfrecord")
    with pytest.raises(ValueError) as refused:
        detection_sources.tfrecord_source(pattern, data.category_ids)
    status, line = ending(refused.value)
    assert status == 1
    assert_one_line(line, f"{bad}: cannot read its detection examples", "DataLossError")
    assert detection_sources.tfrecord_source(good, data.category_ids).num_examples == 3


# Item 5: a gn-detect run given to the tools that take image models.


def test_every_tool_refuses_a_detection_run_saying_which_tool_reads_it(detect_run, tmp_path):
    keras_file = str(detect_run / "best.keras")
    serving = str(detect_run / "saved_model")
    refusals = []
    for source in (str(detect_run), keras_file):
        for read in (load.resolve_model_path, load.load_model, load.load_preprocessing):
            with pytest.raises(load.NotAnImageModelError) as refused:
                read(source)
            refusals.append(refused.value)
    with pytest.raises(load.NotAnImageModelError) as refused:  # gn-export's start
        load.load_model(serving)
    assert_one_line(str(refused.value), serving, "serving SavedModel of a gn-detect run")
    options = finetune_lib.FinetuneOptions(str(detect_run))
    config = train_config.make_config(
        None, finetune_lib.FINETUNE_DEFAULTS, model_dir=str(tmp_path / "ft")
    )
    with pytest.raises(load.NotAnImageModelError) as refused:  # gn-finetune, before any data
        finetune_lib.finetune(config, options)
    refusals.append(refused.value)
    config = video_config.make_config(trained_model=str(detect_run), model_dir=str(tmp_path / "v"))
    with pytest.raises(load.NotAnImageModelError) as refused:  # gn-video, before any data
        video_main.train(config)
    refusals.append(refused.value)
    with pytest.raises(load.NotAnImageModelError) as refused:  # gn-detect's backbone
        detection_transfer.backbone_start(small_config(tmp_path / "d", trained_model=keras_file))
    refusals.append(refused.value)
    for error in refusals:
        status, line = ending(error, "gn-export")
        assert status == 2
        assert_one_line(
            line,
            f"{keras_file}: a Mask R-CNN written by gn-detect",
            f"gn-detect --model_dir={detect_run} --eval_only",
            f"{serving} already",
        )
    assert sorted(os.listdir(tmp_path)) == []  # none of them started a run
