"""The normalization family: every method the paper compares, by one string.

``get(name, **options)`` returns a :class:`NormFactory`; calling it,
``factory(axis=-1, zero_init=False, name=...)``, makes a fresh layer. The
models in ``models/`` take any kind through this one door, so swapping BN
for GN (the paper's §4.1 protocol: "we replace BN with the specific
variant") is a string change.

========== ==================================================================
name       layer
========== ==================================================================
bn         ``BatchNormalization``; under MirroredStrategy the statistics are
           per replica, as in the paper ("computed within each GPU").
sync_bn    ``BatchNormalization(synchronized=True)``: statistics over all
           replicas.
frozen_bn  BN* (§4.2): the affine ``γ·(x−μ)/σ+β`` with constant statistics,
           nothing trainable (:class:`~gn_keras.frozen_bn.FrozenBatchNormalization`).
brn        Batch Renormalization (Ioffe 2017) with the paper's r_max=1.5,
           d_max=0.5 (§4.1); r is clipped to [1/r_max, r_max].
gn         our ``GroupNormalization`` (groups or group_size), §3.
ln         GN with one group: Layer Norm over (C, H, W) as in the paper.
in         GN with one channel per group: Instance Norm.
gn+ws      GN after weight-standardized convolutions (the BiT recipe).
wn         no feature normalization; weight-normalized convolutions
           (Salimans & Kingma 2016; the paper's footnote 3).
keras_gn   ``keras.layers.GroupNormalization`` with the paper's ε=1e-5, for
           benchmarking our layer against Keras's.
none       identity (e.g. the classic VGG-16 of Figure 6).
========== ==================================================================

:meth:`NormFactory.normalize_activation` applies a norm and an activation
(ReLU or SiLU; :meth:`NormFactory.normalize_relu` for the ReLU); for the GN
kinds (``gn``, ``ln``, ``in``, ``gn+ws``) it is one layer whose compiled
kernel fuses the activation (``GroupNormalization(activation="relu")`` or
``activation="silu"``).

A kind also decides the convolution it pairs with: :meth:`NormFactory.conv`
builds a plain, weight-standardized or weight-normalized conv, without a bias
when a feature normalization follows (its β makes a bias redundant).

Weight decay: γ and β of every normalization layer, and only they, are
variables named ``gamma`` and ``beta`` (:func:`is_norm_variable`); WN's per
filter gain is named ``gain`` and counts as a conv weight.
"""

import keras

from gn_keras import _checks
from gn_keras.frame_conv3d import Conv3D
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.functional import activation_name
from gn_keras.layer import GroupNormalization
from gn_keras.weight_convs import WNConv2D, WNConv3D, WSConv2D, WSConv3D

# The paper's ε for every normalization (its Figure 3 code uses 1e-5).
EPSILON = 1e-5
# Keras momentum 0.9 is PyTorch's momentum=0.1 and Caffe2's 0.9, the
# setting of the frameworks the paper trained with (Keras's default is 0.99).
BN_MOMENTUM = 0.9
# §4.1: "r_max = 1.5 and d_max = 0.5 work best for ResNet-50". Ioffe clips r
# to [1/r_max, r_max]; Keras leaves r unclipped below unless given r_min.
RENORM_CLIPPING = {"rmin": 1.0 / 1.5, "rmax": 1.5, "dmax": 0.5}
NORM_VARIABLE_NAMES = ("gamma", "beta")

_CONVS = {
    "plain": {2: keras.layers.Conv2D, 3: Conv3D},
    "ws": {2: WSConv2D, 3: WSConv3D},
    "wn": {2: WNConv2D, 3: WNConv3D},
}


def _gamma_initializer(zero_init):
    return "zeros" if zero_init else "ones"


def _batch_norm(factory, axis, zero_init, name, **extra):
    return keras.layers.BatchNormalization(
        axis=axis,
        momentum=factory.momentum,
        epsilon=factory.epsilon,
        gamma_initializer=_gamma_initializer(zero_init),
        name=name,
        **extra,
    )


def _sync_batch_norm(factory, axis, zero_init, name):
    return _batch_norm(factory, axis, zero_init, name, synchronized=True)


def _batch_renorm(factory, axis, zero_init, name):
    return _batch_norm(
        factory,
        axis,
        zero_init,
        name,
        renorm=True,
        renorm_clipping=dict(RENORM_CLIPPING),
        renorm_momentum=factory.momentum,
    )


def _frozen_batch_norm(factory, axis, zero_init, name):
    return FrozenBatchNormalization(
        axis=axis, epsilon=factory.epsilon, zero_init=zero_init, name=name
    )


def _group_norm(factory, axis, zero_init, name, groups=None, group_size=None):
    if groups is None and group_size is None:
        groups, group_size = factory.groups, factory.group_size
    return GroupNormalization(
        groups=groups,
        group_size=group_size,
        axis=axis,
        epsilon=factory.epsilon,
        gamma_initializer=_gamma_initializer(zero_init),
        name=name,
    )


def _layer_norm(factory, axis, zero_init, name):
    return _group_norm(factory, axis, zero_init, name, groups=1)


def _instance_norm(factory, axis, zero_init, name):
    return _group_norm(factory, axis, zero_init, name, groups=-1)


def _keras_group_norm(factory, axis, zero_init, name):
    return keras.layers.GroupNormalization(
        groups=int(factory.groups),
        axis=axis,
        epsilon=factory.epsilon,
        gamma_initializer=_gamma_initializer(zero_init),
        name=name,
    )


def _identity(factory, axis, zero_init, name):
    return keras.layers.Identity(name=name)


# name -> (layer maker, conv style, whether it normalizes features, the
# paper's short name for tables and legends)
_KINDS = {
    "bn": (_batch_norm, "plain", True, "BN"),
    "sync_bn": (_sync_batch_norm, "plain", True, "SyncBN"),
    "frozen_bn": (_frozen_batch_norm, "plain", True, "BN*"),
    "brn": (_batch_renorm, "plain", True, "BRN"),
    "gn": (_group_norm, "plain", True, "GN"),
    "ln": (_layer_norm, "plain", True, "LN"),
    "in": (_instance_norm, "plain", True, "IN"),
    "gn+ws": (_group_norm, "ws", True, "GN+WS"),
    "wn": (_identity, "wn", False, "WN"),
    "keras_gn": (_keras_group_norm, "plain", True, "Keras GN"),
    "none": (_identity, "plain", False, "none"),
}


def available():
    """The normalization names ``get`` accepts."""
    return tuple(_KINDS)


def label(name):
    """The paper's short name of normalization ``name`` (e.g. ``BN*`` for ``frozen_bn``).

    Unknown names are returned unchanged, so a table can show any run.
    """
    return _KINDS[name][3] if name in _KINDS else name


class NormFactory:
    """Makes fresh normalization layers of one kind, and their convolutions.

    Built by :func:`get`; the options (``groups``, ``group_size``,
    ``epsilon``, ``momentum``) are fixed here and shared by every layer the
    factory makes.
    """

    def __init__(self, kind, groups, group_size, epsilon, momentum):
        self.kind = kind
        self.groups = groups
        self.group_size = group_size
        self.epsilon = epsilon
        self.momentum = momentum
        self._make_layer, self._conv_style, self.normalizes_features, _ = _KINDS[kind]

    def __call__(self, axis=-1, zero_init=False, name=None):
        """A new normalization layer over channel ``axis``.

        ``zero_init=True`` starts γ at 0: the paper's init for each residual
        block's last normalization (§4.1, after Goyal et al. 2017). Kinds
        without γ (``wn``, ``none``) return an identity; for ``wn`` the zero
        start is given to the conv instead (see :meth:`conv`).
        """
        return self._make_layer(self, axis, zero_init, name)

    def normalize_relu(self, x, name, relu_name, axis=-1):
        """``ReLU(norm(x))``: :meth:`normalize_activation` with ``"relu"``."""
        return self.normalize_activation(x, "relu", name, relu_name, axis)

    def normalize_activation(self, x, activation, name, activation_layer_name, axis=-1):
        """``activation(norm(x))``: one fused layer ``name`` for the GN kinds.

        ``activation`` is one of GN's (``"relu"``, ``"silu"`` or its alias
        ``"swish"``).  Other kinds get the norm layer ``name`` followed by
        an activation layer ``activation_layer_name`` (an identity kind:
        just the activation).  The fused layer saves the activation's own
        memory passes, forward and backward.
        """
        activation = activation_name(activation, "NormFactory.normalize_activation")
        if activation is None:
            raise ValueError(
                "NormFactory.normalize_activation: argument `activation` must name "
                "an activation, got activation=None."
            )
        layer = self(axis=axis, name=name)
        if isinstance(layer, GroupNormalization):
            config = {**layer.get_config(), "activation": activation}
            return GroupNormalization.from_config(config)(x)
        if activation == "relu":
            return keras.layers.ReLU(name=activation_layer_name)(layer(x))
        return keras.layers.Activation(activation, name=activation_layer_name)(layer(x))

    def conv_class(self, rank):
        """The convolution class this kind pairs with, for ``rank`` 2 or 3."""
        if rank not in (2, 3):
            raise ValueError(
                f"NormFactory.conv_class: argument `rank` must be 2 or 3, got rank={rank!r}."
            )
        return _CONVS[self._conv_style][rank]

    def conv(self, rank, filters, kernel_size, zero_init=False, **conv_kwargs):
        """A new convolution for this kind.

        ``use_bias`` defaults to ``not normalizes_features``. ``zero_init``
        matters only for ``wn``: the gain g starts at 0, so the layer, like
        a γ=0 normalization, starts with output 0.
        """
        conv_kwargs.setdefault("use_bias", not self.normalizes_features)
        if self._conv_style == "wn" and zero_init:
            conv_kwargs["gain_initializer"] = "zeros"
        return self.conv_class(rank)(filters, kernel_size, **conv_kwargs)

    def __repr__(self):
        return (
            f"NormFactory({self.kind!r}, groups={self.groups!r}, group_size="
            f"{self.group_size!r}, epsilon={self.epsilon!r}, momentum={self.momentum!r})"
        )


def get(name, *, groups=_checks.DEFAULT_GROUPS, group_size=None, epsilon=None, momentum=None):
    """The factory for normalization ``name`` (see :func:`available`).

    Args:
      name: one of ``available()``, e.g. ``"gn"`` or ``"bn"``.
      groups, group_size: GN's group count or channels per group; used by
        ``gn``, ``gn+ws`` and ``keras_gn`` (which takes ``groups`` only) and
        ignored by the other kinds, so one set of options serves all.
      epsilon: added to the variance; default 1e-5 (the paper's).
      momentum: moving-average momentum of the BN kinds; default 0.9.

    Returns:
      A :class:`NormFactory`: ``factory(axis=-1, zero_init=False, name=None)``
      returns a fresh layer.
    """
    if not isinstance(name, str) or name not in _KINDS:
        raise ValueError(
            f"gn_keras.norms.get: unknown normalization name={name!r}; valid "
            f"names are {', '.join(available())}."
        )
    where = f"gn_keras.norms.get({name!r})"
    _checks.check_groups_arguments(groups, group_size, where)
    epsilon = EPSILON if epsilon is None else epsilon
    _checks.check_epsilon(epsilon, where)
    momentum = BN_MOMENTUM if momentum is None else momentum
    _checks.check_number(momentum, "`momentum`", low=0, high=1, high_open=True, where=where)
    if name == "keras_gn" and (group_size is not None or groups is None):
        raise ValueError(
            f"{where}: keras.layers.GroupNormalization takes only `groups`, "
            f"got groups={groups!r}, group_size={group_size!r}; use 'gn' for group_size."
        )
    return NormFactory(name, groups, group_size, float(epsilon), float(momentum))


def is_norm_variable(variable):
    """Whether ``variable`` is a normalization γ or β (by its name).

    Keras's BN, LN and GN layers and this package's GN and BN* all name
    their affine variables ``gamma`` and ``beta``; no other layer here does.
    To keep them out of weight decay::

        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if is_norm_variable(v)])
    """
    name = str(getattr(variable, "path", None) or getattr(variable, "name", ""))
    return name.split(":")[0].rsplit("/", 1)[-1] in NORM_VARIABLE_NAMES
