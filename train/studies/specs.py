"""Which trainings each study of the paper's §4.1 needs.

A study is a grid of *settings* (what varies, e.g. the norm or the batch
size), each trained once per seed.  ``Study.runs(options, first_seed)``
lists those trainings as ``RunSpec``s; a run's name (its sub-directory)
encodes the setting and the seed, so re-running a study finds its runs.

* ``norms`` — Table 1 / Figure 4: one run per normalization, same batch.
* ``batch_size`` — Table 2 / Figures 1 and 5: BN and GN at each batch per
  replica; the learning rate follows ``base_lr · global_batch /
  lr_reference_batch``, the paper's linear rule (0.1·N/32 per GPU).
* ``groups`` — Table 3: GN with a fixed number of groups G (top panel) and
  with a fixed number of channels per group (bottom panel).
* ``feature_stats`` — Figure 6: VGG-16 (by default) without a norm, with BN
  and with GN, the last conv's response followed by a percentile callback.
* ``video`` — Table 8 / Figure 7 (§4.3): ``gn-video`` runs of BN and GN with
  short clips (every 2nd frame) at each clips-per-replica count, and with
  clips twice as long (consecutive frames, the same time span) at the
  smallest count.
* ``detection_heads``, ``detection_backbones``, ``detection_scratch`` —
  Tables 4-7 (§4.2): ``gn-detect`` runs, one per row of the paper's table
  (the architecture, C4 or FPN, the norm of each part and the box head);
  the first two fine-tune pre-trained backbones (``train.studies.pretrain``).

Each study names the config fields it sets itself (``controlled``): a flag
for one of those would be silently overridden, so the CLI refuses it.
"""

import dataclasses

from gn_keras import _checks, norms


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """What the study grids span (the defaults are the paper's)."""

    norms: tuple = ("bn", "ln", "in", "gn")
    batch_sizes: tuple = (32, 16, 8, 4, 2)
    groups: tuple = (64, 32, 16, 8, 4, 2, 1)
    group_sizes: tuple = (64, 32, 16, 8, 4, 2, 1)
    # The video study's clip lengths SHORT,LONG (the paper's are 32,64; these
    # fit moving_shapes' 16-frame videos on a CPU) and clips per replica.
    video_frames: tuple = (4, 8)
    video_clips: tuple = (8, 4)
    # Epochs of the detection studies' backbone pre-training on shape crops,
    # and the rows of their tables to run (by key; empty: every row).
    detection_pretrain_epochs: int = 15
    detection_rows: tuple = ()
    runs_per_config: int = 1

    def __post_init__(self):
        known = norms.available()
        for norm in self.norms:
            if norm not in known:
                raise _checks.FlagError(
                    f"--study_norms: {norm!r} is not a normalization; "
                    f"expected some of {', '.join(known)}."
                )
        grids = (
            ("study_norms", self.norms, "normalization names"),
            ("study_batch_sizes", self.batch_sizes, "positive integers"),
            ("study_groups", self.groups, "positive integers"),
            ("study_group_sizes", self.group_sizes, "positive integers"),
            ("study_video_clips", self.video_clips, "positive integers"),
        )
        for flag, values, expected in grids:
            valid = flag == "study_norms" or all(_checks.is_integer(v) and v >= 1 for v in values)
            if not values or not valid or len(set(values)) != len(values):
                raise _checks.invalid(
                    f"--{flag}", ",".join(map(str, values)), f"a list of distinct {expected}"
                )
        _checks.check_int(self.runs_per_config, "--runs_per_config", minimum=1)
        _checks.check_int(
            self.detection_pretrain_epochs, "--study_detection_pretrain_epochs", minimum=1
        )
        self._check_video_frames()

    def _check_video_frames(self):
        frames = self.video_frames
        valid = (
            len(frames) == 2
            and all(_checks.is_integer(v) and v >= 1 for v in frames)
            and frames[0] < frames[1]
            and frames[1] % frames[0] == 0
        )
        if not valid:
            raise _checks.invalid(
                "--study_video_frames",
                ",".join(map(str, frames)),
                "SHORT,LONG frame counts with LONG a multiple of SHORT, e.g. 32,64",
            )


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of a study's grid.

    ``key`` names it in run names, ``label`` in legends, ``column`` in its
    table's header, ``panel`` the table/figure panel it belongs to, and
    ``overrides`` are the config fields it sets.
    """

    key: str
    label: str
    overrides: dict
    panel: str = ""
    column: str = ""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training of a study: a setting at one seed."""

    setting: Setting
    seed: int

    @property
    def name(self):
        return f"{self.setting.key}_seed{self.seed}"

    def overrides(self):
        return {**self.setting.overrides, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class Study:
    """A study: its grid, the fields it sets and its per-study defaults.

    ``records_feature_stats``: its runs train with the percentile callback
    of ``train.studies.feature_stats``, which records every epoch live.
    ``job``: what each run is (``train.studies.jobs``), gn-train by default.
    """

    name: str
    describes: str
    settings: object  # StudyOptions -> list[Setting]
    controlled: frozenset
    defaults: dict = dataclasses.field(default_factory=dict)
    records_feature_stats: bool = False
    job: str = "classify"  # a key of train.studies.jobs.JOBS
    # Detection: its backbones start from pre-trained models (§4.2), which
    # the study trains itself unless --trained_model names them.
    fine_tunes: bool = False

    def runs(self, options, first_seed=0):
        """Every training, setting-major, ``runs_per_config`` seeds each."""
        seeds = range(first_seed, first_seed + options.runs_per_config)
        return [RunSpec(s, seed) for s in self._chosen_settings(options) for seed in seeds]

    def _chosen_settings(self, options):
        settings = self.settings(options)
        if self.job != "detect" or not options.detection_rows:
            return settings
        keys = [s.key for s in settings]
        unknown = [row for row in options.detection_rows if row not in keys]
        if unknown:
            raise _checks.invalid(
                "--study_detection_rows",
                ",".join(options.detection_rows),
                f"some of the rows of --study={self.name}: {', '.join(keys)}",
            )
        return [s for s in settings if s.key in options.detection_rows]


def _norm_settings(options):
    return [
        Setting(norm, norms.label(norm), {"norm": norm}, column=norms.label(norm))
        for norm in options.norms
    ]


def _batch_size_settings(options):
    return [
        Setting(
            f"{norm}_b{size}",
            f"{norms.label(norm)}, {size} ims/replica",
            {"norm": norm, "batch_size_per_replica": size},
            panel=norm,
            column=str(size),
        )
        for norm in ("bn", "gn")
        for size in options.batch_sizes
    ]


def _group_settings(options):
    by_count = [
        Setting(
            f"gn_G{g}",
            f"G={g}",
            {"norm": "gn", "groups": g, "group_size": None},
            panel="groups",
            column=f"{g} (=LN)" if g == 1 else str(g),
        )
        for g in options.groups
    ]
    by_size = [
        Setting(
            f"gn_cpg{c}",
            f"{c} ch/group",
            {"norm": "gn", "group_size": c},
            panel="group_size",
            column=f"{c} (=IN)" if c == 1 else str(c),
        )
        for c in options.group_sizes
    ]
    return by_count + by_size


def _feature_stats_settings(options):
    return [
        Setting(norm, norms.label(norm), {"norm": norm}, column=norms.label(norm))
        for norm in ("none", "bn", "gn")
    ]


def _video_settings(options):
    """Table 8's cells (§4.3): the short clip spans the long one's frames at stride 2."""
    short, long = options.video_frames
    smallest = min(options.video_clips)
    cells = [(short, long // short, clips) for clips in options.video_clips]
    cells.append((long, 1, smallest))
    return [
        Setting(
            f"{norm}_f{frames}_c{clips}",
            f"{norms.label(norm)}, {frames} frames, {clips} clips/replica",
            {
                "norm": norm,
                "frames": frames,
                "frame_stride": stride,
                "batch_size_per_replica": clips,
            },
            panel=norm,
            column=f"{frames} frames, {clips} clips/replica",
        )
        for norm in ("bn", "gn")
        for frames, stride, clips in cells
    ]


# CPU-sized clips for the embedded moving_shapes set (its frames are 32 px):
# each run is about a minute on 2 cores.  --study_video_frames=32,64 and the
# gn-video flags of the paper's recipe give the Kinetics study (docs/video.md).
_VIDEO_DEFAULTS = {
    "crop_size": 24,
    "train_short_side": (24, 30),
    "eval_short_side": 24,
    "epochs": 3,
    "test_batch_size_per_replica": 16,  # 160 clips a step: the 10-clip test in a few steps
}


def _detection_row(key, cells, label, backbone, box_head="4conv1fc", heads="none", **more):
    """One row of Tables 5-7: ``cells`` lead its table row, e.g. ``BN* | 2fc``.

    ``heads``: the norm of the box head's convs and the mask head (``more``
    overrides either, or the FPN's, which is none by default).
    """
    overrides = {
        "backbone_norm": backbone,
        "fpn_norm": "none",
        "box_head": box_head,
        "box_head_norm": heads,
        "mask_head_norm": heads,
        **more,
    }
    return Setting(key, label, overrides, panel="FPN", column=cells)


def _detection_heads_settings(options):
    """Table 5 (R50-FPN) plus its 2fc baseline and BN in the box head (§4.2's text)."""
    return [
        _detection_row("bnstar_2fc", "BN* | 2fc", "BN*, 2fc head", "frozen_bn", "2fc"),
        _detection_row("bnstar_4conv1fc", "BN* | 4conv1fc", "BN*, 4conv1fc head", "frozen_bn"),
        _detection_row(
            "bnstar_gn_head", "BN* | 4conv1fc, GN", "BN*, GN head", "frozen_bn", heads="gn"
        ),
        _detection_row(
            "gn_everywhere", "GN | 4conv1fc, GN", "GN everywhere", "gn", heads="gn", fpn_norm="gn"
        ),
        _detection_row(
            "bnstar_bn_head",
            "BN* | 4conv1fc, BN",
            "BN*, BN box head",
            "frozen_bn",
            heads="gn",
            box_head_norm="bn",
        ),
    ]


def _c4_row(key, cells, label, backbone):
    """A row of Table 4: no FPN, the res5 RoI head takes the backbone's norm.

    The FPN and head fields stay as given, which gn-detect resets for C4.
    """
    overrides = {"architecture": "c4", "backbone_norm": backbone}
    return Setting(key, label, overrides, panel="C4", column=cells)


def _detection_backbones_settings(options):
    """Table 4 (C4: BN*, GN, LN) and Table 6 (FPN: Detectron's BN* baseline vs GN)."""
    return [
        _c4_row("c4_bnstar", "C4 | BN*", "C4, BN*", "frozen_bn"),
        _c4_row("c4_gn", "C4 | GN", "C4, GN", "gn"),
        _c4_row("c4_ln", "C4 | LN", "C4, LN", "ln"),
        _detection_row("fpn_bnstar", "FPN | BN*", "FPN, BN*", "frozen_bn", "2fc"),
        _detection_row("fpn_gn", "FPN | GN", "FPN, GN", "gn", heads="gn", fpn_norm="gn"),
    ]


def _detection_scratch_settings(options):
    """Table 7: from scratch, sync BN (BN over the replica batch on one device) vs GN."""
    return [
        _detection_row(f"scratch_{n}", label, label, n, heads=n, fpn_norm=n)
        for n, label in (("sync_bn", "sync BN"), ("gn", "GN"))
    ]


# CPU-sized runs of gn-detect's main job (resnet18_narrow, 64 px shapes): 3
# epochs of 150 steps of 2 images, the lr ÷10 for the last one; a few minutes
# per run on 2 cores.  docs/studies.md gives the COCO commands.
_DETECTION_DEFAULTS = {"epochs": 3, "lr_boundaries": (2.0,)}
_DETECTION_CONTROLLED = frozenset(
    {"architecture", "backbone_norm", "fpn_norm", "box_head", "box_head_norm", "mask_head_norm"}
)

STUDIES = {
    "norms": Study(
        "norms",
        "Table 1 and Figure 4: normalization methods at one batch size",
        _norm_settings,
        frozenset({"norm"}),
    ),
    "batch_size": Study(
        "batch_size",
        "Table 2 and Figures 1 and 5: BN vs GN over batch sizes",
        _batch_size_settings,
        frozenset({"norm", "batch_size_per_replica"}),
    ),
    "groups": Study(
        "groups",
        "Table 3: number of groups and channels per group",
        _group_settings,
        frozenset({"norm", "groups", "group_size"}),
    ),
    # The paper's VGG-16 by default (another --model may be given); its
    # narrowest layer has 64 channels, so the paper's G=32 applies.  Its five
    # 2x2 poolings need at least 32 px: digits' default 16 px would not build.
    "feature_stats": Study(
        "feature_stats",
        "Figure 6: last conv response without norm, with BN, with GN",
        _feature_stats_settings,
        frozenset({"norm"}),
        {"model": "vgg16", "groups": 32, "image_size": 32},
        records_feature_stats=True,
    ),
    "video": Study(
        "video",
        "Table 8 and Figure 7: BN vs GN on video, clips per replica and clip length",
        _video_settings,
        frozenset({"norm", "frames", "frame_stride", "batch_size_per_replica"}),
        _VIDEO_DEFAULTS,
        job="video",
    ),
    "detection_heads": Study(
        "detection_heads",
        "Table 5: box heads and their norms on a BN* or GN backbone (Mask R-CNN, FPN)",
        _detection_heads_settings,
        _DETECTION_CONTROLLED,
        _DETECTION_DEFAULTS,
        job="detect",
        fine_tunes=True,
    ),
    "detection_backbones": Study(
        "detection_backbones",
        "Tables 4 and 6: BN* vs GN backbones (Mask R-CNN, C4 and FPN)",
        _detection_backbones_settings,
        _DETECTION_CONTROLLED,
        _DETECTION_DEFAULTS,
        job="detect",
        fine_tunes=True,
    ),
    "detection_scratch": Study(
        "detection_scratch",
        "Table 7: Mask R-CNN from scratch, GN vs sync BN",
        _detection_scratch_settings,
        _DETECTION_CONTROLLED | {"trained_model"},
        _DETECTION_DEFAULTS,
        job="detect",
    ),
}


def get_study(name):
    """The study called ``name``; a ``FlagError`` lists the known ones."""
    if name not in STUDIES:
        raise _checks.invalid("--study", name, f"one of {', '.join(sorted(STUDIES))}")
    return STUDIES[name]
