"""Writing a conversion as a model directory the rest of gn-keras reads.

``DIR/model.keras``, ``DIR/saved_model/`` (:func:`gn_keras.export.export_saved_model`,
verified against Keras after writing), ``DIR/preprocessing.json`` and
``DIR/convert_report.json``: the layout of a training ``--model_dir`` or an
export ``--output_dir``, so ``gn-finetune``, ``gn-export`` and
:func:`gn_keras.load.load_model` take ``DIR`` as a trained model.

Everything is written into a sibling staging directory first and swapped
into place at the end (``gn_keras.staging.staging`` and ``publish``, as
``gn-export`` does), so ``DIR`` is never half written; the staging left by a
killed conversion is swept by the next one, and ``DIR`` gets the mode the
umask gives. An existing ``DIR`` is only accepted when it is empty or
already holds this same conversion (same checkpoint bytes and settings;
then nothing is rewritten).
"""

import json
import os

from gn_keras import export, load, staging
from gn_keras.models.pretrained import loader, verify

REPORT_FILE = "convert_report.json"
# The report entries that make two conversions the same.
_IDENTITY = (
    "source",
    "checkpoint",
    "checkpoint_sha256",
    "model",
    "norm",
    "groups",
    "num_classes",
    "image_size",
    "source_channel_order",
    "allow_partial",
)


def _existing_report(output_dir):
    try:
        with open(os.path.join(output_dir, REPORT_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _same_conversion(old, new):
    if old is None:
        return False
    if new["checkpoint_sha256"] is not None:  # a file: its bytes, not its path
        keys = [key for key in _IDENTITY if key != "checkpoint"]
    else:
        keys = _IDENTITY
    return all(old.get(key) == new[key] for key in keys)


def _check_target(output_dir, report):
    """True when ``output_dir`` already holds this conversion; refuse others."""
    if not os.path.exists(output_dir):
        return False
    if os.path.isdir(output_dir) and not os.listdir(output_dir):
        return False
    if _same_conversion(_existing_report(output_dir), report):
        return True
    held = "a different conversion" if _existing_report(output_dir) else "other files"
    raise ValueError(
        f"output_dir={output_dir} already exists and holds {held}; "
        "choose a new directory or remove it first."
    )


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)
        handle.write("\n")


def write(conversion, output_dir):
    """Write ``conversion`` into ``output_dir`` atomically; return the report."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    report = conversion.report
    if _check_target(output_dir, report):
        return dict(_existing_report(output_dir), unchanged=True)
    with staging.staging(output_dir) as stage:
        conversion.model.save(os.path.join(stage, "model.keras"))
        saved_model = export.export_saved_model(
            conversion.model, os.path.join(stage, "saved_model"), conversion.preprocessing
        )
        report = dict(report, saved_model_max_abs_difference=saved_model)
        _write_json(os.path.join(stage, load.PREPROCESSING_FILE), conversion.preprocessing)
        _write_json(os.path.join(stage, REPORT_FILE), report)
        staging.publish(stage, output_dir)  # an existing output_dir is empty, checked above
    return report


def convert_to_directory(source, checkpoint, output_dir, model=None, norm="gn", **options):
    """Convert, verify against torch when it is installed, and :func:`write`.

    ``options`` are :func:`loader.convert_checkpoint`'s; ``verify=False``
    skips the torch comparison (``tolerance=`` changes its bound).
    Returns the report written to ``convert_report.json``.
    """
    check = options.pop("verify", True)
    tolerance = options.pop("tolerance", verify.TOLERANCE)
    conversion = loader.convert_checkpoint(source, checkpoint, model, norm, **options)
    if check:
        conversion.report["verification"] = verify.verify(conversion, tolerance)
    else:
        conversion.report["verification"] = {"skipped": "verify=False (--noverify)"}
    return write(conversion, output_dir)
