"""Exporting a trained classifier for other runtimes, and checking each export.

Writes, from a Keras classifier and its preprocessing (the training run's
``preprocessing.json``):

* a SavedModel (:func:`export_saved_model`) with three signatures, all with a
  dynamic batch and the preprocessing ``(pixels − mean) / std`` inside:

  - ``serving_default``: float32 ``images`` (N, H, W, C) on the 0–255 scale
    → ``logits`` and ``probabilities``;
  - ``serving_uint8``: the same for uint8 ``images`` (decoded image bytes);
  - ``features``: float32 ``images`` → ``pooled`` backbone features plus
    the stage endpoints ``C1``…``C5`` the model names (§4.2's transfer).

  ``assets.extra`` carries ``preprocessing.json`` and the Keras config, so
  :func:`gn_keras.load.load_model` can rebuild a trainable Keras model from
  the SavedModel alone.  Graphs hold standard TensorFlow ops only.
* an ONNX file through tf2onnx (:func:`export_onnx`) and a ``.tflite`` file
  through TensorFlow's LiteRT converter (:func:`export_tflite`), both taking
  float32 ``images`` and returning ``logits`` and ``probabilities``; both get
  the float32 twin of a mixed-precision model (:func:`float32_copy`), since
  neither runtime has 16-bit kernels for every op (ONNX Runtime has no
  bfloat16 Conv) and their callers feed float32.

Each artefact is verified right after it is written (``verify_*``): it is run
by its own runtime (TensorFlow's SavedModel loader, ONNX Runtime, the LiteRT
interpreter) on a fixed batch, and compared with the Keras model applied to
the same batch normalised in NumPy; a difference beyond float tolerance
raises :class:`ExportMismatchError`.
"""

import json
import os
import tempfile

import keras
import ml_dtypes  # TensorFlow's own numpy dtypes: finfo knows bfloat16
import numpy as np
import tensorflow as tf

from gn_keras import load, portable, transfer
from gn_keras import preprocessing as preprocessing_lib

SERVING_SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_uint8"
FEATURES_SIGNATURE = "features"
INPUT_NAME = "images"
# Allowed |exported − Keras|, relative to max(1, max |Keras|), by default:
# see default_tolerance.  float32 kernels fused or reordered by another
# runtime differ by ~1e-6 here, well inside DEFAULT_TOLERANCE.
DEFAULT_TOLERANCE = 1e-4
ROUNDINGS_ALLOWED = 8
_16_BIT = ("float16", "bfloat16")
CHECK_BATCH_SEED = 20180322  # the paper's arXiv date: any fixed seed will do
ONNX_OPSET = 17


class ExportMismatchError(RuntimeError):
    """An exported artefact does not reproduce the Keras model."""


def check_model_matches(model, preprocessing):
    """Fail early if the model's input/output disagree with preprocessing."""
    expected = (*preprocessing["image_size"], preprocessing["channels"])
    if len(model.inputs) != 1 or tuple(model.inputs[0].shape[1:]) != expected:
        shapes = [tuple(tensor.shape) for tensor in model.inputs]
        raise ValueError(
            f"model {model.name!r} takes inputs {shapes} but preprocessing "
            f"gives images of shape (None, {', '.join(map(str, expected))})."
        )
    classes = model.outputs[0].shape[-1]
    wanted = preprocessing.get("num_classes")
    if len(model.outputs[0].shape) != 2 or (wanted is not None and classes != wanted):
        raise ValueError(
            f"model {model.name!r} outputs shape {tuple(model.outputs[0].shape)} "
            f"but preprocessing says num_classes={wanted}."
        )


def image_spec(preprocessing, dtype=tf.float32):
    """The ``images`` input of every signature, with a dynamic batch."""
    height, width = preprocessing["image_size"]
    return tf.TensorSpec((None, height, width, preprocessing["channels"]), dtype, name=INPUT_NAME)


class _Endpoints:
    """The Python functions behind the signatures (traced by TensorFlow).

    The classifier is traced once, in :meth:`_model_outputs`, a function of
    the float32 images that both serving signatures call (the uint8 one
    after a cast): tracing it in each signature cost a second graph building
    per export, and Keras's save repeats each.  TensorFlow inlines the call
    when serving.  The features signature keeps its own trace, so that it
    captures the backbone's variables only (a ``TFSMLayer`` on it must not
    list the head among its trainable weights).
    """

    def __init__(self, model, preprocessing):
        self.model = model
        self.feature_model = transfer.feature_model(model)
        self.ends_in_softmax = transfer.find_head(model)[2]
        self.mean = np.asarray(preprocessing["mean"], np.float32)
        self.std = np.asarray(preprocessing["std"], np.float32)
        self.model_outputs = tf.function(
            self._model_outputs, input_signature=[image_spec(preprocessing)]
        )

    def normalize(self, images):
        return preprocessing_lib.normalize(images, self.mean, self.std)

    def _model_outputs(self, images):
        return tf.cast(self.model(self.normalize(images), training=False), tf.float32)

    def classify(self, images):
        outputs = self.model_outputs(tf.cast(images, tf.float32))
        if self.ends_in_softmax:
            # log p is a valid logit vector: softmax(log p) = p.
            return {"logits": tf.math.log(tf.maximum(outputs, 1e-30)), "probabilities": outputs}
        return {"logits": outputs, "probabilities": tf.nn.softmax(outputs)}

    def features(self, images):
        outputs = self.feature_model(self.normalize(images), training=False)
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}


@portable.portable_ops()  # never the compiled kernels in an export
def export_saved_model(model, export_dir, preprocessing, verify=True, tolerance=None):
    """Write ``model`` as a SavedModel for serving and transfer.

    Args:
      model: a built functional Keras classifier (logits or softmax output).
      export_dir: the SavedModel directory to write (created if needed).
      preprocessing: the ``preprocessing.json`` dict of the training run.
      verify: load the SavedModel back and compare it with ``model``.
      tolerance: relative tolerance of that comparison; default
        :func:`default_tolerance` (1e-4 for float32 compute, 8 eps of a
        16-bit compute dtype).

    Returns:
      The verification report (``{}`` when ``verify=False``).
    """
    preprocessing = load.check_preprocessing(preprocessing, where="export_saved_model")
    check_model_matches(model, preprocessing)
    endpoints = _Endpoints(model, preprocessing)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_SIGNATURE, endpoints.classify, [image_spec(preprocessing)])
    archive.add_endpoint(UINT8_SIGNATURE, endpoints.classify, [image_spec(preprocessing, tf.uint8)])
    archive.add_endpoint(FEATURES_SIGNATURE, endpoints.features, [image_spec(preprocessing)])
    # The ordered weights let gn_keras.load rebuild a trainable Keras model.
    archive.add_variable_collection(load.VARIABLES_COLLECTION, model.weights)
    archive.write_out(os.fspath(export_dir), verbose=False)
    write_extras(export_dir, preprocessing, model)
    if not verify:
        return {}
    return verify_saved_model(export_dir, model, preprocessing, tolerance=tolerance)


def write_extras(export_dir, preprocessing, model=None):
    """Put ``preprocessing.json`` (and ``model``'s Keras config) in a SavedModel's extras.

    Every SavedModel the project writes carries them (image, video and
    detection exports): ``gn_keras.load`` reads them back.
    """
    extra = os.path.join(export_dir, load.EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, load.PREPROCESSING_FILE), "w", encoding="utf-8") as handle:
        json.dump(preprocessing, handle, indent=2)
    if model is not None:
        with open(os.path.join(extra, load.CONFIG_FILE), "w", encoding="utf-8") as handle:
            handle.write(model.to_json())


@portable.portable_ops()  # never the compiled kernels in an export
def export_onnx(model, path, preprocessing, opset=ONNX_OPSET):
    """Write the classifier as ONNX (float32 images → logits, probabilities).

    A mixed-precision model is written as its float32 twin
    (:func:`float32_copy`): ONNX Runtime rejects a bfloat16 Conv.
    """
    import tf2onnx

    preprocessing = load.check_preprocessing(preprocessing, where="export_onnx")
    check_model_matches(model, preprocessing)
    spec = [image_spec(preprocessing)]
    function = tf.function(
        _Endpoints(float32_copy(model), preprocessing).classify, input_signature=spec
    )
    tf2onnx.convert.from_function(
        function, input_signature=spec, opset=opset, output_path=os.fspath(path)
    )
    return path


def float32_copy(model):
    """``model`` itself if it computes in float32, else a float32 twin.

    A mixed-precision model keeps float32 weights but computes in 16 bits;
    LiteRT's builtin kernels are float32 and ONNX Runtime has no bfloat16
    Conv, so both files hold this twin (same config with every dtype policy
    set to float32, same weights).
    """
    if not computes_in_16_bits(model):
        return model
    config = json.loads(model.to_json())
    _set_float32_policies(config)
    twin = keras.models.model_from_json(json.dumps(config))
    twin.set_weights(model.get_weights())
    return twin


def _set_float32_policies(node):
    """Set every dtype policy in a (nested) model config to float32."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy":
            node["config"]["name"] = "float32"
        children = node.values()
    else:
        children = node if isinstance(node, list) else ()
    for child in children:
        _set_float32_policies(child)


def computes_in_16_bits(model):
    return any(layer.compute_dtype in _16_BIT for layer in model.layers)


def _least_precise_compute_dtype(model):
    """The floating compute dtype of ``model``'s layers with the largest eps."""
    dtypes = {layer.compute_dtype for layer in model.layers} & {"float64", "float32", *_16_BIT}
    return max(dtypes or {"float32"}, key=lambda name: ml_dtypes.finfo(name).eps)


def default_tolerance(model):
    """The verification tolerance for ``model``'s compute precision.

    ``max(DEFAULT_TOLERANCE, ROUNDINGS_ALLOWED · eps)``, eps the machine
    epsilon of the model's least precise compute dtype.  A model computing
    in float16 (eps 2⁻¹⁰) or bfloat16 (eps 2⁻⁷) rounds every layer's output
    to that dtype, and a runtime that orders or fuses the float32 work inside
    a layer differently can land on the neighbouring value: a relative
    difference of one eps per rounding, carried on through the later layers.
    On the small GN classifier of tests/test_export.py the SavedModel
    differs from Keras by up to 1.3 eps; 8 roundings' worth leaves room
    for deeper networks (7.8e-3 for float16, 6.3e-2 for bfloat16).  float32
    (8 eps ≈ 1e-6) keeps the 1e-4 floor, which reordered sums stay inside.
    ONNX and LiteRT files hold a float32 twin and are checked at the twin's.
    """
    eps = float(ml_dtypes.finfo(_least_precise_compute_dtype(model)).eps)
    return max(DEFAULT_TOLERANCE, ROUNDINGS_ALLOWED * eps)


@portable.portable_ops()  # never the compiled kernels in an export
def export_tflite(model, path, preprocessing):
    """Write the classifier as LiteRT (float32 images → logits, probabilities).

    The float32 form of the model (see :func:`float32_copy`) is staged as a
    SavedModel holding ``serving_default`` alone and converted from there
    (converting the traced function directly gave NaNs with TF 2.20).
    Only TFLite builtin ops are allowed, so the file runs on the plain
    interpreter without the Flex (TensorFlow) delegate.
    """
    preprocessing = load.check_preprocessing(preprocessing, where="export_tflite")
    check_model_matches(model, preprocessing)
    twin = float32_copy(model)
    archive = keras.export.ExportArchive()
    archive.track(twin)
    archive.add_endpoint(
        SERVING_SIGNATURE, _Endpoints(twin, preprocessing).classify, [image_spec(preprocessing)]
    )
    with tempfile.TemporaryDirectory() as staging:
        archive.write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            staging, signature_keys=[SERVING_SIGNATURE]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
    return path


def check_batch(preprocessing, batch_size=3, seed=CHECK_BATCH_SEED):
    """A fixed uint8 image batch on which every export is verified."""
    height, width = preprocessing["image_size"]
    shape = (batch_size, height, width, preprocessing["channels"])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def keras_reference(model, preprocessing, images):
    """What every artefact must reproduce, computed with Keras and NumPy."""
    inputs = preprocessing_lib.normalize(images, preprocessing["mean"], preprocessing["std"])
    outputs = np.asarray(model(inputs, training=False), np.float64)
    if transfer.find_head(model)[2]:
        probabilities = outputs
        logits = np.log(np.maximum(outputs, 1e-30))
    else:
        logits = outputs
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
    features = transfer.feature_model(model)(inputs, training=False)
    features = {name: np.asarray(value, np.float64) for name, value in features.items()}
    return {"logits": logits, "probabilities": probabilities}, features


def check_outputs(artefact, got, want):
    """``ExportMismatchError`` unless ``got`` has every output of ``want`` in its shape."""
    for name, expected in want.items():
        if name not in got:
            raise ExportMismatchError(
                f"{artefact}: output {name!r} is missing (has {sorted(got)})."
            )
        if np.shape(got[name]) != np.shape(expected):
            raise ExportMismatchError(
                f"{artefact}: output {name!r} has shape {np.shape(got[name])}, "
                f"Keras gives {np.shape(expected)}."
            )


def compare(artefact, got, want, tolerance=DEFAULT_TOLERANCE):
    """Max |got − want| per output; raise ExportMismatchError beyond tolerance."""
    check_outputs(artefact, got, want)
    report = {}
    for name, expected in want.items():
        actual = np.asarray(got[name], np.float64)
        error = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
        allowed = tolerance * max(1.0, float(np.max(np.abs(expected))))
        if not error <= allowed:
            raise ExportMismatchError(
                f"{artefact}: output {name!r} differs from Keras by {error:.3g} "
                f"(allowed {allowed:.3g})."
            )
        report[name] = error
    return report


def verify_saved_model(export_dir, model, preprocessing, images=None, tolerance=None):
    """Run every signature of the SavedModel on a fixed batch vs. Keras."""
    images = check_batch(preprocessing) if images is None else images
    tolerance = default_tolerance(model) if tolerance is None else tolerance
    classes, features = keras_reference(model, preprocessing, images)
    loaded = tf.saved_model.load(os.fspath(export_dir))
    as_float = tf.constant(images, tf.float32)
    runs = {
        SERVING_SIGNATURE: (as_float, classes),
        UINT8_SIGNATURE: (tf.constant(images, tf.uint8), classes),
        FEATURES_SIGNATURE: (as_float, features),
    }
    report = {}
    for signature, (batch, want) in runs.items():
        got = {k: v.numpy() for k, v in loaded.signatures[signature](images=batch).items()}
        report[signature] = compare(f"{export_dir} [{signature}]", got, want, tolerance)
    return report


def verify_onnx(path, model, preprocessing, images=None, tolerance=None):
    """Run the ONNX file with ONNX Runtime on a fixed batch vs. Keras
    (vs. the float32 twin of a mixed-precision model, which is what was written)."""
    import onnxruntime

    images, classes, tolerance = _float32_reference(model, preprocessing, images, tolerance)
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {INPUT_NAME: images.astype(np.float32)})
    return compare(os.fspath(path), dict(zip(names, values)), classes, tolerance)


def verify_tflite(path, model, preprocessing, images=None, tolerance=None):
    """Run the .tflite file with the LiteRT interpreter on a fixed batch vs. Keras
    (vs. the float32 twin of a mixed-precision model, which is what was written)."""
    from ai_edge_litert.interpreter import Interpreter

    images, classes, tolerance = _float32_reference(model, preprocessing, images, tolerance)
    runner = Interpreter(model_path=os.fspath(path)).get_signature_runner(SERVING_SIGNATURE)
    got = runner(**{INPUT_NAME: images.astype(np.float32)})
    return compare(os.fspath(path), got, classes, tolerance)


def _float32_reference(model, preprocessing, images, tolerance):
    """``(images, classes, tolerance)`` to check an export of ``float32_copy(model)``.

    The twin is what the file holds, so it is the reference, at its own
    (float32) default tolerance: a mismatch of the export itself is not
    hidden inside a 16-bit model's allowance.
    """
    images = check_batch(preprocessing) if images is None else images
    twin = float32_copy(model)
    tolerance = default_tolerance(twin) if tolerance is None else tolerance
    classes, _ = keras_reference(twin, preprocessing, images)
    return images, classes, tolerance
