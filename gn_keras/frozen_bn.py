"""The paper's BN*: batch normalization frozen into a fixed affine layer.

Detection and video fine-tuning commonly replace every BN of a pre-trained
backbone by ``y = γ·(x − μ)/σ + β`` with μ, σ taken from BN's moving
statistics and nothing updated any more (Wu & He 2018, §4.2: "BN* ... in fact
performs no normalization"; following Detectron's frozen BN).  This module
owns that layer; :func:`gn_keras.convert.freeze_batchnorm` builds it from a
trained ``BatchNormalization``.
"""

import keras
from keras import ops

from gn_keras import _checks


@keras.saving.register_keras_serializable(package="gn_keras")
class FrozenBatchNormalization(keras.layers.Layer):
    """A BatchNormalization whose γ, β, μ, σ² are constants (BN*, §4.2).

    The output is what ``keras.layers.BatchNormalization`` gives at
    inference, in training too: no batch statistics are computed and no
    variable is trainable, so an optimizer never touches the layer. A fresh
    layer holds γ=1, β=0, μ=0, σ²=1 (an identity up to ``epsilon``); the
    values normally come from a trained BN via ``set_weights`` in the BN
    order ``[gamma, beta, moving_mean, moving_variance]``.

    Args:
      axis: the channel axis (``-1`` channels_last, ``1`` channels_first).
      epsilon: added to σ² as in the BN it replaces (1e-5 is the paper's).
      zero_init: start γ at 0 instead of 1 (for a residual block's last
        normalization; with frozen weights the block then stays an identity).
    """

    def __init__(self, axis=-1, epsilon=1e-5, zero_init=False, **kwargs):
        super().__init__(**kwargs)
        where = f"FrozenBatchNormalization(name={self.name!r})"
        _checks.check_int(axis, "`axis`", where=where)
        _checks.check_epsilon(epsilon, where)
        self.axis = axis
        self.epsilon = float(epsilon)
        self.zero_init = bool(zero_init)
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(
                f"FrozenBatchNormalization(name={self.name!r}): axis={self.axis} "
                f"is not a channel axis of input shape {tuple(input_shape)}."
            )
        self._channel_axis = self.axis % rank
        channels = input_shape[self._channel_axis]
        gamma_init = "zeros" if self.zero_init else "ones"
        self.gamma = self._frozen("gamma", channels, gamma_init)
        self.beta = self._frozen("beta", channels, "zeros")
        self.moving_mean = self._frozen("moving_mean", channels, "zeros")
        self.moving_variance = self._frozen("moving_variance", channels, "ones")

    def _frozen(self, name, channels, initializer):
        return self.add_weight(
            shape=(channels,),
            name=name,
            initializer=initializer,
            trainable=False,
            autocast=False,
        )

    def call(self, inputs):
        # Same op and float32 upcast as BatchNormalization's inference
        # branch, so a converted model reproduces the BN model bit for bit.
        compute = keras.backend.result_type(inputs.dtype, "float32")
        outputs = ops.batch_normalization(
            ops.cast(inputs, compute),
            mean=ops.cast(self.moving_mean, compute),
            variance=ops.cast(self.moving_variance, compute),
            axis=self._channel_axis,
            offset=ops.cast(self.beta, compute),
            scale=ops.cast(self.gamma, compute),
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon, "zero_init": self.zero_init})
        return config
