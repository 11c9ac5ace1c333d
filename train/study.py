"""Run one of the paper's §4.1 studies and write its tables and figures.

Command line (absl flags; also the ``gn-study`` console script)::

    python -m gn_keras.train.study --study=norms            # Table 1, Figure 4
    python -m gn_keras.train.study --study=batch_size       # Table 2, Figures 1 and 5
    python -m gn_keras.train.study --study=groups           # Table 3
    python -m gn_keras.train.study --study=feature_stats    # Figure 6 (VGG-16)
    python -m gn_keras.train.study --study=video            # Table 8, Figure 7 (gn-video runs)
    python -m gn_keras.train.study --study=detection_heads      # Table 5 (gn-detect runs)
    python -m gn_keras.train.study --study=detection_backbones  # Tables 4 and 6
    python -m gn_keras.train.study --study=detection_scratch    # Table 7

Every training flag of ``train.classify`` (dataset, model, epochs, lr, …)
passes through to each run, except the fields the study itself varies,
which are refused (e.g. ``--norm`` with ``--study=norms``; use
``--study_norms``).  ``--study=video`` runs ``gn-video`` jobs instead: the
flags of ``train.video`` pass through (``--preset`` also takes its
presets), and flags only ``gn-train`` has are refused, and vice versa;
the detection studies likewise run ``gn-detect`` jobs and take its flags
(``--image_size=N`` is its square padded size N,N).
Runs go to ``<out_dir>/<study>/<run>/``; re-running the same command
skips finished runs and resumes a half-finished one.
"""

import sys

from absl import flags

from gn_keras import _checks, norms
from gn_keras._checks import FlagError
from gn_keras.train import cli, studies
from gn_keras.train import config as config_lib
from gn_keras.train import flags as flags_lib
from gn_keras.train.detection import config as detection_config
from gn_keras.train.detection import flags as detection_flags
from gn_keras.train.studies import specs
from gn_keras.train.video import config as video_config
from gn_keras.train.video import main as video_main

_DEFAULT_OPTIONS = specs.StudyOptions()
_CLASSIFY_SPECS = {**flags_lib.CLASSIFY_FLAG_SPECS, **flags_lib.RUN_FLAG_SPECS}
_VIDEO_SPECS = {**video_main.VIDEO_FLAG_SPECS, **flags_lib.RUN_FLAG_SPECS}
_DETECT_SPECS = detection_flags.flag_specs()
# Each job's flags; a flag of another job only is refused by a study.
_JOB_SPECS = {"classify": _CLASSIFY_SPECS, "video": _VIDEO_SPECS, "detect": _DETECT_SPECS}
_PROGRAMS = {"classify": "gn-train", "video": "gn-video", "detect": "gn-detect"}
_ALL_JOB_FLAGS = set().union(*_JOB_SPECS.values())


def _define_extra(flag_values, specs_of, defaults, names, prefix):
    for name in names:
        kind, help_text = specs_of[name]
        help_text = f"{prefix}: {help_text}"
        flags_lib.define_flag(flag_values, name, kind, getattr(defaults, name), help_text)


def _define_job_flags(flag_values):
    """gn-train's flags, gn-video's and gn-detect's own on top, ``--preset`` taking any's."""
    presets = (*config_lib.PRESETS, *video_config.PRESETS, *detection_config.PRESETS)
    flags_lib.define_config_flags(
        flag_values,
        config_lib.TrainConfig,
        {**_CLASSIFY_SPECS, "preset": (presets, "Named recipe; explicit flags override it.")},
    )
    only_video = sorted(set(_VIDEO_SPECS) - set(_CLASSIFY_SPECS))
    _define_extra(
        flag_values, _VIDEO_SPECS, video_config.VideoConfig(), only_video, "--study=video"
    )
    only_detect = sorted(set(_DETECT_SPECS) - set(_CLASSIFY_SPECS) - set(_VIDEO_SPECS))
    _define_extra(
        flag_values,
        _DETECT_SPECS,
        detection_config.DetectionConfig(),
        only_detect,
        "--study=detection_*",
    )


def define_study_flags(flag_values=flags.FLAGS):
    """The training flags plus the study's own."""
    _define_job_flags(flag_values)
    flags.DEFINE_enum(
        "study", None, sorted(specs.STUDIES), "Which study to run.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "out_dir", "runs/study", "Runs go to <out_dir>/<study>/<run>/.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "runs_per_config",
        1,
        "Seeds per setting (--seed, --seed+1, …); tables report the median over seeds.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "study_detection_pretrain_epochs",
        _DEFAULT_OPTIONS.detection_pretrain_epochs,
        "--study=detection_heads/backbones without --trained_model: epochs of the backbones' "
        "pre-training on shape crops (train.studies.pretrain).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "study_detection_rows",
        [],
        "--study=detection_*: the rows of its table to run, by key (e.g. bnstar_2fc,gn_everywhere;"
        " default: all).",
        flag_values=flag_values,
    )
    for name, field, help_text in (
        ("study_norms", "norms", f"Norms of --study=norms, of: {', '.join(norms.available())}."),
        ("study_batch_sizes", "batch_sizes", "Batch sizes per replica of --study=batch_size."),
        ("study_groups", "groups", "Group counts G of --study=groups (top panel)."),
        (
            "study_video_frames",
            "video_frames",
            "--study=video: clip lengths SHORT,LONG (paper: 32,64); short clips take every "
            "(LONG/SHORT)-th frame, long ones consecutive frames.",
        ),
        ("study_video_clips", "video_clips", "--study=video: clips per replica (paper: 8,4)."),
        (
            "study_group_sizes",
            "group_sizes",
            "Channels per group of --study=groups (bottom panel).",
        ),
    ):
        default = [str(v) for v in getattr(_DEFAULT_OPTIONS, field)]
        flags.DEFINE_list(name, default, help_text, flag_values=flag_values)


def _integers(flag_values, name):
    values = flag_values[name].value
    return _checks.parse_numbers(f"--{name}", values, int, "a list of positive integers")


def options_from_flags(flag_values=flags.FLAGS):
    """The validated ``StudyOptions`` of the parsed flags."""
    return specs.StudyOptions(
        norms=tuple(flag_values["study_norms"].value),
        batch_sizes=_integers(flag_values, "study_batch_sizes"),
        groups=_integers(flag_values, "study_groups"),
        group_sizes=_integers(flag_values, "study_group_sizes"),
        video_frames=_integers(flag_values, "study_video_frames"),
        video_clips=_integers(flag_values, "study_video_clips"),
        detection_pretrain_epochs=flag_values["study_detection_pretrain_epochs"].value,
        detection_rows=tuple(flag_values["study_detection_rows"].value),
        runs_per_config=flag_values["runs_per_config"].value,
    )


def base_config_from_flags(study, flag_values=flags.FLAGS):
    """The config every run starts from: training flags and the study's defaults.

    Precedence (``config.make_config``): ``TrainConfig`` defaults,
    ``--preset``, the study's defaults, then flags given explicitly.
    """
    refused = sorted(
        name
        for name in study.controlled | {"model_dir"}
        if name in flag_values and flag_values[name].present
    )
    if refused:
        raise FlagError(
            f"--{refused[0]} cannot be set with --study={study.name}: the study sets "
            f"{', '.join(sorted(study.controlled))} per run and puts runs under "
            "--out_dir (use --study_norms, --study_batch_sizes, --study_groups or "
            "--study_group_sizes, --study_video_frames or --study_video_clips, or "
            "--study_detection_rows to change a grid)."
        )
    others = sorted(_ALL_JOB_FLAGS - set(_JOB_SPECS[study.job]))
    other_job = [name for name in others if flag_values[name].present]
    if other_job:
        raise FlagError(
            f"--{other_job[0]} is not a flag of the {_PROGRAMS[study.job]} "
            f"runs of --study={study.name}."
        )
    if study.job == "detect":
        return _detection_config(study, flag_values)
    if study.job == "classify":
        return flags_lib.config_from_flags(flag_values, script_defaults=study.defaults)
    # The study's CPU-sized clips stand in for a recipe: a --preset (e.g.
    # paper_kinetics) brings its own, which they must not override.
    preset = flag_values["preset"].value
    explicit = flags_lib.explicit_values(flag_values, _VIDEO_SPECS)
    return video_config.make_config(preset, None if preset else study.defaults, **explicit)


def _detection_config(study, flag_values):
    """The detection studies' ``DetectionConfig``: the CPU-sized schedule unless a --preset."""
    explicit = flags_lib.explicit_values(flag_values, _DETECT_SPECS)
    for name, value in explicit.items():
        if name == "image_size":  # the shared integer flag: a square padded size
            explicit[name] = (value, value)
        elif _DETECT_SPECS[name][0] == "list" and name != "lr_boundaries":
            explicit[name] = detection_flags.parse_list(name, value)
    preset = flag_values["preset"].value
    return detection_config.make_config(preset, None if preset else study.defaults, **explicit)


def run_from_flags(flag_values=flags.FLAGS, command=""):
    """Run the study the flags describe; return its ``StudyOutcome``."""
    if flag_values["study"].value is None:
        raise FlagError(f"--study is required: one of {', '.join(sorted(specs.STUDIES))}.")
    study = specs.get_study(flag_values["study"].value)
    base_config = base_config_from_flags(study, flag_values)
    return studies.run_study(
        study.name,
        base_config,
        flag_values["out_dir"].value,
        options_from_flags(flag_values),
        command=command,
    )


def main(argv):
    del argv  # cli.run_command allows no positional arguments
    command = "python -m gn_keras.train.study " + " ".join(sys.argv[1:])
    outcome = run_from_flags(flags.FLAGS, command=command)  # a ValueError is one line
    runs = outcome.runs
    print(
        f"Trained {len(runs.trained)} run(s), skipped {len(runs.skipped)} finished "
        f"one(s); report: {outcome.report_path}"
    )


def run():
    """Console entry point ``gn-study``."""
    cli.run_command(main, "gn-study", define_study_flags)


if __name__ == "__main__":
    run()
