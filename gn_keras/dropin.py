"""Putting this package's ``GroupNormalization`` in place of Keras's in a built model.

:func:`replace_group_norms` takes any built Keras 3 model (functional,
sequential, or subclassed with nested layers, as keras-hub's are) and
returns a copy in which every ``keras.layers.GroupNormalization`` is a
:class:`gn_keras.GroupNormalization` with the same γ, β, groups, epsilon,
axis, center and scale, so the copy computes what the original did (within
float32 rounding: the statistics are summed in another order).  Where a
SiLU or ReLU provably takes the normalization's output and nothing else
does, the activation is fused into the normalization
(``activation="silu"``/``"relu"``: one pass over the tensor instead of two
on the compiled kernels) and the activation layer becomes an
``Identity``.  "Provably" means:

* in a functional or sequential graph: the normalization is called once,
  its output feeds exactly one node, which is the only call of an
  ``Activation("silu"/"swish"/"relu")`` or a plain ``ReLU`` layer of the
  same dtype policy, and the output is not one of the model's outputs;
* in a subclassed layer, whose ``call`` cannot be inspected: a documented
  pattern names the ``(normalization, activation)`` attribute pairs its
  ``call`` applies back to back (:data:`KERAS_HUB_PATTERNS`, read from
  keras-hub's source), and neither layer is referenced from anywhere else.

How the copy is made: a plain ``Functional``/``Sequential`` model has its
graph rebuilt (``keras.models.clone_model`` with a clone function); any
other model is copied through its config (``clone_model`` of a subclassed
model) with its weights, then its layers' attributes are swapped in place
(Keras's layer tracking keeps each new layer where the old one was, so the
weight order, ``get_weights`` and ``.keras`` files keep their layout).  The
input model is never modified.  A subclassed model reloaded from ``.keras``
is rebuilt by its own class, i.e. with Keras's layers and the same weights;
call :func:`replace_group_norms` again after loading.
"""

import collections
import dataclasses
import logging

import keras
from keras.src.models.functional import Functional  # the class of keras.Model(inputs, outputs)

from gn_keras import _checks, convert
from gn_keras.layer import GroupNormalization

_LOG = logging.getLogger(__name__)

# keras-hub 0.32's VAE (keras_hub/src/models/vae/vae_layers.py): each call()
# applies norm1 -> act1 and norm2 -> act2 (ResNetBlock), and output_norm ->
# output_act (VAEEncoder, VAEDecoder), every activation a SiLU ("silu" or
# "swish") used nowhere else.
KERAS_HUB_PATTERNS = {
    "keras_hub.src.models.vae.vae_layers.ResNetBlock": (("norm1", "act1"), ("norm2", "act2")),
    "keras_hub.src.models.vae.vae_layers.VAEEncoder": (("output_norm", "output_act"),),
    "keras_hub.src.models.vae.vae_layers.VAEDecoder": (("output_norm", "output_act"),),
}


@dataclasses.dataclass(frozen=True)
class Fusion:
    """One activation fused into the normalization before it (paths as in :class:`DropIn`)."""

    norm: str
    activation: str
    function: str  # "silu" or "relu"


@dataclasses.dataclass(frozen=True)
class DropIn:
    """What :func:`replace_group_norms` made and did.

    Paths name layers from the model down: attribute names and list
    indices inside subclassed layers (``decoder/blocks/0/norm1``), layer
    names inside graphs.

    Attributes:
      model: the new model.
      replaced: paths of the Keras GroupNormalization layers replaced.
      fused: the :class:`Fusion` of each activation fused.
      left: names of Keras GroupNormalization layers still in the model
        (reachable only through private attributes, or nodes of a graph
        that cannot be rebuilt, e.g. a functional subclass); none for
        keras-hub's models.
    """

    model: keras.Model
    replaced: tuple
    fused: tuple
    left: tuple


def replace_group_norms(model, *, fuse_activations=True, patterns=None):
    """A copy of ``model`` with gn_keras's GroupNormalization in place of Keras's.

    Args:
      model: a built ``keras.Model`` of any kind.
      fuse_activations: fuse a SiLU/ReLU that provably follows a
        normalization alone (module docstring).
      patterns: more ``{"module.Class": (("norm_attr", "act_attr"), ...)}``
        for subclassed layers, added to :data:`KERAS_HUB_PATTERNS`.  A pair
        asserts that the class's ``call`` applies that activation layer
        once, to the normalization's output, which nothing else uses.

    Returns:
      A :class:`DropIn`: the new model, what was replaced and what fused.
    """
    where = "replace_group_norms"
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{where}: argument `model` must be a keras.Model, got {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"{where}: model {model.name!r} is not built; call it on an input or build() it first."
        )
    _checks.check_bool(fuse_activations, "`fuse_activations`", where)
    job = _Job(fuse_activations, {**KERAS_HUB_PATTERNS, **_checked_patterns(patterns, where)})
    new = job.rebuild_graph(model, "") if _is_plain_graph(model) else _copy_through_config(model)
    job.count_references(new)
    job.swap_attributes(new, "")
    left = tuple(
        layer.name
        for layer in new._flatten_layers(include_self=False)
        if _is_keras_group_norm(layer)
    )
    if left:
        _LOG.warning("%s: Keras GroupNormalization layers left in place: %s", where, left)
    return DropIn(new, tuple(job.replaced), tuple(job.fused), left)


def _copy_through_config(model):
    """A new instance of ``model``'s own class, built from its config, with its weights.

    (``keras.models.clone_model`` would turn a functional subclass, such as
    a keras-hub backbone, into a plain ``Functional``.)
    """
    config = keras.saving.serialize_keras_object(model)
    copy = keras.saving.deserialize_keras_object(
        config, custom_objects={type(model).__name__: type(model)}
    )
    copy.set_weights(model.get_weights())
    return copy


def _checked_patterns(patterns, where):
    if patterns is None:
        return {}
    message = (
        f"{where}: argument `patterns` must map class paths ('module.Class') to "
        f"(norm_attribute, activation_attribute) pairs, got patterns={patterns!r}."
    )
    if not isinstance(patterns, dict):
        raise ValueError(message)
    for class_path, pairs in patterns.items():
        valid = isinstance(class_path, str) and isinstance(pairs, (list, tuple))
        if not valid or not all(
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(name, str) for name in pair)
            for pair in pairs
        ):
            raise ValueError(message)
    return {class_path: tuple(map(tuple, pairs)) for class_path, pairs in patterns.items()}


def _is_keras_group_norm(layer):
    return isinstance(layer, keras.layers.GroupNormalization)


def _is_plain_graph(layer):
    """A model whose config is its graph, so a rebuilt graph is the same model."""
    return type(layer) in (Functional, keras.Sequential)


def _class_path(layer):
    return f"{type(layer).__module__}.{type(layer).__qualname__}"


def activation_function(layer):
    """``"silu"`` or ``"relu"`` if ``layer`` applies exactly that activation, else None.

    ``Activation("swish")`` is ``Activation("silu")`` in Keras 3; a ``ReLU``
    layer counts only with its defaults (no cap, slope or threshold).
    """
    if type(layer) is keras.layers.Activation:
        if layer.activation is keras.activations.silu:
            return "silu"
        if layer.activation is keras.activations.relu:
            return "relu"
    if type(layer) is keras.layers.ReLU:
        plain = layer.max_value is None and not layer.negative_slope and not layer.threshold
        return "relu" if plain else None
    return None


def drop_in_group_norm(keras_layer, activation=None):
    """gn_keras's GroupNormalization computing what ``keras_layer`` does, built, weights copied.

    ``activation`` (``"silu"``/``"relu"``) is applied on top, fused.
    """
    config = {**keras_layer.get_config(), "activation": activation}
    layer = GroupNormalization.from_config(config)
    spec = keras_layer.input_spec
    ((axis, channels),) = spec.axes.items()
    shape = [None] * spec.ndim
    shape[axis] = channels
    layer.build(shape)
    layer.set_weights(keras_layer.get_weights())
    return layer


def _identity_for(activation_layer):
    # The policy by name: Identity's automatic get_config serializes only plain values.
    identity = keras.layers.Identity(
        name=activation_layer.name, dtype=activation_layer.dtype_policy.name
    )
    identity.build(None)
    return identity


def _children(layer):
    """``(slot, child)`` for each layer held by a public attribute of ``layer``.

    A slot is ``(attribute, None)`` or ``(attribute, index_or_key)`` for
    layers inside a list, tuple or dict attribute.  Private attributes are
    Keras's bookkeeping (``_layers``, the tracker, TF's dependencies).
    """
    for name, value in list(vars(layer).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            yield (name, None), value
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    yield (name, index), item
        elif isinstance(value, dict):
            for key, item in list(value.items()):
                if isinstance(item, keras.layers.Layer):
                    yield (name, key), item


def _slot_path(path, slot):
    name, index = slot
    joined = name if index is None else f"{name}/{index}"
    return f"{path}/{joined}" if path else joined


def _swap(parent, slot, old, new):
    """Put ``new`` where ``old`` is in ``parent``, in Keras's tracking too.

    The tracker's layer list keeps ``new`` at ``old``'s index, so the
    weight order does not change (``set_weights``, ``.keras`` layouts).
    """
    tracker = getattr(parent, "_tracker", None)
    if tracker is not None and tracker.is_in_store("layers", old):
        tracker.replace_tracked_value("layers", old, new)
    name, index = slot
    if index is None:
        setattr(parent, name, new)  # already tracked: no new state is added
        return
    container = getattr(parent, name)
    if isinstance(container, tuple):
        setattr(parent, name, container[:index] + (new,) + container[index + 1 :])
    else:  # list or dict: item assignment adds nothing to track
        container[index] = new


class _Job:
    """The state of one :func:`replace_group_norms` call."""

    def __init__(self, fuse_activations, patterns):
        self.fuse_activations = fuse_activations
        self.patterns = patterns
        self.references = collections.Counter()
        self.replaced = []
        self.fused = []
        self.new_layers = {}  # id(old layer) -> its replacement (shared layers stay shared)
        self.visited = set()

    def count_references(self, layer, seen=None):
        """How many slots (attributes, graph layer lists) hold each layer."""
        seen = set() if seen is None else seen
        if id(layer) in seen:
            return
        seen.add(id(layer))
        children = [child for _, child in _children(layer)]
        if isinstance(layer, (Functional, keras.Sequential)):
            children += layer.layers
        for child in children:
            self.references[id(child)] += 1
            self.count_references(child, seen)

    def _replacement(self, old, path, activation=None):
        if id(old) not in self.new_layers:
            self.new_layers[id(old)] = drop_in_group_norm(old, activation)
            self.replaced.append(path)
        return self.new_layers[id(old)]

    def swap_attributes(self, layer, path):
        """Replace, in place, the Keras GN layers held by ``layer``'s attributes, recursively."""
        if id(layer) in self.visited:
            return
        self.visited.add(id(layer))
        if _is_plain_graph(layer):  # rebuilt already: only its subclassed layers are left
            for child in layer.layers:
                self.swap_attributes(child, f"{path}/{child.name}" if path else child.name)
            return
        pairs = self._pattern_pairs(layer)
        activations = {act_name: (norm_name, kind) for norm_name, act_name, kind in pairs}
        fused_norms = {norm_name: kind for norm_name, _, kind in pairs}
        for slot, child in list(_children(layer)):
            child_path = _slot_path(path, slot)
            name = slot[0] if slot[1] is None else None
            if name in activations:
                norm_name, kind = activations[name]
                self.fused.append(Fusion(_slot_path(path, (norm_name, None)), child_path, kind))
                _swap(layer, slot, child, _identity_for(child))
            elif _is_keras_group_norm(child):
                kind = fused_norms.get(name)
                _swap(layer, slot, child, self._replacement(child, child_path, kind))
            elif _is_plain_graph(child):
                rebuilt = self.rebuild_graph(child, child_path)
                _swap(layer, slot, child, rebuilt)
                self.count_references(rebuilt)
                self.swap_attributes(rebuilt, child_path)
            else:
                self.swap_attributes(child, child_path)

    def _pattern_pairs(self, layer):
        """``(norm, activation, kind)`` attribute pairs of ``layer`` to fuse."""
        if not self.fuse_activations:
            return []
        pairs = []
        for norm_name, act_name in self.patterns.get(_class_path(layer), ()):
            norm, act = getattr(layer, norm_name, None), getattr(layer, act_name, None)
            kind = activation_function(act)
            alone = self.references[id(norm)] == 1 and self.references[id(act)] == 1
            if _is_keras_group_norm(norm) and kind and alone and _same_policy(norm, act):
                pairs.append((norm_name, act_name, kind))
        return pairs

    def rebuild_graph(self, model, path):
        """A rebuilt copy of a functional/sequential ``model`` (nested graphs included)."""
        paths, fusions = {}, {}
        self._plan_graph(model, path, paths, fusions)
        identities = {id(act): (norm, kind) for norm, (act, kind) in fusions.items()}

        def replace(layer):
            if id(layer) in identities:
                norm, kind = identities[id(layer)]
                self.fused.append(Fusion(paths[norm], paths[id(layer)], kind))
                return _identity_for(layer)
            if _is_keras_group_norm(layer):
                kind = fusions.get(id(layer), (None, None))[1]
                return self._replacement(layer, paths[id(layer)], kind)
            return None

        return _rebuild(model, replace)

    def _plan_graph(self, model, path, paths, fusions):
        """Fill ``paths`` (id -> path) and ``fusions`` (id(norm) -> (act, kind))."""
        outputs = {id(tensor) for tensor in model.outputs}
        for layer in model.layers:
            layer_path = f"{path}/{layer.name}" if path else layer.name
            paths[id(layer)] = layer_path
            if _is_plain_graph(layer):
                self._plan_graph(layer, layer_path, paths, fusions)
            elif self.fuse_activations and _is_keras_group_norm(layer):
                act = _sole_activation_consumer(layer, outputs)
                if act is not None:
                    fusions[id(layer)] = (act, activation_function(act))


def _rebuild(model, replace):
    """:func:`gn_keras.convert._rebuild` without copying the norms' weights (``replace`` does)."""
    if not isinstance(model, keras.Sequential):
        return convert._rebuild(model, replace, keep_norm_weights=False)
    # clone_model refuses the call_function convert passes for a Sequential
    # at the top; nested in a functional wrapper it is cloned without one.
    (spec,) = model.inputs
    inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype)
    wrapper = keras.Model(inputs, model(inputs))
    return convert._rebuild(wrapper, replace, keep_norm_weights=False).layers[-1]


def _same_policy(a, b):
    return a.dtype_policy.name == b.dtype_policy.name


def _sole_activation_consumer(norm, model_outputs):
    """The activation layer that alone consumes ``norm``'s single call, or None.

    Counted over every node Keras recorded, in any model: a branch built on
    the output but left out of the model still blocks the fusion.
    """
    if len(norm._inbound_nodes) != 1:
        return None
    (output,) = norm._inbound_nodes[0].output_tensors
    consumers = norm._outbound_nodes
    if id(output) in model_outputs or len(consumers) != 1:
        return None
    act = consumers[0].operation
    if activation_function(act) is None or len(act._inbound_nodes) != 1:
        return None
    return act if _same_policy(norm, act) else None
