"""Detection data: the COCO reader, the shapes set, the input pipeline, TFRecords.

Every test writes its own small data set. Masks are compared with
pycocotools' own ``COCO.annToMask``; the pipeline with NumPy arithmetic on
the written boxes.
"""

import contextlib
import io
import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from gn_keras.models.detection import MaskRCNNConfig, ops
from gn_keras.train.detection import coco, pipeline, shapes
from gn_keras.train.detection import sources as detection_sources

SIZE = (48, 64)  # height, width


def square_polygon(x, y, side):
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def write_set(directory, rng, extra_annotations=(), extra_images=()):
    """Two PNGs with a polygon, an uncompressed RLE, a compressed RLE and a crowd."""
    (directory / "img").mkdir()
    images = []
    for image_id in (1, 2):
        pixels = rng.integers(0, 256, SIZE + (3,), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / "img" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 48, "width": 64})
    blob = np.zeros(SIZE, np.uint8)
    blob[10:30, 20:45] = 1
    blob[12:18, 40:45] = 0
    compressed = mask_utils.encode(np.asfortranarray(blob))
    compressed["counts"] = compressed["counts"].decode("ascii")
    uncompressed_mask = np.zeros(SIZE, np.uint8)
    uncompressed_mask[5:20, 3:15] = 1
    flat = uncompressed_mask.ravel(order="F").astype(int)  # COCO RLE runs go down columns
    edges = np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]
    counts = ([0] if flat[0] else []) + np.diff(edges).tolist()
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 7,
            "bbox": [10, 5, 20, 20],
            "segmentation": [square_polygon(10, 5, 20)],
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 3,
            "bbox": [3, 5, 12, 15],
            "segmentation": {"size": [48, 64], "counts": counts},
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 2,
            "category_id": 7,
            "bbox": [20, 10, 25, 20],
            "segmentation": compressed,
            "iscrowd": 0,
        },
        {
            "id": 4,
            "image_id": 2,
            "category_id": 3,
            "bbox": [0, 30, 30, 18],
            "segmentation": compressed,
            "iscrowd": 1,
        },
    ]
    data = {
        "images": images + list(extra_images),
        "annotations": annotations + list(extra_annotations),
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    path = directory / "annotations.json"
    path.write_text(json.dumps(data))
    return str(path), str(directory / "img")


def test_reader_decodes_polygons_rle_and_crowd_like_pycocotools(rng, tmp_path):
    path, image_dir = write_set(tmp_path, rng)
    data = coco.read_coco(path, image_dir)
    assert data.category_ids == [3, 7] and data.skipped == {}
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(path)
    for record in data.images:
        masks = coco.instance_masks(record)
        for annotation, mask in zip(record.annotations, masks):
            np.testing.assert_array_equal(
                mask, reference.annToMask(reference.anns[annotation["id"]])
            )
            assert annotation["label"] == [3, 7].index(annotation["category_id"]) + 1
    crowd = [a for r in data.images for a in r.annotations if a["iscrowd"]]
    assert [a["id"] for a in crowd] == [4]
    assert {a["id"] for a in data.ground_truth["annotations"]} == {1, 2, 3, 4}


def broken(annotation_id, image_id, category_id, bbox):
    x, y = bbox[:2]
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "segmentation": [square_polygon(x, y, 4)],
    }


BROKEN = [
    (broken(10, 1, 7, [50, 30, 30, 30]), "box outside image"),
    (broken(11, 1, 7, [5, 5, 0, 4]), "zero area"),
    (broken(12, 1, 99, [5, 5, 4, 4]), "unknown category id 99"),
    (broken(13, 42, 7, [5, 5, 4, 4]), "unknown image id 42"),
]


def test_bad_records_are_skipped_counted_and_named(rng, tmp_path, caplog):
    missing = {"id": 3, "file_name": "gone.png", "height": 48, "width": 64}
    path, image_dir = write_set(tmp_path, rng, [b for b, _ in BROKEN], [missing])
    with caplog.at_level(logging.WARNING):
        data = coco.read_coco(path, image_dir)
    assert sum(data.skipped.values()) == 5
    assert {a["id"] for r in data.images for a in r.annotations} == {1, 2, 3, 4}
    assert [r.image_id for r in data.images] == [1, 2]
    message = caplog.text
    assert "skipped 5 bad record(s)" in message and path in message
    for _, reason in BROKEN:
        assert reason in message


@pytest.mark.parametrize("index", range(len(BROKEN)))
def test_strict_reading_refuses_the_first_bad_record_in_one_line(rng, tmp_path, index):
    annotation, reason = BROKEN[index]
    path, image_dir = write_set(tmp_path, rng, [annotation])
    with pytest.raises(ValueError) as error:
        coco.read_coco(path, image_dir, strict=True)
    text = str(error.value)
    assert "\n" not in text and path in text and f"annotation id {annotation['id']}" in text
    assert reason in text


def test_unreadable_json_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: cannot read COCO annotations"):
        coco.read_coco(str(path), str(tmp_path))


def test_shapes_masks_are_exactly_the_visible_pixels(tmp_path):
    path = shapes.write_shapes(str(tmp_path), 6, image_size=48, seed=3, min_visible_pixels=1)
    data = coco.read_coco(path, str(tmp_path / "images"))
    assert data.num_classes == 3 and data.skipped == {}
    for record in data.images:
        image = np.asarray(Image.open(record.path).convert("RGB")).reshape(-1, 3)
        masks = coco.instance_masks(record).reshape(len(record.annotations), -1).astype(bool)
        assert masks.sum(axis=0).max() <= 1  # visible parts never overlap
        for annotation, mask in zip(record.annotations, masks):
            assert len(np.unique(image[mask], axis=0)) == 1  # one shape, one colour
            ys, xs = np.nonzero(mask.reshape(record.height, record.width))
            np.testing.assert_allclose(
                annotation["bbox"], [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            )
        background = image[~masks.any(axis=0)]
        assert len(np.unique(background, axis=0)) <= 1
    again = shapes.write_shapes(
        str(tmp_path / "again"), 6, image_size=48, seed=3, min_visible_pixels=1
    )
    assert json.load(open(again))["annotations"] == json.load(open(path))["annotations"]


def first_example(data, parse):
    dataset = pipeline.coco_examples(data, [0]).map(parse)
    return next(iter(dataset))


@pytest.mark.parametrize("flip", [False, True])
def test_train_parse_scales_boxes_pads_and_flips(rng, tmp_path, flip):
    path, image_dir = write_set(tmp_path, rng)
    data = coco.read_coco(path, image_dir)
    config = MaskRCNNConfig(num_classes=2, image_size=(128, 128))
    inputs = pipeline.InputConfig(
        short_side=72, max_side=128, max_instances=4, mask_crop_size=32, horizontal_flip=flip
    ).validate(config.image_size)
    anchors = ops.multilevel_anchors(config)
    # The stateless coin for seed (0, s): find a seed that flips iff wanted.
    seed = next(
        [0, s]
        for s in range(50)
        if (tf.random.stateless_uniform([], seed=[0, s]) < 0.5).numpy() == flip
    )
    example = first_example(data, lambda e: pipeline.parse_train(e, inputs, config, anchors, seed))
    scale = 72 / 48  # short side 48 -> 72; long side 64 -> 96 <= 128
    np.testing.assert_allclose(example["scale"], scale)
    np.testing.assert_array_equal(example["image_sizes"], [72, 96])
    record = data.images[0]
    expected = []
    for annotation in record.annotations:
        x, y, w, h = np.array(annotation["bbox"], np.float64) * scale
        expected.append([y, 96 - x - w, y + h, 96 - x] if flip else [y, x, y + h, x + w])
    np.testing.assert_allclose(example["gt_boxes"][:2], expected, atol=1e-3)
    np.testing.assert_array_equal(example["gt_classes"], [2, 1, -1, -1])
    images = example["images"].numpy()
    assert np.all(images[72:] == 0) and np.all(images[:, 96:] == 0)
    pixels = np.asarray(Image.open(record.path).convert("RGB"), np.float32)
    resized = tf.image.resize(pixels, [72, 96]).numpy()
    if flip:
        resized = resized[:, ::-1]
    normalized = (resized - np.array(pipeline.IMAGENET_MEAN)) / np.array(pipeline.IMAGENET_STD)
    np.testing.assert_allclose(images[:72, :96], normalized, atol=1e-4)
    # The first instance is a full square: its box crop is all foreground.
    assert example["gt_masks"][0].numpy().mean() > 0.95
    positives = sum(
        int(tf.reduce_sum(tf.cast(v > 0, tf.int32))) for v in example["rpn_score_targets"].values()
    )
    assert positives >= 2


def test_crowd_regions_are_not_training_targets(rng, tmp_path):
    path, image_dir = write_set(tmp_path, rng)
    data = coco.read_coco(path, image_dir)
    config = MaskRCNNConfig(num_classes=2, image_size=(64, 64))
    inputs = pipeline.InputConfig(
        short_side=48, max_side=64, max_instances=4, mask_crop_size=16, horizontal_flip=False
    )
    anchors = ops.multilevel_anchors(config)
    dataset = pipeline.coco_examples(data, [1]).map(
        lambda e: pipeline.parse_train(e, inputs, config, anchors)
    )
    example = next(iter(dataset))
    np.testing.assert_array_equal(example["gt_classes"], [2, -1, -1, -1])
    evaluation = next(
        iter(
            pipeline.coco_examples(data, [1]).map(
                lambda e: pipeline.parse_eval(e, inputs, config.image_size)
            )
        )
    )
    assert int(evaluation["image_id"]) == 2
    np.testing.assert_array_equal(evaluation["original_size"], [48, 64])


def tf_example(record, data):
    """A TF Model Garden detection tf.Example of one record."""
    masks = coco.instance_masks(record)
    feature = {
        "image/encoded": [open(record.path, "rb").read()],
        "image/source_id": [str(record.image_id).encode()],
        "image/height": [record.height],
        "image/width": [record.width],
        "image/object/bbox/xmin": [a["bbox"][0] / record.width for a in record.annotations],
        "image/object/bbox/xmax": [
            (a["bbox"][0] + a["bbox"][2]) / record.width for a in record.annotations
        ],
        "image/object/bbox/ymin": [a["bbox"][1] / record.height for a in record.annotations],
        "image/object/bbox/ymax": [
            (a["bbox"][1] + a["bbox"][3]) / record.height for a in record.annotations
        ],
        "image/object/class/label": [a["category_id"] for a in record.annotations],
        "image/object/is_crowd": [a["iscrowd"] for a in record.annotations],
        "image/object/area": [float(m.sum()) for m in masks],
        "image/object/mask": [tf.io.encode_png(m[..., None]).numpy() for m in masks],
    }

    def wrap(values):
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    features = tf.train.Features(feature={k: wrap(v) for k, v in feature.items()})
    return tf.train.Example(features=features).SerializeToString()


def shapes_as_tfrecords(directory, seed):
    """Three shapes images as COCO JSON (read back) and as one TFRecord file."""
    path = shapes.write_shapes(str(directory), 3, image_size=32, seed=seed)
    data = coco.read_coco(path, str(directory / "images"))
    records = str(directory / "shapes.tfrecord")
    with tf.io.TFRecordWriter(records) as writer:
        for record in data.images:
            writer.write(tf_example(record, data))
    return data, records


def test_tfrecords_decode_like_the_coco_reader(tmp_path):
    data, records = shapes_as_tfrecords(tmp_path, seed=1)
    from_records = list(pipeline.tfrecord_examples(records, data.category_ids))
    from_json = list(pipeline.coco_examples(data))
    assert len(from_records) == len(from_json) == 3
    for got, want in zip(from_records, from_json):
        assert int(got["source_id"]) == int(want["source_id"])
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_allclose(got["groundtruth_boxes"], want["groundtruth_boxes"], atol=1e-6)
        np.testing.assert_array_equal(got["groundtruth_classes"], want["groundtruth_classes"])
        np.testing.assert_array_equal(
            got["groundtruth_instance_masks"], want["groundtruth_instance_masks"]
        )


def test_tfrecord_ground_truth_matches_the_json_one(tmp_path):
    data, records = shapes_as_tfrecords(tmp_path, seed=2)
    source = detection_sources.tfrecord_source(records, data.category_ids, evaluation=True)
    assert source.num_examples == 3
    got, want = source.ground_truth["annotations"], data.ground_truth["annotations"]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g["image_id"], g["category_id"], g["area"]) == (
            w["image_id"],
            w["category_id"],
            w["area"],
        )
        np.testing.assert_allclose(g["bbox"], w["bbox"], atol=1e-4)
        np.testing.assert_array_equal(
            mask_utils.decode(g["segmentation"]), mask_utils.decode(w["segmentation"])
        )


def test_training_leaves_out_images_without_objects_and_says_how_many(rng, tmp_path, caplog):
    """Like Detectron: one line with the count; validation keeps every image."""
    empty = {"id": 9, "file_name": "9.png", "height": 48, "width": 64}
    path, image_dir = write_set(tmp_path, rng, extra_images=[empty])
    Image.fromarray(rng.integers(0, 256, SIZE + (3,), dtype=np.uint8)).save(tmp_path / "img/9.png")
    with caplog.at_level(logging.WARNING):
        training = detection_sources.coco_source(path, image_dir, training=True)
    assert training.num_examples == 2
    lines = [r.getMessage() for r in caplog.records if "no usable" in r.getMessage()]
    assert lines == [
        f"{path}: 1 of 3 images have no usable (non-crowd) object and are left out of training."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert detection_sources.coco_source(path, image_dir).num_examples == 3
    assert not [r for r in caplog.records if "no usable" in r.getMessage()]


@pytest.mark.parametrize("instances", [0, 3, 9])
def test_mask_targets_crop_a_static_number_of_boxes_and_keep_the_first_ones(rng, instances):
    """The same crops as one CropAndResize over every instance, for the kept ones.

    The crop's box count is static (max_instances): with a data-dependent
    count, grappler's cost model printed a warning each epoch.
    """
    config = pipeline.InputConfig(short_side=64, max_side=64, max_instances=5, mask_crop_size=8)
    masks = (rng.uniform(size=(instances, 20, 24)) < 0.5).astype(np.float32)
    corners = np.sort(rng.uniform(size=(instances, 2, 2)), axis=1)
    boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1).astype(np.float32)
    cropped = pipeline._crop_masks(tf.constant(masks), tf.constant(boxes), config).numpy()
    assert cropped.shape == (5, 8, 8)
    kept = min(instances, 5)
    if instances:
        every = tf.image.crop_and_resize(masks[..., None], boxes, np.arange(instances), (8, 8))
        np.testing.assert_array_equal(cropped[:kept], every.numpy()[:kept, ..., 0])
    assert not cropped[kept:].any()
    graph = (
        tf.function(
            lambda m, b: pipeline._crop_masks(m, b, config),
            input_signature=[tf.TensorSpec([None, None, None]), tf.TensorSpec([None, 4])],
        )
        .get_concrete_function()
        .graph
    )
    crops = [op for op in graph.get_operations() if op.type == "CropAndResize"]
    assert [op.inputs[1].shape.as_list() for op in crops] == [[5, 4]]
