"""The ``GroupNormalization`` Keras layer: weights, validation, config.

The math lives in :func:`gn_keras.functional.group_norm`; this module owns
what makes it a layer: the per-channel γ and β (float32, or float64 under a
float64 policy), the dtypes in and out (no input autocast; the output in
the compute dtype), argument checks at construction and build time, mask
propagation, and a ``get_config`` that round-trips every argument.
"""

import keras

from gn_keras import _checks
from gn_keras.functional import activation_name, normalize


@keras.saving.register_keras_serializable(package="gn_keras")
class GroupNormalization(keras.layers.Layer):
    """Group Normalization (Wu & He, ECCV 2018), §3.

    Channels are split into groups; each group of each sample is normalized
    with its own mean and variance, taken over the group's channels and all
    spatial (or temporal) axes; then a per-channel γ, β is applied. The
    result does not depend on the batch size.

    Args:
      groups: number of groups G (the paper's default is 32). ``groups=1``
        is Layer Norm over (C, H, W); ``groups=-1`` is Instance Norm.
      group_size: channels per group (the paper's Table 3, bottom half;
        Detectron's DIM_PER_GP). When given it decides the group count,
        which may then differ from layer to layer; an explicitly given
        ``groups`` must agree with it.
      axis: the channel axis: ``-1`` for channels_last, ``1`` for
        channels_first. Every other non-batch axis is normalized over, so
        video ``(N, T, H, W, C)`` gets statistics over (T, H, W) as in the
        paper's Kinetics experiments (§4.3).
      epsilon: added to the variance. The default 1e-5 is the paper's;
        ``keras.layers.GroupNormalization`` defaults to 1e-3.
      center, scale: whether to learn β and γ.
      activation: ``None``, ``"relu"`` or ``"silu"`` (``"swish"`` is
        accepted and stored as ``"silu"``): an activation on the output.  On
        TensorFlow's CPU kernels it is fused into the normalization's own
        passes, forward and backward, so GN + ReLU or GN + SiLU (the pair
        of diffusion models' VAEs and UNets) costs about what GN costs.
      beta_initializer, gamma_initializer, beta_regularizer,
      gamma_regularizer, beta_constraint, gamma_constraint: as in Keras.

    Inputs are never narrowed (no autocast: a float32 input under
    ``mixed_float16`` is not rounded to float16 first); narrower ones are
    widened to the compute dtype, which is exact.  Statistics are
    float32 for 16-bit and float32 inputs and float64 for float64 ones; the
    output has the policy's compute dtype.  γ/β are float32 under every
    policy except ``float64``, where they are float64.  A Keras mask on a
    sequence leaves padded steps out of the statistics.

    Example:
      >>> y = GroupNormalization(groups=32)(keras.Input((56, 56, 256)))
    """

    def __init__(
        self,
        groups=_checks.DEFAULT_GROUPS,
        group_size=None,
        axis=-1,
        epsilon=1e-5,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        activation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        where = f"GroupNormalization(name={self.name!r})"
        _checks.check_groups_arguments(groups, group_size, where)
        _checks.check_epsilon(epsilon, where)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"{where}: argument `axis` must be an integer, got axis={axis!r}.")
        self.groups = groups
        self.group_size = group_size
        self.axis = axis
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        # One stored name per activation ("swish" is kept as "silu").
        self.activation = activation_name(activation, where)
        self.supports_masking = True
        # Keras would round float inputs to the compute dtype before call():
        # a float32 input above 65504 would become inf under mixed_float16.
        # The statistics are float32 anyway; the output is cast in call().
        self.autocast = False
        self._where = where

    @property
    def resolved_groups(self):
        """The group count actually used, known once the layer is built."""
        return getattr(self, "_resolved_groups", None)

    def build(self, input_shape):
        axis = _checks.normalize_axis(self.axis, tuple(input_shape), self._where)
        channels = _checks.channel_count(tuple(input_shape), axis, self._where, self.axis)
        self._resolved_groups = _checks.resolve_groups(
            channels, self.groups, self.group_size, self._where
        )
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={axis: channels})
        self.gamma = self._add_affine(
            "gamma",
            channels,
            self.scale,
            self.gamma_initializer,
            self.gamma_regularizer,
            self.gamma_constraint,
        )
        self.beta = self._add_affine(
            "beta",
            channels,
            self.center,
            self.beta_initializer,
            self.beta_regularizer,
            self.beta_constraint,
        )
        super().build(input_shape)

    def _add_affine(self, name, channels, enabled, initializer, regularizer, constraint):
        if not enabled:
            return None
        # γ/β enter the float32 statistics, not the 16-bit tensor: float32
        # even under a plain float16/bfloat16 policy, whose 16-bit γ near 1
        # could not take updates below 1e-3; float64 under float64.
        # autocast=False keeps them so inside a mixed policy's autocast scope.
        return self.add_weight(
            shape=(channels,),
            name=name,
            initializer=initializer,
            regularizer=regularizer,
            constraint=constraint,
            dtype=_affine_dtype(self.variable_dtype),
            autocast=False,
        )

    def call(self, inputs, mask=None):
        inputs = keras.ops.convert_to_tensor(inputs)
        if _widens(inputs.dtype, self.compute_dtype):
            inputs = keras.ops.cast(inputs, self.compute_dtype)
        outputs = normalize(
            inputs,
            self.gamma,
            self.beta,
            self._resolved_groups,
            None,
            self.axis,
            self.epsilon,
            mask,
            self._where,
            self.activation,
        )
        if keras.backend.standardize_dtype(outputs.dtype) != self.compute_dtype:
            outputs = keras.ops.cast(outputs, self.compute_dtype)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "groups": None if self.groups is None else int(self.groups),
                "group_size": self.group_size,
                "axis": self.axis,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": keras.constraints.serialize(self.beta_constraint),
                "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
                "activation": self.activation,
            }
        )
        if self.group_size is not None and _checks.groups_is_default(self.groups):
            config["groups"] = None  # group_size decided; don't freeze a fake 32
        return config


def _widens(dtype, compute_dtype):
    """Whether casting ``dtype`` to ``compute_dtype`` is exact and loses nothing.

    Then a float16 input under a float32 policy yields a float32 result that
    was never rounded to float16; narrowing casts wait for the output.
    """
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == compute_dtype or not keras.backend.is_float_dtype(compute_dtype):
        return False
    return keras.backend.result_type(dtype, compute_dtype) == compute_dtype


def _affine_dtype(variable_dtype):
    """The dtype of γ/β under a policy whose variables are ``variable_dtype``."""
    return "float64" if keras.backend.standardize_dtype(variable_dtype) == "float64" else "float32"
