"""What a trained classifier offers for transfer, found from its graph.

A functional classifier is read as ``backbone → pooled features → head``:

* :func:`find_head` walks back from the output through softmax/activation/
  dropout layers to the last ``Dense`` on a rank-2 tensor; that Dense is the
  classifier head and its input is the pooled backbone feature vector.
* :func:`marked_endpoints` reads the stage marks: layers named ``C<k>``,
  which the project's zoo puts on its stage outputs.  It is the one reader
  of those names; ``models.feature_endpoints`` is built on it.
* :func:`stage_endpoints` names the outputs of the stem and of each residual
  stage (C1…C5, Detectron's res1…res5), from those marks (plus the stem) or
  from ``keras.applications`` ResNet names.
* :func:`feature_model` gives both at once, for the exported ``features``
  signature.
* :func:`replace_head` and :func:`freeze_stages` are the two edits a
  fine-tuning job makes (§4.2 of the paper fine-tunes a pre-trained
  backbone under a new head; Detectron's FREEZE_AT freezes the stem and the
  first stages).

Only public Keras API is used, so this works on models the project did not
build, e.g. ``keras.applications.ResNet50``.
"""

import re

import keras

from gn_keras import _checks

# C5, the last stage of a ResNet: freezing up to it freezes the whole backbone.
MAX_FREEZE_AT = 5
_PASSTHROUGH = (keras.layers.Activation, keras.layers.Softmax, keras.layers.Dropout)

# The zoo marks stage outputs with Identity layers "C2".."C5" (VGG also
# "C1", see models/endpoints.py); no leading zero, so each k has one name.
_MARK_PATTERN = re.compile(r"^C([1-9]\d*)$")
# Unmarked keras.applications ResNets end stage k with "conv{k}_block{n}_out".
# Both name the stem's layers conv1_*/pool1*, and the last of those is the
# stem's output (C1) when no layer is named C1.
_KERAS_APPLICATIONS_STAGE = re.compile(r"^conv([2-5])_block\d+_out$")
_STEM_PATTERN = re.compile(r"^(conv1|pool1)(_.*)?$")


class HeadNotFoundError(ValueError):
    """The model does not end in a Dense classifier on pooled features."""


def _producers(model):
    """Map each layer output tensor (by id) to the layer that made it."""
    made_by = {}
    for layer in model.layers:
        try:
            made_by[id(layer.output)] = layer
        except (AttributeError, ValueError):  # unused or shared layer
            continue
    return made_by


def _is_softmax(layer):
    activation = getattr(layer, "activation", None)
    return (
        isinstance(layer, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax"
    )


def find_head(model):
    """Return ``(head, pooled, ends_in_softmax)`` for a functional classifier.

    ``head`` is the classifier Dense layer, ``pooled`` the KerasTensor it
    reads (the pooled backbone features), ``ends_in_softmax`` whether the
    model's output is already a probability vector.
    """
    if len(model.outputs) != 1:
        raise HeadNotFoundError(
            f"model {model.name!r} has {len(model.outputs)} outputs; a "
            "classifier with a single (batch, classes) output is needed."
        )
    made_by = _producers(model)
    layer = made_by.get(id(model.outputs[0]))
    ends_in_softmax = False
    while isinstance(layer, _PASSTHROUGH):
        ends_in_softmax = ends_in_softmax or _is_softmax(layer)
        layer = made_by.get(id(layer.input))
    if not isinstance(layer, keras.layers.Dense) or len(layer.input.shape) != 2:
        raise HeadNotFoundError(
            f"model {model.name!r} does not end in a Dense classifier on "
            f"pooled features (found {type(layer).__name__}); build it with a "
            "classification head (include_top=True)."
        )
    return layer, layer.input, ends_in_softmax or _is_softmax(layer)


def marked_endpoints(model):
    """Ordered ``{"C2": tensor, …}``: the outputs of the layers named ``C<k>``.

    Ordered by k (shallow to deep, ``C10`` after ``C9``); empty when no
    layer carries such a name.
    """
    found = {}
    for layer in model.layers:
        match = _MARK_PATTERN.match(layer.name)
        if match:
            found[int(match.group(1))] = (layer.name, layer.output)
    return {name: tensor for _, (name, tensor) in sorted(found.items())}


def stage_endpoints(model):
    """Ordered ``{"C1": tensor, …, "C5": tensor}`` of the stage outputs found.

    The ``C<k>`` marks (:func:`marked_endpoints`) when the model has any,
    else the ``keras.applications`` ResNet names, where the last block of a
    stage is its output.  Models with neither give an empty dict.
    """
    found = marked_endpoints(model)
    if not found:
        for layer in model.layers:
            match = _KERAS_APPLICATIONS_STAGE.match(layer.name)
            if match:
                found[f"C{match.group(1)}"] = layer.output
    stem = [layer for layer in model.layers if _STEM_PATTERN.match(layer.name)]
    if found and stem:
        found.setdefault("C1", stem[-1].output)
    return dict(sorted(found.items(), key=lambda item: int(item[0][1:])))


def feature_model(model):
    """A model sharing ``model``'s layers that returns what transfer wants:
    ``{"pooled": (N, D), "C1": …, …, "C5": …}`` (the endpoints it names)."""
    _, pooled, _ = find_head(model)
    outputs = {"pooled": pooled}
    outputs.update(stage_endpoints(model))
    return keras.Model(model.input, outputs, name=f"{model.name}_features")


def replace_head(model, num_classes, name="finetune_logits"):
    """A new model: the same backbone with a fresh ``num_classes`` Dense head.

    The new head outputs logits (no softmax), as the project's models do.
    """
    _checks.check_int(num_classes, "`num_classes`", minimum=2, where="replace_head")
    _, pooled, _ = find_head(model)
    logits = keras.layers.Dense(num_classes, name=name)(pooled)
    return keras.Model(model.input, logits, name=model.name)


def freeze_stages(model, freeze_at):
    """Freeze the stem and the first stages, as Detectron's FREEZE_AT.

    ``freeze_at=0`` freezes nothing, 1 the stem (C1), 2 the stem and res2
    (C2), … 5 (:data:`MAX_FREEZE_AT`) the whole backbone.  Returns the names
    of the frozen layers.
    """
    _checks.check_int(
        freeze_at, "`freeze_at`", minimum=0, maximum=MAX_FREEZE_AT, where="freeze_stages"
    )
    if freeze_at == 0:
        return []
    endpoints = stage_endpoints(model)
    key = f"C{freeze_at}"
    if key not in endpoints:
        raise ValueError(
            f"freeze_stages: freeze_at={freeze_at} needs the stage endpoint "
            f"{key}, but model {model.name!r} only names {sorted(endpoints) or 'none'}."
        )
    upstream = keras.Model(model.input, endpoints[key])
    frozen = []
    for layer in upstream.layers:
        if layer.trainable_weights:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen
