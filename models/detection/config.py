"""Mask R-CNN settings: one dataclass, Detectron's defaults, one validation.

``MaskRCNNConfig`` holds every knob of the model and of its training-time
sampling and test-time post-processing.  The defaults are the Detectron
Mask R-CNN FPN baseline the paper fine-tunes (§4.2, "the same
hyper-parameters as in [13]"): anchors of 32–512 pixels, one size per level
P2–P6, aspect ratios 0.5/1/2; 256 RPN anchors per image, half positive; 2000
proposals for training and 1000 for test after NMS 0.7; RoIAlign 7×7 for
boxes and 14×14 for masks; 512 RoIs per image, a quarter positive; box coder
weights (10, 10, 5, 5); 28×28 class-specific mask targets; test NMS 0.5 and
100 detections.

Each part has its own norm string (:func:`gn_keras.norms.available`), so a
row of the paper's Table 5 is one config, e.g. BN* backbone + GN heads::

    MaskRCNNConfig(backbone_norm="frozen_bn", box_head="4conv1fc",
                   box_head_norm="gn", mask_head_norm="gn")

``architecture`` picks the paper's two Mask R-CNN variants (§4.2): ``"fpn"``
(Table 5, 6, 7) or ``"c4"`` (Table 4: ResNet up to conv4 as the backbone,
conv5 as the RoI head on 14×14 RoIAlign features, Detectron's C4 models;
see :mod:`.c4`). A C4 model has no FPN and no separate head norms: its res5
head takes ``backbone_norm``, so the FPN-only fields of
:data:`FPN_ONLY_FIELDS` must keep their defaults, and its masks are
``mask_size = mask_roi_size`` (14) pixels: res5 halves the 14×14 RoI to
``box_roi_size`` (7), the deconv doubles it back.

``validate()`` (called by the model) raises a ``ValueError`` naming the
field and the value.
"""

import dataclasses
import numbers

from gn_keras import _checks, norms

BOX_HEADS = ("2fc", "4conv1fc")
ARCHITECTURES = ("fpn", "c4")
C4_LEVEL = 4  # the C4 model's one feature map: conv4's output, stride 16
# Fields a C4 model has no use for; a non-default value is refused, not ignored.
FPN_ONLY_FIELDS = (
    "fpn_norm",
    "fpn_channels",
    "box_head",
    "box_head_norm",
    "box_head_fc_units",
    "mask_head_norm",
)
BACKBONE_STRIDE = 32  # C5's stride: padded image sides must be multiples of it
MIN_LEVEL, MAX_LEVEL = 2, 6  # P2..P6; RoIs are pooled from P2..P5


@dataclasses.dataclass
class MaskRCNNConfig:
    """Every setting of a Mask R-CNN (one field per future flag)."""

    num_classes: int = 80  # object categories, background excluded
    image_size: tuple = (1344, 1344)  # padded (H, W) of every batch, multiples of 32
    architecture: str = "fpn"  # "fpn" or "c4" (paper Table 4)
    # Backbone, FPN and heads, each with its own normalization.
    backbone: str = "resnet50"
    backbone_norm: str = "frozen_bn"
    fpn_norm: str = "none"
    box_head: str = "2fc"
    box_head_norm: str = "none"
    mask_head_norm: str = "none"
    groups: int = 32
    group_size: int | None = None
    fpn_channels: int = 256
    head_conv_channels: int = 256
    box_head_fc_units: int = 1024
    # Anchors: size = anchor_scale · 2^level, so 8 gives 32 (P2) .. 512 (P6).
    anchor_scale: float = 8.0
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    # RPN training targets.
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_anchors_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    # Proposals: per-level top-k before NMS, total kept after NMS.
    rpn_nms_iou: float = 0.7
    train_pre_nms_top_k: int = 2000
    train_proposals: int = 2000
    test_pre_nms_top_k: int = 1000
    test_proposals: int = 1000
    # RoI heads.
    box_roi_size: int = 7
    mask_roi_size: int = 14
    rois_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_positive_iou: float = 0.5
    roi_negative_iou_high: float = 0.5
    roi_negative_iou_low: float = 0.0
    box_coder_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    mask_size: int = 28
    masks_per_image: int = 128  # foreground RoIs that get a mask loss (512 · 1/4)
    # Test-time post-processing.
    test_nms_iou: float = 0.5
    test_score_threshold: float = 0.05
    detections_per_image: int = 100

    @property
    def anchor_levels(self):
        """The levels whose anchor sizes are used: ``anchor_scale · 2^level``."""
        return tuple(range(MIN_LEVEL, MAX_LEVEL + 1))

    @property
    def num_anchors(self):
        """Anchors per location: C4 puts every size on its one map (Detectron's C4)."""
        sizes = len(self.anchor_levels) if self.architecture == "c4" else 1
        return sizes * len(self.aspect_ratios)

    @property
    def levels(self):
        """Keys of the feature maps the RPN runs on."""
        if self.architecture == "c4":
            return (str(C4_LEVEL),)
        return tuple(str(level) for level in self.anchor_levels)

    @property
    def box_pool_size(self):
        """RoIAlign side for the box head: 7 (FPN) or 14 (C4, before res5)."""
        return self.mask_roi_size if self.architecture == "c4" else self.box_roi_size

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"MaskRCNNConfig: unknown field(s) {unknown}.")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted).validate()

    def validate(self):
        """Check every field; return ``self`` so calls chain."""
        _check_names(self)
        _check_counts(self)
        _check_sizes(self)
        _check_fractions(self)
        _check_image_size(self.image_size)
        if len(self.box_coder_weights) != 4 or not all(
            _is_number(w) and w > 0 for w in self.box_coder_weights
        ):
            _fail("box_coder_weights", self.box_coder_weights, "four positive numbers")
        if not self.aspect_ratios or not all(_is_number(r) and r > 0 for r in self.aspect_ratios):
            _fail("aspect_ratios", self.aspect_ratios, "a non-empty tuple of positive numbers")
        if not (_is_number(self.anchor_scale) and self.anchor_scale > 0):
            _fail("anchor_scale", self.anchor_scale, "a positive number")
        if self.rpn_negative_iou > self.rpn_positive_iou:
            _fail("rpn_negative_iou", self.rpn_negative_iou, "<= rpn_positive_iou")
        if not self.roi_negative_iou_low <= self.roi_negative_iou_high <= self.roi_positive_iou:
            _fail(
                "roi_negative_iou_high",
                self.roi_negative_iou_high,
                "between roi_negative_iou_low and roi_positive_iou",
            )
        _checks.check_groups_arguments(self.groups, self.group_size, "MaskRCNNConfig")
        return self


def _fail(field, value, expected):
    raise ValueError(f"MaskRCNNConfig: field `{field}` must be {expected}, got {field}={value!r}.")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_positive_int(value):
    return _checks.is_integer(value) and value > 0


def _check_names(config):
    for field in ("backbone_norm", "fpn_norm", "box_head_norm", "mask_head_norm"):
        value = getattr(config, field)
        if value not in norms.available():
            _fail(field, value, f"one of {list(norms.available())}")
    if config.box_head not in BOX_HEADS:
        _fail("box_head", config.box_head, f"one of {list(BOX_HEADS)}")
    if not isinstance(config.backbone, str) or not config.backbone:
        _fail("backbone", config.backbone, "a zoo model name")
    if config.architecture not in ARCHITECTURES:
        _fail("architecture", config.architecture, f"one of {list(ARCHITECTURES)}")
    if config.architecture == "c4":
        defaults = MaskRCNNConfig()
        for field in FPN_ONLY_FIELDS:
            if getattr(config, field) != getattr(defaults, field):
                _fail(
                    field,
                    getattr(config, field),
                    f"its default {getattr(defaults, field)!r} with architecture='c4' (no FPN; "
                    "the res5 head takes backbone_norm)",
                )


def _check_counts(config):
    for field in (
        "num_classes",
        "fpn_channels",
        "head_conv_channels",
        "box_head_fc_units",
        "rpn_anchors_per_image",
        "train_pre_nms_top_k",
        "train_proposals",
        "test_pre_nms_top_k",
        "test_proposals",
        "box_roi_size",
        "mask_roi_size",
        "rois_per_image",
        "mask_size",
        "masks_per_image",
        "detections_per_image",
    ):
        value = getattr(config, field)
        if not _is_positive_int(value):
            _fail(field, value, "a positive integer")
    if config.masks_per_image > config.rois_per_image:
        _fail("masks_per_image", config.masks_per_image, "<= rois_per_image")


def _check_sizes(config):
    """Mask sizes: FPN's head doubles its RoI; C4's res5 halves it and the deconv doubles it."""
    if config.architecture != "c4":
        if config.mask_size != 2 * config.mask_roi_size:
            _fail("mask_size", config.mask_size, f"2 × mask_roi_size = {2 * config.mask_roi_size}")
        return
    if config.mask_roi_size % 2:
        _fail("mask_roi_size", config.mask_roi_size, "even with architecture='c4' (res5 halves it)")
    if config.box_roi_size != config.mask_roi_size // 2:
        _fail(
            "box_roi_size",
            config.box_roi_size,
            f"mask_roi_size / 2 = {config.mask_roi_size // 2} with architecture='c4' "
            "(res5's output side)",
        )
    if config.mask_size != config.mask_roi_size:
        _fail(
            "mask_size",
            config.mask_size,
            f"mask_roi_size = {config.mask_roi_size} with architecture='c4'",
        )


def _check_fractions(config):
    for field in (
        "rpn_positive_iou",
        "rpn_negative_iou",
        "rpn_positive_fraction",
        "rpn_nms_iou",
        "roi_positive_fraction",
        "roi_positive_iou",
        "roi_negative_iou_high",
        "roi_negative_iou_low",
        "test_nms_iou",
        "test_score_threshold",
    ):
        value = getattr(config, field)
        if not (_is_number(value) and 0 <= value <= 1):
            _fail(field, value, "a number in [0, 1]")


def _check_image_size(image_size):
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else ()
    if len(size) != 2 or not all(_is_positive_int(s) and s % BACKBONE_STRIDE == 0 for s in size):
        _fail("image_size", image_size, f"(height, width), positive multiples of {BACKBONE_STRIDE}")
