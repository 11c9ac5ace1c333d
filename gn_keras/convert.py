"""Rewriting the normalization of an existing functional Keras model.

* :func:`freeze_batchnorm` turns every ``BatchNormalization`` into the
  paper's BN* (:class:`~gn_keras.frozen_bn.FrozenBatchNormalization`) with
  the same γ, β, moving statistics and ε: identical inference outputs, and
  nothing in it moves during fine-tuning (§4.2's Detectron baseline).
* :func:`swap_norm` replaces every normalization layer (Keras BN, LN, GN,
  this package's GN and BN*) by a kind of :mod:`gn_keras.norms`, and swaps
  the convolutions for the ones that kind pairs with (weight-standardized
  for ``gn+ws``, weight-normalized for ``wn``, plain otherwise).

Both clone the graph with ``keras.models.clone_model`` (nested functional
and sequential models included) and carry over the weights of every layer
they keep; the input model is not modified. Layer names are kept.
"""

import inspect
import logging

import keras

from gn_keras import norms
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.layer import GroupNormalization
from gn_keras.weight_convs import conv_config, copy_conv_weights

_LOG = logging.getLogger(__name__)

NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    GroupNormalization,
    FrozenBatchNormalization,
)
_CONVS = {keras.layers.Conv2D: 2, keras.layers.Conv3D: 3}


def _conv_rank(layer):
    for conv_type, rank in _CONVS.items():
        if isinstance(layer, conv_type):
            return rank
    return None


def _channel_axis(layer):
    """The channel axis of a normalization layer (LN's last axis if several)."""
    axis = layer.axis
    return int(axis[-1]) if isinstance(axis, (list, tuple)) else int(axis)


def _carry_matching_variables(old, new):
    """Copy each of ``old``'s variables into ``new``'s of the same name and shape."""
    by_name = {variable.name: variable for variable in old.weights}
    for variable in new.weights:
        source = by_name.get(variable.name)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            variable.assign(source)


def _carry_weights(old, new, replaced, keep_norm_weights):
    if not replaced:
        new.set_weights(old.get_weights())
    elif _conv_rank(new):
        copy_conv_weights(old, new)
    elif keep_norm_weights:
        _carry_matching_variables(old, new)


def _call_with_accepted_kwargs(layer, *args, **kwargs):
    """Call a cloned layer, dropping recorded keyword arguments (e.g. BN's
    ``mask=None``) that a replacement layer's ``call`` does not take."""
    parameters = inspect.signature(layer.call).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs = {key: value for key, value in kwargs.items() if key in parameters}
    return layer(*args, **kwargs)


def _named_inputs(model):
    """Fresh inputs named like ``model``'s input layers (clone_model would
    name them after the tensors)."""
    if isinstance(model, keras.Sequential):
        return None

    # Each input tensor is the output of an InputLayer (public API; the
    # tensor's own name differs from the layer's for unnamed inputs).
    inputs = [layer for layer in model.layers if isinstance(layer, keras.layers.InputLayer)]
    names = {id(layer.output): layer.name for layer in inputs}

    def fresh(tensor):
        return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=names[id(tensor)])

    return keras.tree.map_structure(fresh, model.input)


def _rebuild(model, replace, keep_norm_weights=True):
    """Clone ``model``, letting ``replace(layer)`` return a new layer or None."""
    pairs = []

    def clone_function(layer):
        new = replace(layer)
        replaced = new is not None
        if replaced:
            new.dtype_policy = layer.dtype_policy
        else:
            new = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new, replaced))
        return new

    # Keras clones a Sequential layer by layer and refuses a call_function
    # (or input tensors) for it.
    sequential = isinstance(model, keras.Sequential)
    clone = keras.models.clone_model(
        model,
        input_tensors=None if sequential else _named_inputs(model),
        clone_function=clone_function,
        call_function=None if sequential else _call_with_accepted_kwargs,
        recursive=True,
    )
    for old, new, replaced in pairs:
        _carry_weights(old, new, replaced, keep_norm_weights)
    return clone


def _check_model(model, where):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{where}: argument `model` must be a keras.Model, got {type(model).__name__}."
        )


def freeze_batchnorm(model):
    """A copy of ``model`` with every BatchNormalization frozen into BN*.

    Sync BN and Batch Renorm layers are frozen the same way (their inference
    uses the same moving mean and variance). Other layers, GN included, are
    copied unchanged. A model without BN gives an equivalent copy and a
    logged warning.
    """
    _check_model(model, "freeze_batchnorm")

    def replace(layer):
        if not isinstance(layer, keras.layers.BatchNormalization):
            return None
        return FrozenBatchNormalization(axis=layer.axis, epsilon=layer.epsilon, name=layer.name)

    found = [
        layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not found:
        _LOG.warning(
            "freeze_batchnorm: model %r has no BatchNormalization layer; "
            "returning an unchanged copy.",
            model.name,
        )
    return _rebuild(model, replace)


def swap_norm(model, name, *, keep_norm_weights=True, **norm_options):
    """A copy of ``model`` whose normalizations are of kind ``name``.

    Args:
      model: a functional or sequential Keras model, e.g.
        ``keras.applications.ResNet50(weights=None)``.
      name: a kind from :func:`gn_keras.norms.available`.
      keep_norm_weights: carry over each normalization variable that has the
        same name and shape in the new layer (γ and β; between BN kinds,
        also the moving statistics). False starts them fresh (γ=1, β=0).
      **norm_options: passed to :func:`gn_keras.norms.get` (``groups``,
        ``group_size``, ``epsilon``, ``momentum``).

    Each normalization keeps its layer name and channel axis (for a
    LayerNormalization over several axes, the last one). Every Conv2D and
    Conv3D becomes the conv class the kind pairs with, computing the same
    kernel it did (a WN conv starts with ``g = ‖kernel‖``); the convs keep
    their ``use_bias``. To change the norm of a ``models.build`` model, prefer
    building it again with the new ``norm``.
    """
    _check_model(model, "swap_norm")
    factory = norms.get(name, **norm_options)

    def replace(layer):
        if isinstance(layer, NORMALIZATION_LAYERS):
            return _keep_fused_relu(layer, factory(axis=_channel_axis(layer), name=layer.name))
        rank = _conv_rank(layer)
        if rank is None:
            return None
        conv_class = factory.conv_class(rank)
        if type(layer) is conv_class:
            return None
        return conv_class.from_config(conv_config(layer))

    return _rebuild(model, replace, keep_norm_weights)


def _keep_fused_relu(old, new):
    """``new``, taking over the ReLU that ``old`` (a GN with ``activation``) applies.

    Only our GN fuses a ReLU; a kind that cannot is refused rather than
    silently dropping the activation.
    """
    if getattr(old, "activation", None) is None or not isinstance(old, GroupNormalization):
        return new
    if not isinstance(new, GroupNormalization):
        raise ValueError(
            f"swap_norm: layer {old.name!r} is a GroupNormalization with a fused ReLU "
            f"(activation='relu'); {type(new).__name__} has none to take it over."
        )
    return GroupNormalization.from_config({**new.get_config(), "activation": old.activation})


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
