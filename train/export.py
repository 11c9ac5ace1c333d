"""``python -m gn_keras.train.export`` (console script ``gn-export``): models for other runtimes.

Reads ``--trained_model`` (a ``.keras`` file, a SavedModel written by
``gn_keras.export``, or a training ``--model_dir``) with its
``preprocessing.json``, and writes into ``--output_dir``:

* ``saved_model/``: signatures ``serving_default`` (float32 images 0–255),
  ``serving_uint8`` and ``features`` (see :mod:`gn_keras.export`);
* ``model.keras`` and ``preprocessing.json`` beside it;
* ``model.onnx`` with ``--format=onnx`` (tf2onnx) and ``model.tflite`` with
  ``--format=tflite`` (TensorFlow's LiteRT converter);
* ``check_images.npy``: the fixed uint8 batch every artefact was run on, and
  ``export_report.json``: the largest difference from Keras of each output
  of each artefact and the batch's top-1 classes, for ``saved_model_cli run``.

The export is built in a sibling staging folder ``OUTPUT_DIR.tmp-PID/``,
every artefact verified there (``model.keras`` loaded back and compared
exactly), and swapped in whole only when all passed; a folder holding
anything but an earlier export's artefacts is refused.  A file problem or a
mismatch beyond ``--tolerance`` ends the command with a one-line error and
exit status 1 (a bad flag: status 2, see ``train.cli``), the old
``--output_dir`` untouched; a staging left by a killed export is swept by
the next export to the same folder.
"""

import json
import os

import numpy as np
from absl import flags

from gn_keras import export, load
from gn_keras import staging as staging_lib
from gn_keras._checks import FlagError
from gn_keras.train import cli

FORMATS = ("saved_model", "onnx", "tflite")
KERAS_RELOAD_TOLERANCE = 1e-6


class ExportError(RuntimeError):
    """An export failed; the message names the artefact and says ``--output_dir`` is unchanged."""


def define_flags(flag_values=flags.FLAGS):
    """The flags of ``gn-export`` on ``flag_values``."""
    flags.DEFINE_string(
        "trained_model",
        None,
        "The model to export: a .keras file, a SavedModel directory, or a training "
        "--model_dir (best.keras is used).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output_dir", None, "Directory to write the exports into.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "preprocessing",
        None,
        "preprocessing.json to use; default: the one beside the model (or inside its SavedModel).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_enum(
        "format",
        ["saved_model"],
        FORMATS,
        "Artefacts to write; saved_model and model.keras are always "
        "written. Repeat the flag: --format=onnx --format=tflite.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "tolerance",
        None,
        "Largest allowed |export - Keras| relative to "
        "max(1, max |Keras|) on the check batch; default max(1e-4, 8 eps "
        "of the model's least precise compute dtype): 1e-4 for float32, "
        "7.8e-3 for float16, 6.25e-2 for bfloat16 (the SavedModel); ONNX "
        "and LiteRT hold and are checked against the float32 twin of a "
        "mixed-precision model, at 1e-4.",
        flag_values=flag_values,
    )
    flags.register_validator(
        "tolerance",
        lambda value: value is None or value > 0,
        message="--tolerance must be > 0 (it bounds a relative difference)",
        flag_values=flag_values,
    )
    flags.mark_flags_as_required(["trained_model", "output_dir"], flag_values=flag_values)


ARTEFACTS = (
    "saved_model",
    "model.keras",
    "preprocessing.json",
    "model.onnx",
    "model.tflite",
    "check_images.npy",
    "export_report.json",
)


def check_output_dir(output_dir):
    """Refuse an ``--output_dir`` holding anything but an earlier export (it is replaced whole)."""
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise FlagError(f"--output_dir={output_dir} is a file, not a folder.")
        return
    foreign = sorted(set(os.listdir(output_dir)) - set(ARTEFACTS))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FlagError(
            f"--output_dir={output_dir} holds files that are not an export ({shown}); "
            "the export replaces the whole folder: use a new or empty one."
        )


def export_all(model, output_dir, preprocessing, formats=FORMATS, tolerance=None):
    """Write every requested artefact into ``output_dir``, all verified; return the report dict.

    Everything is built and verified in a sibling staging folder
    (``gn_keras.staging``) and swapped in only when all of it passed:
    a failure leaves an existing ``output_dir`` exactly as it was, and the
    new folder holds this export's artefacts alone (no ``model.onnx`` of an
    earlier export without ``--format=onnx``).
    """
    output_dir = os.fspath(output_dir)
    check_output_dir(output_dir)
    with staging_lib.staging(output_dir) as staging:
        try:
            report = _write_verified(model, staging, preprocessing, formats, tolerance)
        except (export.ExportMismatchError, ValueError, OSError) as error:
            message = (cli.write_error_line(error) or str(error).strip()).replace(
                staging, output_dir
            )
            raise ExportError(f"{message} ({output_dir} left as it was)") from error
        staging_lib.publish(staging, output_dir)
    return report


def _write_verified(model, output_dir, preprocessing, formats, tolerance):
    images = export.check_batch(preprocessing)
    by_signature = export.export_saved_model(
        model, os.path.join(output_dir, "saved_model"), preprocessing, tolerance=tolerance
    )
    differences = {
        "saved_model": {
            f"{signature}/{name}": value
            for signature, outputs in by_signature.items()
            for name, value in outputs.items()
        }
    }
    differences["model.keras"] = _save_verified_keras(
        model, os.path.join(output_dir, "model.keras"), preprocessing, images
    )
    with open(os.path.join(output_dir, "preprocessing.json"), "w", encoding="utf-8") as handle:
        json.dump(preprocessing, handle, indent=2)
    if load.load_preprocessing(output_dir) != load.check_preprocessing(preprocessing):
        raise export.ExportMismatchError(f"{output_dir}/preprocessing.json does not read back.")
    if "onnx" in formats:
        path = export.export_onnx(model, os.path.join(output_dir, "model.onnx"), preprocessing)
        differences["onnx"] = export.verify_onnx(path, model, preprocessing, images, tolerance)
    if "tflite" in formats:
        path = export.export_tflite(model, os.path.join(output_dir, "model.tflite"), preprocessing)
        differences["tflite"] = export.verify_tflite(path, model, preprocessing, images, tolerance)
    np.save(os.path.join(output_dir, "check_images.npy"), images)
    classes, _ = export.keras_reference(model, preprocessing, images)
    report = {
        "max_abs_difference": differences,
        # None: each check used export.default_tolerance of what it compared.
        "tolerance": tolerance,
        "check_images": "check_images.npy",
        "check_top1": np.argmax(classes["logits"], axis=-1).tolist(),
    }
    with open(os.path.join(output_dir, "export_report.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return report


def _save_verified_keras(model, path, preprocessing, images):
    """Save ``model.keras``, load it back and compare its outputs with ``model``'s.

    The same weights through the same kernels: only float reordering may
    differ, hence a tolerance far below float32 export tolerance.
    """
    model.save(path)
    want, _ = export.keras_reference(model, preprocessing, images)
    got, _ = export.keras_reference(load.load_model(path), preprocessing, images)
    return export.compare(path, got, want, tolerance=KERAS_RELOAD_TOLERANCE)


def main(argv):
    del argv  # cli.run_command allows no positional arguments
    values = flags.FLAGS
    # A ValueError, ExportError or OSError is one line (run below).
    model = load.load_model(values.trained_model)
    preprocessing = load.load_preprocessing(values.preprocessing or values.trained_model)
    report = export_all(
        model, values.output_dir, preprocessing, formats=values.format, tolerance=values.tolerance
    )
    for artefact, outputs in report["max_abs_difference"].items():
        worst = max(outputs.values())
        print(f"{artefact}: verified, max |export - keras| = {worst:.3g}")
    print(f"wrote {values.output_dir}")


def run():
    """Console-script entry point (``gn-export``)."""
    # A model file that cannot be read or a conversion that fails is one line.
    cli.run_command(main, "gn-export", define_flags, one_line_errors=(ExportError, OSError))


if __name__ == "__main__":
    run()
