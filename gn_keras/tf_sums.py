"""The per-channel and per-group sums of the TensorFlow fast path.

:mod:`gn_keras.tf_fast` views a tensor as ``(N, A, G, C/G, B)`` and needs,
for its statistics and its closed-form gradient, sums over ``A`` and ``B``
per (sample, channel).  This module owns how they are taken:

* as products with a vector of ones: TensorFlow and XLA run them on their
  matmul kernels, which on CPU are several times faster than XLA's
  reduction of a strided axis (docs/performance.md);
* in chunks of at most ``CHUNK`` elements (:func:`gn_keras.functional.chunking`
  cuts them, as for the keras.ops path), whose float32 sums are then
  added in float64, so that the rounding error of a group's mean and
  variance does not grow with the group's size.  A single float32 sum over
  the 16 M values of one group of a diffusion VAE's 1024-px feature map
  drifts by 1e-3 of the mean; in chunks it stays at float32's resolution.

Sums over at most ``CHUNK`` elements (every ResNet stage shape) are one
product, as before chunking existed.
"""

import tensorflow as tf

from gn_keras.functional import CHUNK, chunking


def channel_sum(t5):
    """Per-(sample, channel) sums over every non-channel axis: (N, 1, G, C/G, 1)."""
    n, before, groups, width, after = (_size(t5, i) for i in range(5))
    sums = tf.reshape(t5, [n, before, groups * width * after])
    if not _is_one(before):
        sums = _sum_middle_axis(sums)
    if not _is_one(after):
        sums = _sum_last_axis(tf.reshape(sums, [n, groups * width, after]))
    return tf.reshape(sums, [n, 1, groups, width, 1])


def group_sum(t5):
    """Per-(sample, group) sums, through the per-channel sums: (N, 1, G, 1, 1)."""
    return tf.reduce_sum(channel_sum(t5), axis=3, keepdims=True)


def _sum_middle_axis(t3):
    """Sums of ``t3`` (n, L, k) over its axis 1: (n, 1, k).

    With L = size·count, the float32 product adds, for each of the
    ``count`` offsets, the ``size`` elements that share it (a strided
    chunk): the ones stay a short vector and the long axis is the matmul's
    output width, the shape its kernels run fastest.
    """
    n, length, inner = (_size(t3, i) for i in range(3))
    count, size, padding = _chunking(length)
    # The ones carry the batch dimension: broadcast inside the matmul, XLA
    # would fuse them into a slow loop instead of calling its matmul kernel.
    if _is_one(count):
        return tf.matmul(tf.ones([n, 1, length], t3.dtype), t3)
    if not _is_zero(padding):
        t3 = tf.pad(t3, [[0, 0], [0, padding], [0, 0]])
    pieces = tf.reshape(t3, [n, size, count * inner])
    partial = tf.matmul(tf.ones([n, 1, size], t3.dtype), pieces)
    return _add_chunks(tf.reshape(partial, [n, count, inner]), axis=1)


def _sum_last_axis(t3):
    """Sums of ``t3`` (n, k, L) over its axis 2, in contiguous chunks: (n, k, 1)."""
    n, outer, length = (_size(t3, i) for i in range(3))
    count, size, padding = _chunking(length)
    if _is_one(count):
        return tf.matmul(t3, tf.ones([n, length, 1], t3.dtype))
    if not _is_zero(padding):
        t3 = tf.pad(t3, [[0, 0], [0, 0], [0, padding]])
    pieces = tf.reshape(t3, [n, outer * count, size])
    partial = tf.matmul(pieces, tf.ones([n, size, 1], t3.dtype))
    return _add_chunks(tf.reshape(partial, [n, outer, count]), axis=2)


def _add_chunks(partial, axis):
    """The chunks' float32 sums added in float64 (a small tensor: L/CHUNK per channel)."""
    wide = tf.reduce_sum(tf.cast(partial, tf.float64), axis=axis, keepdims=True)
    return tf.cast(wide, partial.dtype)


def _chunking(length):
    """:func:`gn_keras.functional.chunking` for a static ``length``.

    An unknown length (a tensor) gets tensors, and always takes the padded
    path, padding by less than the number of chunks.
    """
    if isinstance(length, int):
        return chunking(length)
    chunks = tf.maximum((length + CHUNK - 1) // CHUNK, 1)  # an empty axis is one chunk
    size = (length + chunks - 1) // chunks
    return chunks, size, chunks * size - length


def _size(t, axis):
    static = t.shape[axis]
    return static if static is not None else tf.shape(t)[axis]


def _is_one(size):
    return isinstance(size, int) and size == 1


def _is_zero(size):
    return isinstance(size, int) and size == 0
