"""How pixels reach every model here: one normalization and ImageNet's constants.

Images and clips go to a model as ``(pixels − mean) / std`` per channel,
with pixels on the 0–255 scale; ``preprocessing.json`` beside each run and
export stores that ``mean`` and ``std``.  The training input pipelines, the
serving signatures and the NumPy references that verify exports all call
:func:`normalize`, so they cannot drift apart.
"""

import numpy as np
import tensorflow as tf

# ImageNet's RGB mean/std on the 0–255 scale: tf-models-official's
# classification parser's MEAN_RGB/STDDEV_RGB, torchvision's 0.485… × 255.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize(pixels, mean, std):
    """``(pixels − mean) / std`` over the last axis, in float32.

    A NumPy array gives a NumPy array (the references exports are checked
    against); anything else (a tensor, in a ``tf.data`` map or a serving
    function) gives a tensor.
    """
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if isinstance(pixels, np.ndarray):
        return (pixels.astype(np.float32) - mean) / std
    return (tf.cast(pixels, tf.float32) - mean) / std
