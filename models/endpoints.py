"""Named feature endpoints, for using a zoo model as a backbone.

Every model marks its stage outputs with ``Identity`` layers named ``C<k>``
(ResNet and I3D: ``C2``..``C5``, the outputs of res2..res5 at strides
4..32; CIFAR ResNets: ``C2``..``C4``; VGG-16: ``C1``..``C5``, each block's
last ReLU before its pool). The marks are plain layers, so they survive
saving, loading, :func:`gn_keras.convert.swap_norm` and cloning.
Reading the marks belongs to :func:`gn_keras.transfer.marked_endpoints`,
which the exporter and fine-tuning use too; this module adds the zoo's
error and the extractor model.
"""

import keras

from gn_keras import transfer


def feature_endpoints(model):
    """``{"C2": tensor, ...}``: the model's stage outputs, shallow to deep."""
    found = transfer.marked_endpoints(model)
    if not found:
        raise ValueError(
            f"feature_endpoints: model {model.name!r} has no layers named C<k>; "
            "it was not built by models.build."
        )
    return found


def feature_extractor(model, names=None):
    """A model from ``model``'s input to a dict of its endpoints.

    ``names`` picks endpoints (e.g. ``("C3", "C4", "C5")`` for an FPN);
    default all. The new model shares ``model``'s layers and weights.
    """
    endpoints = feature_endpoints(model)
    if names is not None:
        unknown = [name for name in names if name not in endpoints]
        if unknown:
            raise ValueError(
                f"feature_extractor: argument `names` has {unknown}, which model "
                f"{model.name!r} lacks; it has {list(endpoints)}."
            )
        endpoints = {name: endpoints[name] for name in names}
    return keras.Model(model.input, endpoints, name=f"{model.name}_features")
