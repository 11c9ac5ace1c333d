"""Run one of the paper's §4.1 studies and write its tables and figures.

Command line (absl flags; also the ``gn-study`` console script)::

    python -m gn_keras.train.study --study=norms            # Table 1, Figure 4
    python -m gn_keras.train.study --study=batch_size       # Table 2, Figures 1 and 5
    python -m gn_keras.train.study --study=groups           # Table 3
    python -m gn_keras.train.study --study=feature_stats    # Figure 6 (VGG-16)

Every training flag of ``train.classify`` (dataset, model, epochs, lr, …)
passes through to each run, except the fields the study itself varies,
which are refused (e.g. ``--norm`` with ``--study=norms``; use
``--study_norms``).  Runs go to ``<out_dir>/<study>/<run>/``; re-running the
same command skips finished runs and resumes a half-finished one.
"""

import sys

from absl import flags

from gn_keras import _checks, norms
from gn_keras._checks import FlagError
from gn_keras.train import cli, studies
from gn_keras.train import flags as flags_lib
from gn_keras.train.studies import specs

_DEFAULT_OPTIONS = specs.StudyOptions()


def define_study_flags(flag_values=flags.FLAGS):
    """The training flags plus the study's own."""
    flags_lib.define_flags(flag_values)
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
    for name, field, help_text in (
        ("study_norms", "norms", f"Norms of --study=norms, of: {', '.join(norms.available())}."),
        ("study_batch_sizes", "batch_sizes", "Batch sizes per replica of --study=batch_size."),
        ("study_groups", "groups", "Group counts G of --study=groups (top panel)."),
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
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise _checks.invalid(
            f"--{name}", ",".join(values), "a list of positive integers"
        ) from None


def options_from_flags(flag_values=flags.FLAGS):
    """The validated ``StudyOptions`` of the parsed flags."""
    return specs.StudyOptions(
        norms=tuple(flag_values["study_norms"].value),
        batch_sizes=_integers(flag_values, "study_batch_sizes"),
        groups=_integers(flag_values, "study_groups"),
        group_sizes=_integers(flag_values, "study_group_sizes"),
        runs_per_config=flag_values["runs_per_config"].value,
    )


def base_config_from_flags(study, flag_values=flags.FLAGS):
    """The config every run starts from: training flags and the study's defaults.

    Precedence (``config.make_config``): ``TrainConfig`` defaults,
    ``--preset``, the study's defaults, then flags given explicitly.
    """
    refused = sorted(name for name in study.controlled | {"model_dir"} if flag_values[name].present)
    if refused:
        raise FlagError(
            f"--{refused[0]} cannot be set with --study={study.name}: the study sets "
            f"{', '.join(sorted(study.controlled))} per run and puts runs under "
            "--out_dir (use --study_norms, --study_batch_sizes, --study_groups or "
            "--study_group_sizes to change a grid)."
        )
    return flags_lib.config_from_flags(flag_values, script_defaults=study.defaults)


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
    try:
        outcome = run_from_flags(flags.FLAGS, command=command)
    except ValueError as error:  # bad flags, a conflicting out_dir (exit 2); a damaged file (1)
        cli.exit_with_error("gn-study", error)
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
