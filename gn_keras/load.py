"""Finding and opening trained models and their preprocessing on disk.

One entry point, :func:`load_model`, accepts the three things a user has
after training or export: a ``.keras`` file, a SavedModel directory written
by :mod:`gn_keras.export`, or a directory holding either (a training
``--model_dir`` or an export ``--output_dir``).  :func:`load_preprocessing`
finds the matching ``preprocessing.json``.

:func:`check_checkpoint_file` reads a training checkpoint in full before a
run resumes from it (``train.checkpoints`` chooses which one).

Every problem with a file (missing, truncated, of the wrong kind) raises
:class:`ModelFileError`, a ``ValueError`` whose one-line message starts with
the path, so command-line tools can print it without a traceback.

Every tool that takes a ``--trained_model`` (gn-export, gn-finetune,
gn-video, gn-detect's backbone) wants an image model, and finds it through
:func:`resolve_model_path`.  A gn-detect run's Mask R-CNN (its ``.keras``
files, whose class only gn-detect builds, or its serving SavedModel) is
refused there, before anything is read, with :class:`NotAnImageModelError`
saying which tool reads it.

A SavedModel is opened as a real Keras model, not as an opaque function: the
exporter stores the model's config in ``assets.extra/keras_model.json`` and
its weights as the ordered ``model_variables`` collection; here the model is
rebuilt from the config and every weight is copied from the SavedModel,
after checking that names and shapes agree.  The rebuilt model can be
fine-tuned, have its head replaced, its stages frozen or its norms swapped.
"""

import json
import os
import re
import zipfile

import keras

from gn_keras import _checks
from gn_keras._checks import FlagError

# Inside a SavedModel: the folder TensorFlow reserves for extra files.
EXTRA_DIR = "assets.extra"
CONFIG_FILE = "keras_model.json"
PREPROCESSING_FILE = "preprocessing.json"
VARIABLES_COLLECTION = "model_variables"
# What a training --model_dir or an export --output_dir may hold, in the
# order a directory is searched for a model.
MODEL_CANDIDATES = ("best.keras", "last.keras", "model.keras", "saved_model")
_PREPROCESSING_KEYS = ("image_size", "channels", "mean", "std")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ModelFileError(ValueError):
    """A model, SavedModel or preprocessing file is missing or unreadable."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class NotAnImageModelError(ModelFileError, FlagError):
    """``--trained_model`` names a model only another tool reads (a usage error: exit 2)."""


# The top-level Keras class of a .keras archive that only gn-detect builds.
_DETECTION_CLASS = "MaskRCNN"
# A key only a gn-detect run's preprocessing.json has (it maps classes to COCO ids).
_DETECTION_PREPROCESSING_KEY = "category_ids"


def is_saved_model_dir(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _keras_class_name(path):
    """The class a ``.keras`` archive's ``config.json`` names at the top, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")).get("class_name")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, AttributeError):
        return None  # _load_keras_file says what is wrong with it


def _is_detection_export(path):
    try:
        with open(os.path.join(path, EXTRA_DIR, PREPROCESSING_FILE), encoding="utf-8") as handle:
            return _DETECTION_PREPROCESSING_KEY in json.load(handle)
    except (OSError, ValueError, TypeError):
        return False


def _refuse_detection_model(path):
    """Raise :class:`NotAnImageModelError` if ``path`` is a gn-detect run's model."""
    run = os.path.dirname(os.path.abspath(path))
    if path.endswith(".keras") and _keras_class_name(path) == _DETECTION_CLASS:
        raise NotAnImageModelError(
            path,
            "a Mask R-CNN written by gn-detect, not an image model: only gn-detect reads it "
            f"(gn-detect --model_dir={run} --eval_only), and gn-detect wrote its serving "
            f"SavedModel to {os.path.join(run, 'saved_model')} already.",
        )
    if is_saved_model_dir(path) and _is_detection_export(path):
        raise NotAnImageModelError(
            path,
            "the serving SavedModel of a gn-detect run (Mask R-CNN), not an image model: it "
            "is served as it is (gn_keras.train.detection.export documents its signature); "
            "only gn-detect trains or evaluates the run.",
        )


def resolve_model_path(source):
    """The ``.keras`` file or SavedModel directory of an image model that ``source`` names."""
    path = _model_path(source)
    _refuse_detection_model(path)
    return path


def _model_path(source):
    source = os.fspath(source)
    if not os.path.exists(source):
        raise ModelFileError(source, "no such file or directory.")
    if os.path.isfile(source):
        if not source.endswith(".keras"):
            raise ModelFileError(
                source,
                "not a .keras file; give a .keras file, a SavedModel "
                "directory, or a training/export directory that holds one.",
            )
        return source
    if is_saved_model_dir(source):
        return source
    for name in MODEL_CANDIDATES:
        candidate = os.path.join(source, name)
        if os.path.isfile(candidate) or is_saved_model_dir(candidate):
            return candidate
    raise ModelFileError(
        source,
        "directory holds no model: looked for saved_model.pb and "
        f"for {', '.join(MODEL_CANDIDATES)}.",
    )


def load_model(source):
    """Load a Keras model from a ``.keras`` file, SavedModel or model dir."""
    path = resolve_model_path(source)
    if path.endswith(".keras"):
        return _load_keras_file(path)
    return load_exported_model(path)


def _load_keras_file(path):
    if os.path.getsize(path) == 0:
        raise ModelFileError(path, "the file is empty.")
    try:
        return keras.saving.load_model(path, compile=False)
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as error:
        raise ModelFileError(
            path,
            f"cannot read the Keras model (truncated or not a .keras "
            f"archive?): {first_line(error)}",
        ) from None


def load_exported_model(export_dir):
    """Rebuild the Keras model of a SavedModel written by gn_keras.export."""
    import tensorflow as tf

    config_path = os.path.join(export_dir, EXTRA_DIR, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ModelFileError(
            export_dir,
            f"SavedModel has no {EXTRA_DIR}/{CONFIG_FILE}, so it "
            "was not written by gn_keras.export and its Keras layers cannot "
            "be rebuilt; wrap it in keras.layers.TFSMLayer to fine-tune its "
            "variables (docs/transfer.md).",
        )
    try:
        with open(config_path, encoding="utf-8") as handle:
            model = keras.models.model_from_json(handle.read())
        restored = tf.saved_model.load(export_dir)
    except Exception as error:  # protobuf, checkpoint and JSON errors alike
        raise ModelFileError(
            export_dir,
            f"cannot read the SavedModel (truncated or incomplete?): {first_line(error)}",
        ) from None
    saved = getattr(restored, VARIABLES_COLLECTION, None)
    if saved is None:
        raise ModelFileError(
            export_dir,
            f"SavedModel has no '{VARIABLES_COLLECTION}' "
            "collection to restore the Keras weights from.",
        )
    _copy_weights(list(saved), model.weights, export_dir)
    return model


def _copy_weights(saved, weights, export_dir):
    if len(saved) != len(weights):
        raise ModelFileError(
            export_dir,
            f"holds {len(saved)} model variables but the rebuilt model has {len(weights)} weights.",
        )
    for source, target in zip(saved, weights):
        saved_name = source.name.split(":")[0]
        if saved_name != target.path or tuple(source.shape) != tuple(target.shape):
            raise ModelFileError(
                export_dir,
                f"variable {saved_name} {tuple(source.shape)} "
                f"does not match weight {target.path} {tuple(target.shape)}.",
            )
        target.assign(source.numpy())


def check_checkpoint_file(path):
    """Read every tensor of the checkpoint with prefix ``path``; return ``path``.

    A truncated, corrupt or partly deleted checkpoint raises
    :class:`ModelFileError` naming it, instead of the reader's bare
    ``IndexError``/``DataLossError`` deep inside a restore.
    """
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError) as error:
        raise ModelFileError(
            path, f"cannot read the checkpoint (truncated or corrupt?): {first_line(error)}"
        ) from None
    return path


def first_line(error):
    """``"Type: first line of the message"`` of ``error``, terminal colour codes removed.

    For quoting another library's error inside a one-line message (torch,
    for one, makes part of its message bold with ANSI escape codes).
    """
    text = _ANSI_ESCAPE.sub("", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0].strip() if text else ''}"


def preprocessing_path(source):
    """Where the ``preprocessing.json`` that belongs to ``source`` lives."""
    source = os.fspath(source)
    model_path = resolve_model_path(source)
    folders = [os.path.dirname(model_path) or "."]
    if is_saved_model_dir(model_path):
        folders = [os.path.join(model_path, EXTRA_DIR), os.path.dirname(model_path) or "."]
    for folder in folders:
        candidate = os.path.join(folder, PREPROCESSING_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise ModelFileError(
        source, f"no {PREPROCESSING_FILE} found in {' or '.join(folders)}; pass one explicitly."
    )


def load_preprocessing(source):
    """The validated preprocessing dict for a model source or a JSON path."""
    source = os.fspath(source)
    path = source if source.endswith(".json") else preprocessing_path(source)
    if not os.path.isfile(path):
        raise ModelFileError(path, "no such file.")
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except (OSError, ValueError) as error:
        raise ModelFileError(path, f"not valid JSON: {first_line(error)}") from None
    return check_preprocessing(spec, where=path)


def check_preprocessing(spec, where="preprocessing"):
    """Validate the training run's preprocessing contract; return a copy.

    The contract: ``image_size`` [H, W], ``channels`` C, per-channel
    ``mean`` and ``std`` on the 0-255 pixel scale, ``data_format``
    channels_last, and optionally ``num_classes`` and ``class_names``.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: preprocessing must be a JSON object, got {spec!r}.")
    missing = [key for key in _PREPROCESSING_KEYS if key not in spec]
    if missing:
        raise ValueError(f"{where}: preprocessing lacks the keys {missing}.")
    size, channels = spec["image_size"], spec["channels"]
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(_checks.is_integer(s) and s > 0 for s in size)
    ):
        raise ValueError(f"{where}: `image_size` must be [H, W] positive integers, got {size!r}.")
    if not _checks.is_integer(channels) or channels <= 0:
        raise ValueError(f"{where}: `channels` must be a positive integer, got {channels!r}.")
    for key in ("mean", "std"):
        values = spec[key]
        if not (isinstance(values, (list, tuple)) and len(values) == channels):
            raise ValueError(
                f"{where}: `{key}` must list {channels} numbers (one per "
                f"channel), got {key}={values!r}."
            )
    if any(not value > 0 for value in spec["std"]):
        raise ValueError(f"{where}: `std` must be positive, got std={spec['std']!r}.")
    data_format = spec.get("data_format", "channels_last")
    if data_format != "channels_last":
        raise ValueError(
            f"{where}: only data_format='channels_last' is exported, got "
            f"data_format={data_format!r}."
        )
    return dict(spec, image_size=list(size), data_format=data_format)
