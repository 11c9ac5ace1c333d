"""Building pieces every model family shares.

:class:`Builder` holds what a network needs to place one
convolution-normalization-activation unit: the norm factory (which also picks
the conv class), the rank (2 for images, 3 for video), the data format and
the zero-init switch. It also owns the paper's initialization (§4.1): He
(fan_out) normal for convolutions ("the method of [19]"), γ=1 except for the
last normalization of each residual block, and the classifier drawn from
N(0, 0.01²).

Padding follows the torch-style reference code the paper trained with: a
k×k conv with stride 1 is padded "same"; a strided one is padded k//2 on
every side and then run "valid", so feature maps line up with torchvision's
and weights port between them. Video convs pad time by repeating end frames
(:class:`gn_keras.temporal_padding.TemporalReplicatePadding`) unless the
builder is told ``temporal_padding="zeros"``.

Every layer gets an explicit name derived from its unit's name (``<unit>_conv``,
``<unit>_norm``, ``<unit>_relu``, ``<unit>_pad``), identical across norms and
across 2D/3D, so weights map by name. Stage outputs are marked by
``Identity`` layers named ``C2``, ``C3``, ... (see :mod:`models.endpoints`).
"""

import keras

from gn_keras.models import layout
from gn_keras.temporal_padding import TemporalReplicatePadding, VideoMaxPooling3D

CLASSIFIER_STDDEV = 0.01
DATA_FORMATS = ("channels_last", "channels_first")
TEMPORAL_PADDINGS = ("replicate", "zeros")
POOLINGS = ("avg", "max", None)


def he_normal_fan_out():
    """Kaiming He's init in fan_out mode, as the paper's §4.1 uses."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def classifier_initializer():
    return keras.initializers.RandomNormal(0.0, CLASSIFIER_STDDEV)


class Builder:
    """Places conv/norm/activation units for one network.

    ``data_format`` is the model's interface (its input, feature-map output
    and endpoints); the layers are placed in :attr:`data_format`, the
    layout it computes in here (:mod:`models.layout`), which differs only
    for channels_first on a CPU that cannot run NCHW convolutions.
    """

    def __init__(self, norm, rank, data_format, zero_init_residual, temporal_padding="replicate"):
        self.norm = norm
        self.rank = rank
        self.interface_format = data_format
        self.data_format = layout.compute_format(data_format)
        self.zero_init_residual = zero_init_residual
        self.temporal_padding = temporal_padding
        self.channel_axis = -1 if self.data_format == "channels_last" else 1

    def kernel(self, spatial, temporal=1):
        """A kernel or stride tuple: ``spatial`` in H, W and ``temporal`` in T."""
        spatial = (spatial, spatial)
        return spatial if self.rank == 2 else (temporal,) + spatial

    def _pad(self, x, kernel, strides, name):
        """Explicit torch-style padding; returns (x, the conv's padding mode).

        A conv needs explicit padding when it is strided in space (so the
        padding is symmetric, not TF's "same") or has a temporal kernel
        (so time is padded by frame repetition, not zeros).
        """
        temporal_k = kernel[0] if self.rank == 3 else 1
        spatial_k = kernel[-2:]
        strided = any(s > 1 for s in strides[-2:])
        if not strided and temporal_k == 1:
            return x, "same"
        zero_frames = temporal_k // 2
        if zero_frames and self.temporal_padding == "replicate":
            x = TemporalReplicatePadding(zero_frames, self.data_format, name=f"{name}_tpad")(x)
            zero_frames = 0
        spatial = tuple((k // 2, k // 2) for k in spatial_k)
        if zero_frames or any(k > 1 for k in spatial_k):
            if self.rank == 2:
                x = keras.layers.ZeroPadding2D(spatial, self.data_format, name=f"{name}_pad")(x)
            else:
                padding = ((zero_frames, zero_frames),) + spatial
                x = keras.layers.ZeroPadding3D(padding, self.data_format, name=f"{name}_pad")(x)
        return x, "valid"

    def conv(self, x, filters, kernel, strides=1, name=None, temporal=1, zero_init=False):
        """A He-initialized conv of this builder's rank and norm kind.

        ``kernel`` and ``strides`` are spatial (H, W); a video conv also
        spans ``temporal`` frames, always with temporal stride 1.
        """
        kernel, strides = self.kernel(kernel, temporal), self.kernel(strides)
        x, padding = self._pad(x, kernel, strides, name)
        layer = self.norm.conv(
            self.rank,
            filters,
            kernel,
            zero_init=zero_init,
            strides=strides,
            padding=padding,
            data_format=self.data_format,
            kernel_initializer=he_normal_fan_out(),
            name=f"{name}_conv",
        )
        return layer(x)

    def conv_norm(
        self, x, filters, kernel, strides=1, name=None, temporal=1, relu=True, last_in_block=False
    ):
        """conv → norm (→ ReLU); a block's last unit gets the zero-γ start."""
        zero_init = last_in_block and self.zero_init_residual
        x = self.conv(x, filters, kernel, strides, name, temporal, zero_init)
        x = self.norm(axis=self.channel_axis, zero_init=zero_init, name=f"{name}_norm")(x)
        if relu:
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        return x

    def max_pool(self, x, pool, strides, name):
        """Spatial max pooling, padded torch-style when strided.

        It always follows a ReLU, where zero padding equals torch's -inf.
        """
        pool, strides = self.kernel(pool), self.kernel(strides)
        x, padding = self._pad(x, pool, strides, name)
        pooling = keras.layers.MaxPooling2D if self.rank == 2 else VideoMaxPooling3D
        return pooling(pool, strides, padding, self.data_format, name=name)(x)

    def global_pool(self, x, pooling, name):
        layers = {
            (2, "avg"): keras.layers.GlobalAveragePooling2D,
            (2, "max"): keras.layers.GlobalMaxPooling2D,
            (3, "avg"): keras.layers.GlobalAveragePooling3D,
            (3, "max"): keras.layers.GlobalMaxPooling3D,
        }
        return layers[(self.rank, pooling)](self.data_format, name=name)(x)

    def backbone_output(self, x, pooling):
        """What ``include_top=False`` returns: pooled features or the map."""
        if pooling is None:
            return x
        return self.global_pool(x, pooling, f"{pooling}_pool")

    def classifier(self, x, num_classes, name="logits"):
        """The final fc, from N(0, 0.01²) as in the paper; outputs logits."""
        return keras.layers.Dense(
            num_classes, kernel_initializer=classifier_initializer(), name=name
        )(x)

    def enter(self, inputs):
        """The model's input in the layout the body computes in."""
        return self._convert(inputs, self.interface_format, self.data_format, "to_channels_last")

    def leave(self, outputs):
        """The model's output in its interface layout (feature maps only)."""
        if len(outputs.shape) <= 2:
            return outputs
        return self._convert(outputs, self.data_format, self.interface_format, "to_channels_first")

    def mark_endpoint(self, x, name):
        """Tag a stage output ``name`` so :mod:`models.endpoints` finds it.

        The mark is an ``Identity``; a body computing in another layout than
        the interface marks the interface-layout map (a transpose named
        ``name``) and carries on from a transpose back.
        """
        if self.data_format == self.interface_format:
            return keras.layers.Identity(name=name)(x)
        marked = self._convert(x, self.data_format, self.interface_format, name)
        return self._convert(marked, self.interface_format, self.data_format, f"{name}_back")

    def _convert(self, x, source, target, name):
        return layout.convert(x, self.rank, source, target, name)


def model_input(input_shape, name="input"):
    return keras.Input(shape=tuple(input_shape), name=name)
