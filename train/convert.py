"""``python -m gn_keras.train.convert`` (console script ``gn-convert``): import pre-trained weights.

Converts a timm, torchvision, Detectron (Caffe2 ``.pkl``) or detectron2
ResNet checkpoint, or timm's GN pre-activation ResNet-V2 (BiT with
``--norm=gn+ws``), into the zoo's model of the same depth and norm, checks
it against PyTorch when torch and timm are installed, and writes
``--output_dir``: ``model.keras``, ``saved_model/``, ``preprocessing.json``
and ``convert_report.json``. That directory is a trained model for
``gn-finetune`` and ``gn-export``::

    gn-convert --source=timm --checkpoint=hub:resnet50_gn.a1h_in1k --model=resnet50 \\
        --norm=gn --output_dir=pretrained/r50_gn

Library: :mod:`gn_keras.models.pretrained`; docs/pretrained.md.
"""

from absl import flags

from gn_keras import _checks
from gn_keras.models import pretrained
from gn_keras.train import cli

PROGRAM = "gn-convert"


def define_flags(flag_values=flags.FLAGS):
    def define(kind, name, default, help_text, **extra):
        getattr(flags, f"DEFINE_{kind}")(
            name, default, help=help_text, flag_values=flag_values, **extra
        )

    define(
        "enum", "source", None, "Where the checkpoint comes from.", enum_values=pretrained.SOURCES
    )
    define(
        "string",
        "checkpoint",
        None,
        "A .pth/.pt/.bin/.safetensors/.pkl file, or hub:NAME for timm to download "
        "(needs network access), e.g. hub:resnet50_gn.a1h_in1k.",
    )
    define(
        "enum",
        "model",
        None,
        "Zoo model; default: the checkpoint's depth.",
        enum_values=pretrained.MODELS,
    )
    define(
        "enum",
        "norm",
        "gn",
        "gn for a GN checkpoint; gn+ws for BiT (timm's resnetv2_*_bit: GN and "
        "weight-standardized convs); bn, frozen_bn (BN*) or sync_bn for a BN one.",
        enum_values=pretrained.NORMS,
    )
    define("integer", "groups", 32, "GN's groups (checkpoints do not record them).")
    define("integer", "num_classes", None, "Classifier width; default: the checkpoint's fc.")
    define("integer", "image_size", None, "Fixed input side of the model; default: the source's.")
    define(
        "enum",
        "input_format",
        None,
        "Channel order the source reads; default bgr for detectron/detectron2, else rgb.",
        enum_values=pretrained.INPUT_FORMATS,
    )
    define(
        "bool", "allow_partial", False, "Load what fits instead of refusing unused/missing tensors."
    )
    define("string", "output_dir", None, "Directory to write (must not hold another conversion).")
    define("bool", "verify", True, "Compare with PyTorch/timm when installed.")
    define("float", "tolerance", 1e-4, "Largest relative difference from torch allowed.")
    flags.mark_flags_as_required(["source", "checkpoint", "output_dir"], flag_values=flag_values)


def check_flags(flag_values):
    """A ``FlagError`` (exit status 2) for a count, size or tolerance that is not positive."""
    _checks.check_int(flag_values.groups, "--groups", minimum=1)
    for name in ("num_classes", "image_size"):  # unset: taken from the checkpoint
        _checks.check_int(flag_values[name].value, f"--{name}", minimum=1, optional=True)
    _checks.check_number(flag_values.tolerance, "--tolerance", low=0, low_open=True)


def convert(flag_values):
    """Run the conversion the flags describe; return the report."""
    return pretrained.convert_to_directory(
        flag_values.source,
        flag_values.checkpoint,
        flag_values.output_dir,
        flag_values.model,
        flag_values.norm,
        groups=flag_values.groups,
        num_classes=flag_values.num_classes,
        image_size=flag_values.image_size,
        input_format=flag_values.input_format,
        allow_partial=flag_values.allow_partial,
        verify=flag_values.verify,
        tolerance=flag_values.tolerance,
    )


def describe(report, output_dir):
    check = report.get("verification", {})
    if "skipped" in check:
        verdict = f"not compared with torch ({check['skipped']})"
    else:
        verdict = (
            f"{check['compared']} match torch: max |diff| {check['max_abs_difference']:.3g}, "
            f"relative {check['max_relative_difference']:.3g} <= {check['tolerance']:g}"
        )
    partial = len(report["unused_source_tensors"]) + len(report["missing_model_weights"])
    lines = [
        f"{report['model']} ({report['norm']}) from {report['source']}: "
        f"{report['filled_weights']} weights filled"
        + (f", {partial} unused or missing (see the report)" if partial else ""),
        f"  {verdict}",
        f"  wrote {output_dir}"
        + (" (unchanged: it already held this conversion)" if report.get("unchanged") else ""),
    ]
    return "\n".join(lines)


def main(argv):
    del argv  # cli.run_command allows no positional arguments
    values = flags.FLAGS
    check_flags(values)  # a ValueError is one line (cli.guard_main)
    report = convert(values)
    print(describe(report, values.output_dir))


def run():
    """Console entry point ``gn-convert``."""
    cli.run_command(main, PROGRAM, define_flags)


if __name__ == "__main__":
    run()
