"""A SavedModel of a video classifier that takes uint8 clips.

Signatures, both with a dynamic batch and ``(pixels − mean) / std`` inside:

* ``serving_default``: uint8 ``clips`` ``(N, T, H, W, 3)`` → float32
  ``logits`` and ``probabilities`` (softmax);
* ``views``: uint8 ``views`` ``(N, V, T, H, W, 3)``, e.g. the 10 clips (or
  30 clip-crops) of a video → ``probabilities``, the mean softmax over the
  views (the paper's 10-clip testing, §4.3).

The graphs hold standard TensorFlow ops only (traced under
``gn_keras.portable_ops``); a mixed-precision model computes in its 16-bit
dtype inside and returns float32.  ``assets.extra`` carries
``preprocessing.json`` and the Keras config, as for image exports, and the
SavedModel is reloaded and compared with the Keras model after writing.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from gn_keras import export as image_export
from gn_keras import load, portable
from gn_keras import preprocessing as preprocessing_lib
from gn_keras.train.video import clips

SERVING_SIGNATURE = "serving_default"
VIEWS_SIGNATURE = "views"
CHECK_SEED = 20180611  # the paper's v3 date: any fixed seed will do


def clip_shape(preprocessing):
    """``(T, H, W, C)`` of the model's clips, from ``preprocessing``."""
    frames, height, width = preprocessing["clip_shape"]
    return (frames, height, width, preprocessing["channels"])


def _check_model(model, preprocessing):
    expected = clip_shape(preprocessing)
    got = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
    if got != expected:
        raise ValueError(
            f"model {model.name!r} takes clips {got} but preprocessing gives {expected}."
        )


class _Endpoints:
    """The Python functions behind the two signatures (traced by TensorFlow).

    The model is traced once, in :meth:`_logits`, a function of uint8 clips
    with a fixed input signature that both signatures call: tracing it in
    each cost a second graph building per export (as in
    :class:`gn_keras.export._Endpoints`).
    """

    def __init__(self, model, preprocessing):
        self.model = model
        self.mean = np.asarray(preprocessing["mean"], np.float32)
        self.std = np.asarray(preprocessing["std"], np.float32)
        self.shape = clip_shape(preprocessing)
        self.logits = tf.function(
            self._logits, input_signature=[tf.TensorSpec((None, *self.shape), tf.uint8)]
        )

    def _logits(self, clips_uint8):
        inputs = preprocessing_lib.normalize(clips_uint8, self.mean, self.std)
        return tf.cast(self.model(inputs, training=False), tf.float32)

    def classify(self, clips_uint8):
        logits = self.logits(clips_uint8)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    def views(self, views_uint8):
        batch, count = tf.shape(views_uint8)[0], tf.shape(views_uint8)[1]
        logits = self.logits(tf.reshape(views_uint8, (-1, *self.shape)))
        logits = tf.reshape(logits, (batch, count, -1))
        return {"probabilities": clips.average_view_probabilities(logits)}


@portable.portable_ops()  # never the compiled GN kernels in an export
def export_video_saved_model(model, export_dir, preprocessing, verify=True, tolerance=None):
    """Write ``model`` (clips → logits) as a SavedModel; return the verification report."""
    _check_model(model, preprocessing)
    endpoints = _Endpoints(model, preprocessing)
    shape = clip_shape(preprocessing)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_SIGNATURE,
        endpoints.classify,
        [tf.TensorSpec((None, *shape), tf.uint8, name="clips")],
    )
    archive.add_endpoint(
        VIEWS_SIGNATURE,
        endpoints.views,
        [tf.TensorSpec((None, None, *shape), tf.uint8, name="views")],
    )
    archive.add_variable_collection(load.VARIABLES_COLLECTION, model.weights)
    archive.write_out(os.fspath(export_dir), verbose=False)
    image_export.write_extras(export_dir, preprocessing, model)
    if not verify:
        return {}
    return verify_video_saved_model(export_dir, model, preprocessing, tolerance=tolerance)


def check_clips(preprocessing, batch_size=2, seed=CHECK_SEED):
    """A fixed uint8 batch of clips to verify exports on."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch_size, *clip_shape(preprocessing)), dtype=np.uint8)


def _keras_outputs(model, preprocessing, batch):
    inputs = preprocessing_lib.normalize(batch, preprocessing["mean"], preprocessing["std"])
    logits = np.asarray(model(inputs, training=False), np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return {"logits": logits, "probabilities": shifted / shifted.sum(-1, keepdims=True)}


def rounding_tolerance(model, preprocessing, batch, want):
    """The allowed relative difference of an export from ``model`` on ``batch``.

    ``gn_keras.export.default_tolerance`` (8 roundings of the compute
    dtype), or for a 16-bit model twice its own distance from its float32
    twin, if larger: a deep float16 network (ResNet-50 I3D) drifts from
    float32 by more than 8 roundings, and a SavedModel whose graph orders the
    same 16-bit work differently lands as far from Keras as both are from
    float32.
    """
    tolerance = image_export.default_tolerance(model)
    if image_export.computes_in_16_bits(model):
        twin = _keras_outputs(image_export.float32_copy(model), preprocessing, batch)["logits"]
        gap = np.abs(want["logits"] - twin).max() / max(1.0, np.abs(twin).max())
        tolerance = max(tolerance, 2.0 * float(gap))
    return tolerance


def verify_video_saved_model(export_dir, model, preprocessing, batch=None, tolerance=None):
    """Reload the SavedModel and compare ``serving_default`` with Keras on ``batch``."""
    batch = check_clips(preprocessing) if batch is None else batch
    want = _keras_outputs(model, preprocessing, batch)
    if tolerance is None:
        tolerance = rounding_tolerance(model, preprocessing, batch, want)
    loaded = tf.saved_model.load(os.fspath(export_dir))
    got = loaded.signatures[SERVING_SIGNATURE](clips=tf.constant(batch))
    got = {name: value.numpy() for name, value in got.items()}
    return image_export.compare(f"{export_dir} [{SERVING_SIGNATURE}]", got, want, tolerance)
