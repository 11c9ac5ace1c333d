"""The detection export's check compares detections as sets (issue 24 item 1, issue 23 item 2).

The matcher (``train/detection/match.py``, pure NumPy) is tested on crafted
detections: any order with rounding noise passes; near-ties that rounding
can flip (at the list's cut, at the score threshold, an NMS swap of two tied
overlapping boxes) pass in the tail; anything else fails with one phrase
naming the detection.  Then a small random detector, shaped so that it has
confident detections and a tail: serving graphs broken on purpose
(normalization, class map, box scale) fail, the unbroken one passes, and a
real mixed_bfloat16 SavedModel passes at the precision-aware tolerance (the
gn-detect runs of test_detection_train and test_detection_c4 verify real
float32 exports).  A failed check ends a run in one line, exit 1, with
``saved_model/`` untouched and no staging left.
"""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from detection_helpers import tiny_config
from test_export_staging import _tree

from gn_keras import export as image_export
from gn_keras.models.detection import MaskRCNN
from gn_keras.train import cli, outputs
from gn_keras.train.detection import export, match

TOL = 1e-4
RULES = dict(score=TOL, box_px=0.02, mask=TOL, score_threshold=0.05, nms_iou=0.5)


# ----------------------------------------------------------------------------
# The matcher on crafted detections.


def _boxes(rng, count, size):
    """``count`` boxes no two of which overlap by IoU 0.4 (as if after NMS)."""
    boxes = np.zeros((0, 4))
    while len(boxes) < count:
        corner = rng.uniform(0, size - 60, 2)
        box = np.concatenate([corner, corner + rng.uniform(12, 50, 2)])[None]
        if not len(boxes) or match.box_iou(box, boxes).max() < 0.4:
            boxes = np.concatenate([boxes, box])
    return boxes


def _detections(rng, count, scores=(0.06, 0.95), size=200.0, mask=6):
    """``count`` detections with scores at least 40 tolerances apart, best first."""
    grid = np.linspace(scores[1], scores[0], count)
    jitter = rng.uniform(-0.2, 0.2, count) * (grid[0] - grid[-1]) / max(count - 1, 1)
    return {
        "boxes": _boxes(rng, count, size),
        "classes": rng.integers(1, 4, count),
        "scores": np.sort(grid + jitter)[::-1],
        "masks": rng.uniform(0, 1, (count, mask, mask)),
    }


def _take(detections, rows):
    return {name: value[rows] for name, value in detections.items()}


def _with(detections, row, **values):
    changed = {name: value.copy() for name, value in detections.items()}
    for name, value in values.items():
        changed[name][row] = value
    return changed


def _append(detections, extra):
    return {name: np.concatenate([detections[name], extra[name]]) for name in detections}


def _rules(capacity, **changes):
    return match.MatchRules(capacity=capacity, **{**RULES, **changes})


def _tail_row(detections):
    return int(np.flatnonzero(detections["scores"] < 0.2)[0])


def test_box_iou_is_the_direct_formula(rng):
    first, second = (_detections(rng, n)["boxes"] for n in (5, 7))
    first[0] = second[0]  # one identical pair
    want = np.zeros((5, 7))
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            height = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            width = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = height * width
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            want[i, j] = inter / union
    np.testing.assert_allclose(match.box_iou(first, second), want, rtol=1e-12)
    assert match.box_iou(first[:0], second).shape == (0, 7)


def test_the_same_detections_in_any_order_with_rounding_noise_match(rng):
    want = _detections(rng, 30)
    order = rng.permutation(30)
    got = _take(want, order)
    noise = {
        name: rng.uniform(-0.5, 0.5, got[name].shape) * allowed
        for name, allowed in (("boxes", 0.02), ("scores", TOL), ("masks", TOL))
    }
    got = {**got, **{name: got[name] + noise[name] for name in noise}}
    problem, errors = match.match_image(got, want, _rules(capacity=40))
    assert problem is None
    back = np.argsort(order)  # got[back] lines up with want again
    for name in ("boxes", "scores", "masks"):
        assert errors[name] == pytest.approx(np.max(np.abs(got[name][back] - want[name])))


def _moved(box, fraction):
    """``box`` shifted sideways by ``fraction`` of its width (IoU (1 − f)/(1 + f))."""
    moved = box.copy()
    moved[[1, 3]] += fraction * (box[3] - box[1])
    return moved


def test_boxes_clipped_to_zero_width_still_pair(rng):
    want = _detections(rng, 6)
    want["boxes"][2, 3] = want["boxes"][2, 1]  # clipped at the image's edge: IoU 0 with itself
    got = _take(want, rng.permutation(6))
    assert match.match_image(got, want, _rules(capacity=8))[0] is None
    moved = _with(want, 2, boxes=want["boxes"][2] + [0, 0.5, 0, 0.5])
    assert "Keras detection #2 " in match.match_image(moved, want, _rules(capacity=8))[0]


def _near_cut(rng, want):
    """A full list whose lowest detection is replaced by another of a tied score."""
    other = _with(_detections(rng, 1), 0, scores=want["scores"][-1] + TOL / 2)
    return want, _append(_take(want, slice(0, -1)), other), len(want["scores"])


def _near_threshold(rng, want):
    extra = _with(_detections(rng, 1), 0, scores=RULES["score_threshold"] + TOL / 3)
    return want, _append(want, extra), 40


def _nms_swap(rng, want):
    """NMS kept the other of two tied, overlapping boxes (IoU ≈ 0.8)."""
    row = _tail_row(want)
    moved = _moved(want["boxes"][row], 0.1)
    return want, _with(want, row, boxes=moved, scores=want["scores"][row] - TOL / 2), 40


def _tied_scores_swap(rng, want):
    """Two tail detections whose scores tie within rounding trade places in the ranking."""
    row = _tail_row(want)
    tied = _with(want, row + 1, scores=want["scores"][row] - TOL / 4)
    swapped = _with(tied, row, scores=tied["scores"][row + 1])
    return tied, _with(swapped, row + 1, scores=tied["scores"][row]), 40


@pytest.mark.parametrize("near_tie", [_near_cut, _near_threshold, _nms_swap, _tied_scores_swap])
def test_near_tie_reorderings_of_the_tail_pass(rng, near_tie):
    want, got, capacity = near_tie(rng, _detections(rng, 24))
    got = _take(got, rng.permutation(len(got["scores"])))
    problem, _ = match.match_image(got, want, _rules(capacity))
    assert problem is None


def _broken_cases(rng, want):
    tail = _tail_row(want)
    confident = _with(want, 0, boxes=_moved(want["boxes"][0], 0.1))
    swapped_classes = {**want, "classes": 4 - want["classes"]}
    return {
        "a confident NMS-like swap": (confident, "detection #0 .*: its box differs by"),
        "a tail score off any tie": (
            _with(want, tail, scores=want["scores"][tail] + 20 * TOL),
            f"detection #{tail} .*: its score differs by 0.002",
        ),
        "a tail detection dropped": (
            _take(want, np.arange(len(want["scores"])) != tail),
            f"Keras detection #{tail} .* is missing from the export$",
        ),
        "an extra tail detection": (
            _append(want, _with(_detections(rng, 1), 0, scores=0.15)),
            r"exported detection #\d+ \(class \d, score 0.1500, .* is missing from Keras$",
        ),
        "a tail swap of untied scores": (
            _with(want, tail, boxes=_moved(want["boxes"][tail], 0.1), scores=0.1),
            "its box differs",
        ),
        "a tail box moved further than NMS": (
            _with(want, tail, boxes=_moved(want["boxes"][tail], 0.6)),
            f"Keras detection #{tail} .* is missing from the export; the export has it at box",
        ),
        "a mask": (
            _with(want, tail, masks=want["masks"][tail] + 3 * TOL),
            "its mask differs by 0.0003",
        ),
        "the classes swapped": (swapped_classes, "missing from the export; the export has it as"),
    }


BROKEN_CASES = (
    "a confident NMS-like swap",
    "a tail score off any tie",
    "a tail detection dropped",
    "an extra tail detection",
    "a tail swap of untied scores",
    "a tail box moved further than NMS",
    "a mask",
    "the classes swapped",
)


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_what_rounding_cannot_explain_fails_naming_the_detection(rng, case):
    want = _detections(rng, 24)
    got, pattern = _broken_cases(rng, want)[case]
    got = _take(got, rng.permutation(len(got["scores"])))
    problem, _ = match.match_image(got, want, _rules(capacity=40))
    assert problem is not None and "\n" not in problem
    assert re.search(pattern, problem), problem


def test_a_confident_detection_is_never_excused_at_the_cut(rng):
    want = _detections(rng, 8, scores=(0.4, 0.9))
    _, got, capacity = _near_cut(rng, want)
    problem, _ = match.match_image(got, want, _rules(capacity))
    assert "Keras detection #7" in problem and "is missing from the export" in problem


def test_without_threshold_and_nms_settings_no_such_tie_is_excused(rng):
    want = _detections(rng, 24)
    for near_tie in (_near_threshold, _nms_swap):
        _, got, capacity = near_tie(rng, want)
        rules = _rules(capacity, score_threshold=None, nms_iou=None)
        assert match.match_image(got, want, rules)[0] is not None


@pytest.mark.parametrize(
    "changes, pattern",
    [({"score": -1.0}, "MatchRules.score must be >= 0"), ({"capacity": 0}, "capacity must be")],
)
def test_rules_refuse_bad_values(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        match.MatchRules(**{**RULES, "capacity": 8, **changes})


# ----------------------------------------------------------------------------
# The batched check of the export (padding rows, output names and shapes).


def _batch(images, capacity=10):
    """Per-image detection dicts → the serving outputs, padded with random junk."""
    rng = np.random.default_rng(0)
    padded = {
        "boxes": rng.uniform(0, 99, (len(images), capacity, 4)),
        "classes": rng.integers(1, 4, (len(images), capacity)),
        "scores": rng.uniform(0, 1, (len(images), capacity)),
        "masks": rng.uniform(0, 1, (len(images), capacity, 6, 6)),
        "num_detections": np.array([len(d["scores"]) for d in images]),
    }
    for index, detections in enumerate(images):
        for name in ("boxes", "classes", "scores", "masks"):
            padded[name][index, : len(detections[name])] = detections[name]
    return padded


def test_compare_checks_each_image_and_ignores_padding(rng):
    first, second = _detections(rng, 6), _detections(rng, 9)
    want = _batch([first, second])
    got = _batch([_take(first, rng.permutation(6)), _take(second, rng.permutation(9))])
    report = export.compare("artefact", got, want, TOL, score_threshold=0.05, nms_iou=0.5)
    assert report == {"boxes": 0.0, "scores": 0.0, "masks": 0.0}
    broken = _batch([first, _with(second, 2, scores=second["scores"][2] + 0.01)])
    with pytest.raises(image_export.ExportMismatchError) as caught:
        export.compare("artefact", broken, want, TOL)
    assert str(caught.value).startswith("artefact: image 1: Keras detection #2 (class")
    assert "its score differs by 0.01" in str(caught.value)


def test_compare_names_a_missing_or_misshapen_output(rng):
    want = _batch([_detections(rng, 3)])
    with pytest.raises(image_export.ExportMismatchError, match="output 'masks' is missing"):
        export.compare("a", {k: v for k, v in want.items() if k != "masks"}, want)
    with pytest.raises(image_export.ExportMismatchError, match=r"'scores' has shape \(1, 4\)"):
        export.compare("a", {**want, "scores": np.zeros((1, 4))}, want)


# ----------------------------------------------------------------------------
# A small random detector: a real export passes; broken serving graphs fail.

PREPROCESSING = {
    "image_size": [64, 64],
    "short_side": 64,
    "max_side": 64,
    "mean": [123.7, 116.3, 103.5],
    "std": [58.4, 57.1, 57.4],
    "category_ids": [1, 5, 9],
    "category_names": ["one", "five", "nine"],
}


def _detector(seed):
    """A tiny Mask R-CNN whose classifier is sure of class 1 and unsure of the rest.

    So each image has confident detections and a long tail (40 per image,
    mostly a full list): the regime where near-ties appear.
    """
    rng = np.random.default_rng(seed)
    model = MaskRCNN(tiny_config(backbone_norm="gn", detections_per_image=40))
    head = model.box_head.get_layer("box_classes")
    kernel = rng.normal(0, 0.15, head.kernel.shape).astype("float32")
    head.set_weights([kernel, np.array([0.0, 1.0, 0.0, 0.0], "float32")])
    return model


@pytest.fixture(scope="module")
def detector():
    """(model, images, Keras's detections) with confident ones and a tail in every image."""
    images = export.check_images(PREPROCESSING)  # 59×35: resized by 64/35
    # Some random detectors have no confident detection in an image (seed
    # 1697690420 in CI): the next seeds of the session's are tried, so the
    # checks below always meet both regimes.
    for attempt in range(20):
        model = _detector(int(os.environ["GN_TEST_SEED"]) + attempt)
        want = export.keras_reference(model, PREPROCESSING, images)
        scores = [want["scores"][i, :count] for i, count in enumerate(want["num_detections"])]
        if all((s >= match.CONFIDENT_SCORE).any() and (s < 0.25).sum() >= 3 for s in scores):
            return model, images, want
    raise AssertionError("20 random detectors lacked confident detections or a tail")


class _NoRescale(export._Serving):
    def detect(self, images):
        padded, sizes, _ = tf.map_fn(
            self._prepare, images, fn_output_signature=(tf.float32, tf.int32, tf.float32)
        )
        found = self.model({"images": padded, "image_sizes": sizes}, training=False)
        ones = tf.ones([tf.shape(images)[0]])
        return export.finish(found, ones, tf.shape(images)[1:3], self.category_ids)


BROKEN_SERVING = {
    "normalization": (
        lambda model: export._Serving(
            model, {**PREPROCESSING, "mean": [0.0] * 3, "std": [1.0] * 3}
        ),
        r"its (score|box) differs|is missing from",
    ),
    "class map": (
        lambda model: export._Serving(model, {**PREPROCESSING, "category_ids": [5, 1, 9]}),
        r"Keras detection #\d+ \(class (1|5), .*; the export has it as class (5|1)\.$",
    ),
    "boxes not rescaled": (
        lambda model: _NoRescale(model, PREPROCESSING),
        r"Keras detection #\d+ .*(: its box differs by|; the export has it at box)",
    ),
}


def _serve(serving, images):
    return {k: v.numpy() for k, v in serving.detect(tf.constant(images)).items()}


def _check(got, want, tolerance=TOL):
    config = tiny_config()
    return export.compare(
        "serving",
        got,
        want,
        tolerance,
        score_threshold=config.test_score_threshold,
        nms_iou=config.test_nms_iou,
    )


@pytest.mark.parametrize("fault", list(BROKEN_SERVING))
def test_a_broken_serving_graph_fails_the_check_naming_what_differs(detector, fault):
    model, images, want = detector
    _check(_serve(export._Serving(model, PREPROCESSING), images), want)  # the unbroken one
    build, pattern = BROKEN_SERVING[fault]
    with pytest.raises(image_export.ExportMismatchError) as caught:
        _check(_serve(build(model), images), want)
    line = str(caught.value)
    assert "\n" not in line and re.search(pattern, line), line


def test_near_tie_reorderings_of_a_real_tail_pass_and_other_changes_fail(detector, rng):
    _, _, want = detector
    got = {name: value.copy() for name, value in want.items()}
    for image, count in enumerate(want["num_detections"]):
        order = rng.permutation(count)  # any order
        for name in ("boxes", "classes", "scores", "masks"):
            got[name][image, :count] = want[name][image, order]
        tail = got["scores"][image, :count] < match.CONFIDENT_SCORE
        got["scores"][image, :count] += np.where(tail, rng.uniform(-0.5, 0.5, count) * TOL, 0)
    count = got["num_detections"][0]
    if count == 40:  # a full list: its last place goes to another detection of a tied score
        row = int(np.argmin(got["scores"][0, :count]))
    else:  # room left: a newcomer just above the score threshold
        row, got["num_detections"][0] = count, count + 1
        got["scores"][0, row] = tiny_config().test_score_threshold + TOL / 3
    got["boxes"][0, row] = [0.0, 0.0, 1.0, 1.0]
    _check(got, want)
    tail_row = int(np.argmax(np.where(got["scores"][1] < 0.25, got["scores"][1], 0)))
    got["scores"][1, tail_row] += 20 * TOL
    with pytest.raises(image_export.ExportMismatchError, match="image 1: .* score differs by"):
        _check(got, want)


# ----------------------------------------------------------------------------
# Real exports through a run's outputs: published whole, or refused in one line.


def _run_outputs(model_dir, rng):
    """A run's outputs whose ``saved_model/`` holds an earlier export (random bytes)."""
    old = os.path.join(model_dir, "saved_model")
    os.makedirs(os.path.join(old, "variables"))
    for name in ("saved_model.pb", "variables/variables.index"):
        with open(os.path.join(old, name), "wb") as handle:
            handle.write(rng.bytes(int(rng.integers(100, 1000))))
    strategy = tf.distribute.get_strategy()
    run = outputs.RunOutputs(
        str(model_dir), strategy, {}, PREPROCESSING, {}, metric="bbox_AP", lower_is_better=False
    )
    return run, _tree(old)


def _stagings(model_dir):
    return [name for name in os.listdir(model_dir) if ".tmp-" in name]


def test_a_failed_check_is_one_line_exit_1_and_leaves_the_old_export(detector, tmp_path, rng):
    model, images, want = detector
    run, old = _run_outputs(tmp_path, rng)
    swapped = export._Serving(model, {**PREPROCESSING, "category_ids": [9, 5, 1]})

    def export_fn(model, directory, verify):  # a staged export whose check fails for real
        with open(os.path.join(directory, "saved_model.pb"), "wb") as handle:
            handle.write(rng.bytes(100))
        export.compare(f"{directory} [serving_default]", _serve(swapped, images), want, TOL)

    main = cli.guard_main(lambda argv: run.export(model, export_fn), "gn-detect")
    with pytest.raises(SystemExit) as stopped:
        main([])
    line = stopped.value.code
    assert isinstance(line, str), "a message means exit status 1"
    assert line.startswith("gn-detect: error: ") and "\n" not in line
    assert "saved_model.tmp-" in line and "; the export has it as class" in line
    assert line.endswith(f"{tmp_path}/saved_model is left as it was.")
    assert _tree(tmp_path / "saved_model") == old
    assert _stagings(tmp_path) == []


def test_a_mixed_bfloat16_export_passes_its_check_and_replaces_the_old_one(tmp_path, rng):
    """The one real export of this file (float32 ones: test_detection_train and _c4)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _detector(int(os.environ["GN_TEST_SEED"]) + 1)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    tolerance = image_export.default_tolerance(model)
    assert tolerance == 8 * 2.0**-7  # 8 bfloat16 roundings, not float32's 1e-4
    run, old = _run_outputs(tmp_path, rng)
    reports = []

    def export_fn(model, directory, verify):
        reports.append(export.export_detection_saved_model(model, directory, PREPROCESSING))

    target = run.export(model, export_fn)
    assert reports[0]["scores"] <= tolerance and reports[0]["boxes"] <= tolerance * 64
    assert _stagings(tmp_path) == [] and _tree(target) != old
    assert os.path.isfile(os.path.join(target, "assets.extra", "preprocessing.json"))
