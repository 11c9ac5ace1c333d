"""Where a channels_first zoo model computes: NCHW natively, or NHWC inside.

TensorFlow's CPU kernels run NCHW convolutions and poolings only when
oneDNN is on, and TensorFlow turns oneDNN on by default only on x86 CPUs
with AVX-512-class features; elsewhere (AVX2-only x86, ARM, or
``TF_ENABLE_ONEDNN_OPTS=0``) a channels_first ``Conv2D`` fails with
``UnimplementedError``. A GPU runs both layouts, and NCHW is its native
one for cuDNN.

So ``models.build(..., data_format="channels_first")`` asks this module
once, when the model is built: if this process can run NCHW convolutions
the model is NCHW throughout; if not, it keeps its NCHW interface (input,
feature-map output, the ``C<k>`` endpoints) and computes NHWC inside,
with a transpose where the interface meets the body. Weights are the same
in both (Keras keeps conv kernels as HWIO and flattens channels_last in
either layout), so they move by layer name between the two and between
channels_first and channels_last models. The choice is part of the built
graph: a model saved on a CPU without oneDNN reloads with its NHWC body.
"""

import keras

from gn_keras import _platform

# Permutations of the non-batch axes (Keras ``Permute`` is 1-based).
_NCHW_TO_NHWC = {2: (2, 3, 1), 3: (2, 3, 4, 1)}
_NHWC_TO_NCHW = {2: (3, 1, 2), 3: (4, 1, 2, 3)}


def runs_channels_first_natively():
    """Whether this process can run NCHW convolutions and poolings."""
    return not _platform.tf_cpu_without_onednn()


def compute_format(data_format):
    """The layout a model asked for in ``data_format`` computes in here."""
    if data_format == "channels_first" and not runs_channels_first_natively():
        return "channels_last"
    return data_format


def convert(x, rank, source, target, name):
    """``x`` moved from layout ``source`` to ``target`` (unchanged if equal)."""
    if source == target:
        return x
    order = _NCHW_TO_NHWC if source == "channels_first" else _NHWC_TO_NCHW
    return keras.layers.Permute(order[rank], name=name)(x)
