"""Flags → config: the paper preset, explicit overrides, and every bad-flag error."""

import dataclasses
import os
import shutil
import subprocess
import sys

import forked_cli
import pytest
from absl import flags

from gn_keras import _checks, load
from gn_keras.train import cli
from gn_keras.train import config as config_lib
from gn_keras.train import flags as flags_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    flag_values = flags.FlagValues()
    flags_lib.define_flags(flag_values)
    flag_values(["prog", *argv])
    return flags_lib.config_from_flags(flag_values)


def test_every_config_field_is_a_flag_with_the_same_default():
    flag_values = flags.FlagValues()
    flags_lib.define_flags(flag_values)
    defaults = config_lib.TrainConfig()
    for field in dataclasses.fields(config_lib.TrainConfig):
        value = flag_values[field.name].value
        expected = getattr(defaults, field.name)
        if field.name == "lr_boundaries":
            value = tuple(float(v) for v in value)
        assert value == expected, field.name


def test_no_flags_gives_the_digits_defaults():
    config = parse([])
    assert config == config_lib.TrainConfig()
    assert config.dataset == "digits" and config.norm == "gn"
    assert 16 % config.groups == 0  # the narrowest CIFAR ResNet stage splits


def test_paper_preset_sets_section_4_1_recipe():
    config = parse(["--preset=paper_imagenet", "--data_dir=/data/imagenet"])
    assert (config.model, config.norm, config.groups) == ("resnet50", "gn", 32)
    assert config.image_size == 224 and config.augment == "inception"
    assert config.batch_size_per_replica == 32 and config.epochs == 100
    assert config.lr_schedule == "step" and config.lr_boundaries == (30, 60, 90)
    assert config.lr_decay_factor == 0.1 and config.warmup_epochs == 0
    assert config.momentum == 0.9 and config.weight_decay == 1e-4
    assert config.decay_norm_params is True and config.zero_init_residual is True
    # 0.1 for 8 GPUs x 32 images: 0.1 per 256 images in total.
    assert config.base_lr * 256 / config.lr_reference_batch == pytest.approx(0.1)
    assert config.preset == "paper_imagenet"


def test_explicit_flags_override_the_preset_and_others_keep_it():
    config = parse(
        [
            "--preset=paper_imagenet",
            "--data_dir=/d",
            "--norm=bn",
            "--epochs=3",
            "--lr_boundaries=1,2",
            "--batch_size_per_replica=8",
        ]
    )
    assert (config.norm, config.epochs, config.lr_boundaries) == ("bn", 3, (1.0, 2.0))
    assert config.batch_size_per_replica == 8
    assert config.groups == 32 and config.image_size == 224 and config.weight_decay == 1e-4


def test_make_config_matches_flags():
    from_python = config_lib.make_config("paper_imagenet", data_dir="/d", epochs=3)
    assert from_python == parse(["--preset=paper_imagenet", "--data_dir=/d", "--epochs=3"])


@pytest.mark.parametrize(
    "argv, flag, value",
    [
        (["--batch_size_per_replica=0"], "batch_size_per_replica", "0"),
        (["--epochs=-2"], "epochs", "-2"),
        (["--groups=0"], "groups", "0"),
        (["--group_size=0"], "group_size", "0"),
        (["--base_lr=0"], "base_lr", "0"),
        (["--base_lr=nan"], "base_lr", "nan"),
        (["--momentum=1.5"], "momentum", "1.5"),
        (["--weight_decay=-1e-4"], "weight_decay", "-0.0001"),
        (["--label_smoothing=2"], "label_smoothing", "2"),
        (["--lr_boundaries=60,30"], "lr_boundaries", "60"),
        (["--lr_boundaries=a,b"], "lr_boundaries", "a,b"),
        (["--lr_schedule=step", "--lr_boundaries="], "lr_boundaries", "[]"),
        (["--lr_decay_factor=0"], "lr_decay_factor", "0"),
        (["--warmup_epochs=9.5", "--epochs=9"], "warmup_epochs", "9.5"),
        (["--image_size=4"], "image_size", "4"),
        (["--steps_per_epoch=0"], "steps_per_epoch", "0"),
        (["--eval_steps=0"], "eval_steps", "0"),
        (["--num_classes=1"], "num_classes", "1"),
        (["--dataset=mnist"], "dataset", "mnist"),
        (["--dataset=tfds:"], "dataset", "tfds:"),
        (["--dataset=folder"], "dataset=folder", "data_dir"),
        (["--dataset=imagenet_tfrecord"], "dataset=imagenet_tfrecord", "data_dir"),
        (["--model_dir="], "model_dir", "''"),
    ],
)
def test_bad_flag_values_name_the_flag_and_value(argv, flag, value):
    with pytest.raises(ValueError, match=f"--{flag}") as caught:
        parse(argv)
    assert value in str(caught.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--strategy=gpus"],
        ["--mixed_precision=fp8"],
        ["--lr_schedule=poly"],
        ["--augment=mixup"],
        ["--preset=paper_coco"],
        ["--epochs=two"],
    ],
)
def test_enum_and_type_errors_are_absl_flag_errors(argv):
    name = argv[0].split("=")[0][2:]
    with pytest.raises(flags.IllegalFlagValueError, match=name):
        parse(argv)


def test_unknown_preset_and_field_from_python():
    with pytest.raises(ValueError, match="--preset='paper_coco'"):
        config_lib.make_config("paper_coco")
    with pytest.raises(ValueError, match="learning_rate"):
        config_lib.make_config(learning_rate=0.1)


HELP_HINT = "(run with --helpfull for all flags)"


def _run_module(module, argv):
    return forked_cli.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def _assert_one_line_usage_error(completed, program, message):
    """Exit status 2 and a last line naming the problem; no traceback, no flag listing."""
    assert completed.returncode == 2, completed.stderr[-3000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{program}: error: ") and message in last, completed.stderr[-3000:]
    assert last.endswith(HELP_HINT)
    assert "Traceback" not in completed.stderr
    # absl's listing prints every flag's help; the help of --seed is one of them.
    assert "flags:" not in completed.stderr and "--seed" not in completed.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--dataset=folder", "--data_dir={tmp}/missing"],
            "--data_dir='{tmp}/missing' is not a directory; "
            "expected one sub-folder of images per class",
        ),
        (["--model=resnet9000"], "--model='resnet9000' is unknown; expected one of"),
        (["--batch_size_per_replica=-3"], "--batch_size_per_replica=-3 is invalid"),
        (["--batch_size=-3"], "Unknown command line flag 'batch_size'"),
        (["--strategy=gpus"], "flag --strategy=gpus: value should be one of"),
        (["resume"], "unexpected arguments: resume"),
    ],
)
def test_command_line_errors_are_one_message_and_start_nothing(argv, message, tmp_path):
    model_dir = tmp_path / "run"
    argv = [a.format(tmp=tmp_path) for a in argv] + [f"--model_dir={model_dir}"]
    _assert_one_line_usage_error(
        _run_module("gn_keras.train.classify", argv), "gn-train", message.format(tmp=tmp_path)
    )
    assert not model_dir.exists()


@pytest.mark.parametrize(
    "module, program, argv, message",
    [
        (
            "gn_keras.train.finetune",
            "gn-finetune",
            ["--trained_model={tmp}/run", "--freeze_at=9"],
            "--freeze_at=9 is invalid",
        ),
        ("gn_keras.train.study", "gn-study", [], "--study is required"),
        ("gn_keras.train.export", "gn-export", ["--output_dir={tmp}/out"], "--trained_model"),
        (
            "gn_keras.train.export",
            "gn-export",
            ["--trained_model={tmp}/m.keras", "--output_dir={tmp}/out", "--tolerance=0"],
            "--tolerance must be > 0",
        ),
    ],
)
def test_other_scripts_give_the_same_one_line_usage_error(module, program, argv, message, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    _assert_one_line_usage_error(_run_module(module, argv), program, message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "program, module, flag_names",
    [
        ("gn-export", "gn_keras.train.export", ("--trained_model", "--output_dir", "--tolerance")),
        ("gn-finetune", "gn_keras.train.finetune", ("--trained_model", "--freeze_at", "--epochs")),
        ("gn-study", "gn_keras.train.study", ("--study", "--out_dir", "--study_norms", "--epochs")),
    ],
)
def test_help_of_each_script_lists_its_flags(program, module, flag_names):
    # The console script (whose file defines no flag) if installed, else the module.
    command = [program] if shutil.which(program) else [sys.executable, "-m", module]
    completed = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    # absl ends --help with exit status 1.
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    for name in flag_names:
        assert f"  {name}:" in completed.stdout, (name, completed.stdout[-3000:])


def _assert_one_line_run_error(completed, program, message):
    """Exit status 1 and a last line naming the problem, without the --helpfull hint."""
    assert completed.returncode == 1, completed.stderr[-3000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{program}: error: ") and message in last, completed.stderr[-3000:]
    assert HELP_HINT not in completed.stderr and "Traceback" not in completed.stderr


def test_an_error_inside_the_run_exits_1_without_the_usage_hint(tmp_path):
    # A damaged TF_CONFIG is no flag: train() fails where it picks the strategy.
    completed = forked_cli.run(
        [sys.executable, "-m", "gn_keras.train.classify", f"--model_dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": REPO,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_CONFIG": "{not json",
        },
    )
    _assert_one_line_run_error(completed, "gn-train", "TF_CONFIG is not valid JSON")


@pytest.mark.parametrize(
    "error, status, hint",
    [
        (ValueError("a model layer cannot be built"), 1, False),
        (RuntimeError("export differs"), 1, False),
        (load.ModelFileError("m.keras", "not a .keras archive"), 1, False),
        (_checks.FlagError("--epochs=0 is invalid"), 2, True),
        (flags.IllegalFlagValueError("flag --strategy=gpus: bad"), 2, True),
        ("unexpected arguments: resume", 2, True),
    ],
)
def test_exit_status_is_2_only_for_usage_errors(error, status, hint, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.exit_with_error("gn-test", error)
    # sys.exit(message) prints the message itself and exits with status 1.
    code = exited.value.code
    line = capsys.readouterr().err.strip() if isinstance(code, int) else str(code)
    assert (code if isinstance(code, int) else 1) == status
    assert len(line.splitlines()) == 1 and line.startswith("gn-test: error: ")
    assert str(error) in line and line.endswith(HELP_HINT) == hint


def test_config_checks_raise_usage_errors_and_generic_wording():
    with pytest.raises(_checks.FlagError, match=r"--epochs=0 is invalid: expected a positive"):
        config_lib.make_config(epochs=0)
    with pytest.raises(_checks.FlagError, match=r"--momentum=1.5 is invalid: expected a number"):
        config_lib.make_config(momentum=1.5)


def test_script_defaults_sit_between_preset_and_explicit_values():
    config = config_lib.make_config(
        "paper_imagenet",
        {"batch_size_per_replica": 2, "epochs": 5, "data_dir": "/d"},
        epochs=3,
    )
    # preset < script defaults < explicit; untouched preset fields stay.
    assert (config.batch_size_per_replica, config.epochs, config.groups) == (2, 3, 32)
    with pytest.raises(ValueError, match="learning_rate"):
        config_lib.make_config(None, {"learning_rate": 0.1})
