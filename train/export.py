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

Every artefact is verified right after writing; a file problem or a
mismatch beyond ``--tolerance`` ends the command with a one-line error and
exit status 1 (a bad flag: status 2, see ``train.cli``).
"""

import json
import os

import numpy as np
from absl import flags, logging

from gn_keras import export, load
from gn_keras.train import cli

FORMATS = ("saved_model", "onnx", "tflite")


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


def export_all(model, output_dir, preprocessing, formats=FORMATS, tolerance=None):
    """Write and verify every requested artefact; return the report dict."""
    os.makedirs(output_dir, exist_ok=True)
    images = export.check_batch(preprocessing)
    saved_model_dir = os.path.join(output_dir, "saved_model")
    by_signature = export.export_saved_model(
        model, saved_model_dir, preprocessing, tolerance=tolerance
    )
    differences = {
        "saved_model": {
            f"{signature}/{name}": value
            for signature, outputs in by_signature.items()
            for name, value in outputs.items()
        }
    }
    model.save(os.path.join(output_dir, "model.keras"))
    with open(os.path.join(output_dir, "preprocessing.json"), "w", encoding="utf-8") as handle:
        json.dump(preprocessing, handle, indent=2)
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


def main(argv):
    del argv  # cli.run_command allows no positional arguments
    values = flags.FLAGS
    if not values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines hide the result
    try:
        model = load.load_model(values.trained_model)
        preprocessing = load.load_preprocessing(values.preprocessing or values.trained_model)
        report = export_all(
            model,
            values.output_dir,
            preprocessing,
            formats=values.format,
            tolerance=values.tolerance,
        )
    except (ValueError, export.ExportMismatchError, OSError) as error:  # exit 1: see below
        cli.exit_with_error("gn-export", error)
    for artefact, outputs in report["max_abs_difference"].items():
        worst = max(outputs.values())
        print(f"{artefact}: verified, max |export - keras| = {worst:.3g}")
    print(f"wrote {values.output_dir}")


def run():
    """Console-script entry point (``gn-export``)."""
    cli.run_command(main, "gn-export", define_flags)


if __name__ == "__main__":
    run()
