"""What this process's TensorFlow can run fast: one cached probe.

TensorFlow's CPU kernels lean on oneDNN, which TensorFlow turns on by
default only on x86 CPUs with AVX-512-class features. Without it (AVX2-only
x86, ARM, or ``TF_ENABLE_ONEDNN_OPTS=0``) NCHW convolutions and poolings do
not run at all, and ``Conv3D`` falls back to kernels about 9× slower than
oneDNN's for an I3D step (``bench`` note in docs/performance.md), while 2D
convolutions stay within 2×. Layers and model builders ask here instead of
each probing on its own.
"""

import functools

import keras


@functools.cache
def tf_cpu_without_onednn():
    """True when the TensorFlow backend runs on a CPU without oneDNN.

    Found by running an NCHW convolution and pooling once on tiny inputs
    (only oneDNN's CPU kernels take NCHW); False on other backends and
    wherever a GPU is visible.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return False
    with tf.init_scope():  # eager, even while a tf.function is being traced
        images = tf.random.normal((1, 2, 4, 4))
        kernel = tf.random.normal((3, 3, 2, 2))
        try:
            y = tf.nn.conv2d(images, kernel, 1, "SAME", data_format="NCHW")
            tf.nn.max_pool2d(y, 2, 2, "VALID", data_format="NCHW")
            tf.nn.avg_pool2d(y, 2, 2, "VALID", data_format="NCHW")
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
            return True
    return False
