"""gn_keras.preprocessing.normalize: the one (pixels − mean) / std of every pipeline and export."""

import numpy as np
import tensorflow as tf

from gn_keras import preprocessing


def test_numpy_and_tensor_inputs_give_the_float64_reference_in_float32(rng):
    pixels = rng.integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    mean, std = rng.uniform(50, 200, 3), rng.uniform(20, 80, 3)
    reference = (pixels.astype(np.float64) - mean) / std
    from_numpy = preprocessing.normalize(pixels, mean, std)
    from_tensor = preprocessing.normalize(tf.constant(pixels), list(mean), tuple(std))
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert from_tensor.dtype == tf.float32
    np.testing.assert_allclose(from_numpy, reference, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(from_tensor.numpy(), from_numpy)  # the same float32 ops


def test_imagenet_constants_are_torchvisions_on_the_0_255_scale():
    np.testing.assert_allclose(preprocessing.IMAGENET_MEAN, np.array([0.485, 0.456, 0.406]) * 255)
    np.testing.assert_allclose(preprocessing.IMAGENET_STD, np.array([0.229, 0.224, 0.225]) * 255)
