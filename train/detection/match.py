"""Two detectors' outputs on one image compared as sets: the check of a detection export.

Index by index, two runs of the same detector disagree legitimately: float
rounding reorders near-equal scores, and where two overlapping boxes of one
class score within rounding of each other, NMS may keep either.  So
``match_image`` pairs each exported detection with the Keras one of its
class that it overlaps most (one to one, best IoU first, at least
``PAIR_IOU``), and then:

* a confident detection (score ≥ ``CONFIDENT_SCORE`` on either side) must be
  in a tight pair: box, score and mask within the tolerances;
* so must every other detection, unless it sits on a near-tie that rounding
  can flip: its score within the score tolerance of the score threshold, of
  the lowest score of a list cut at ``detections_per_image``, or of its
  partner's score where the two boxes differ but overlap as much as NMS
  suppresses (each side's NMS kept the other of two tied boxes).

A wrong normalization, class map or box scale moves the scores, classes or
boxes of detections that are not near any tie, and fails.  Pure NumPy.
"""

import dataclasses

import numpy as np

CONFIDENT_SCORE = 0.3  # a detection a user would look at; issue 24's bar
PAIR_IOU = 0.5  # the lowest test NMS IoU in use (Detectron's): a looser pair is no swap
SAME_PLACE_IOU = 0.9  # a box this close to a missing one is "the same place"


@dataclasses.dataclass(frozen=True)
class MatchRules:
    """How far one image's exported detections may stray from the reference's.

    Attributes:
      score: allowed |Δscore|, also the width of a near-tie.
      box_px: allowed |Δcoordinate| of a paired box, in pixels.
      mask: allowed |Δprobability| of a paired mask.
      capacity: ``detections_per_image``, where a full list is cut.
      score_threshold: the model's ``test_score_threshold``; None excuses no
        tie at the threshold.
      nms_iou: the model's ``test_nms_iou``; None excuses no NMS swap.
      confident_score: detections at least this sure are never excused.
    """

    score: float
    box_px: float
    mask: float
    capacity: int
    score_threshold: float | None = None
    nms_iou: float | None = None
    confident_score: float = CONFIDENT_SCORE

    def __post_init__(self):
        for name in ("score", "box_px", "mask"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"MatchRules.{name} must be >= 0, got {getattr(self, name)}.")
        if self.capacity < 1:
            raise ValueError(f"MatchRules.capacity must be >= 1, got {self.capacity}.")


def box_iou(first, second):
    """IoU of each box of ``first`` [n, 4] with each of ``second`` [m, 4] → [n, m]."""
    first, second = (np.asarray(b, np.float64).reshape(-1, 4) for b in (first, second))
    low = np.maximum(first[:, None, :2], second[None, :, :2])
    high = np.minimum(first[:, None, 2:], second[None, :, 2:])
    overlap = np.prod(np.clip(high - low, 0.0, None), axis=-1)
    areas = [np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1) for b in (first, second)]
    union = areas[0][:, None] + areas[1][None, :] - overlap
    return np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)


def _overlap(first, second, same_box_px):
    """``box_iou``, but 1 where two boxes agree within ``same_box_px``."""
    first, second = (np.asarray(b, np.float64).reshape(-1, 4) for b in (first, second))
    apart = np.abs(first[:, None, :] - second[None, :, :]).max(axis=-1, initial=0.0)
    return np.where(apart <= same_box_px, 1.0, box_iou(first, second))


def pair_detections(got, want, least_iou=PAIR_IOU, same_box_px=0.0):
    """One-to-one ``(i, j, iou)`` of same-class detections, best IoU first.

    A pair overlaps by ``least_iou`` or more, or its boxes agree within
    ``same_box_px`` (which counts as IoU 1: a box clipped to zero width at
    the image's edge overlaps nothing, itself included).
    """
    iou = _overlap(got["boxes"], want["boxes"], same_box_px)
    iou = np.where(np.equal.outer(got["classes"], want["classes"]), iou, 0.0)
    pairs, used_got, used_want = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = (int(k) for k in np.unravel_index(flat, iou.shape))
        if iou[i, j] < least_iou or iou[i, j] <= 0.0:
            break
        if i not in used_got and j not in used_want:
            used_got.add(i)
            used_want.add(j)
            pairs.append((i, j, float(iou[i, j])))
    return pairs


def _loose_reason(got, want, pair, rules, errors):
    """``(what, why)`` the pair is not tight (its box, score or mask), or None.

    A tight pair's differences raise ``errors``.
    """
    i, j, _ = pair
    box = float(np.max(np.abs(np.subtract(got["boxes"][i], want["boxes"][j]))))
    score = abs(float(got["scores"][i]) - float(want["scores"][j]))
    mask = 0.0
    if "masks" in got and "masks" in want:
        mask = float(np.max(np.abs(np.subtract(got["masks"][i], want["masks"][j])), initial=0))
    for name, value, allowed, unit in (
        ("box", box, rules.box_px, " px"),
        ("score", score, rules.score, ""),
        ("mask", mask, rules.mask, ""),
    ):
        if value > allowed:
            return name, f"its {name} differs by {value:.3g}{unit} (allowed {allowed:.3g}{unit})"
    for name, value in (("boxes", box), ("scores", score), ("masks", mask)):
        errors[name] = max(errors[name], value)
    return None


def _excused(score, partner, rules, cuts):
    """Whether a detection outside a tight pair sits on a near-tie that rounding can flip.

    ``partner``: ``(score, iou, what differs)`` of its loose pair, or None.
    """
    partner_score, iou, differs = partner or (0.0, 0.0, None)
    if max(score, partner_score) >= rules.confident_score:
        return False
    ties = [rules.score_threshold, *cuts]
    if any(tie is not None and abs(score - tie) <= rules.score for tie in ties):
        return True
    nms_swap = differs == "box" and rules.nms_iou is not None and iou >= rules.nms_iou
    return nms_swap and abs(score - partner_score) <= rules.score


def describe(side, detections, index):
    """``"Keras detection #3 (class 7, score 0.9120, box [...])"``."""
    box = ", ".join(f"{v:.1f}" for v in detections["boxes"][index])
    return (
        f"{side} detection #{index} (class {int(detections['classes'][index])}, "
        f"score {float(detections['scores'][index]):.4f}, box [{box}])"
    )


def _explain(side, mine, index, other, rules, why=None):
    """One phrase for a detection that breaks the rules, naming what differs.

    Adds what the other side has instead, where that points at the cause:
    another class in its place with its score (a class map), or its class
    and score at another box (a box scale).
    """
    other_side = "the export" if side == "Keras" else "Keras"
    line = describe(side, mine, index)
    line += f": {why}" if why else f" is missing from {other_side}"
    same_score = np.abs(other["scores"] - mine["scores"][index]) <= rules.score
    same_class = np.equal(other["classes"], mine["classes"][index])
    overlap = _overlap(mine["boxes"][index], other["boxes"], rules.box_px)[0]
    same_place = overlap >= SAME_PLACE_IOU
    if np.any(same_score & same_place & ~same_class):
        found = other["classes"][int(np.argmax(same_score & same_place & ~same_class))]
        return f"{line}; {other_side} has it as class {int(found)}"
    if np.any(same_score & same_class & ~same_place):
        box = other["boxes"][int(np.argmax(same_score & same_class & ~same_place))]
        return f"{line}; {other_side} has it at box [{', '.join(f'{v:.1f}' for v in box)}]"
    return line


def match_image(got, want, rules):
    """Compare one image's exported detections ``got`` with the reference ``want``.

    Each is a dict of ``boxes`` [n, 4], ``classes`` [n], ``scores`` [n] and
    optionally ``masks`` [n, h, w], padding rows removed.  Returns
    ``(problem, errors)``: ``problem`` is None, or one phrase naming the
    first detection (Keras's side first) that breaks the module's rules;
    ``errors``, the largest box, score and mask differences of tight pairs.
    """
    errors = {"boxes": 0.0, "scores": 0.0, "masks": 0.0}
    least_iou = min(PAIR_IOU, rules.nms_iou or PAIR_IOU)
    pairs = pair_detections(got, want, least_iou, rules.box_px)
    cuts = [float(d["scores"].min()) for d in (got, want) if len(d["scores"]) >= rules.capacity]
    sides = (("Keras", want, got), ("exported", got, want))
    partners = {side: {} for side, *_ in sides}
    for i, j, iou in pairs:
        loose = _loose_reason(got, want, (i, j, iou), rules, errors)
        if loose is not None:
            partners["exported"][i] = (j, iou, *loose)
            partners["Keras"][j] = (i, iou, *loose)
    paired = {"exported": {p[0] for p in pairs}, "Keras": {p[1] for p in pairs}}
    for side, mine, other in sides:
        for index, score in enumerate(np.asarray(mine["scores"], np.float64)):
            if index in paired[side] and index not in partners[side]:
                continue  # a tight pair
            partner, iou, differs, why = partners[side].get(index, (None, 0.0, None, None))
            loose = None if partner is None else (float(other["scores"][partner]), iou, differs)
            if _excused(float(score), loose, rules, cuts):
                continue
            return _explain(side, mine, index, other, rules, why), errors
    return None, errors
