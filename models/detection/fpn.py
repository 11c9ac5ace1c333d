"""The backbone and Feature Pyramid Network (Lin et al. 2017) of Mask R-CNN.

The backbone is a zoo model cut at its ``C2``..``C5`` endpoints
(:func:`gn_keras.models.feature_extractor`), so any zoo ResNet with any
norm serves; the FPN adds a 1×1 lateral and a 3×3 output conv per level,
nearest-neighbour top-down upsampling, and P6 as a stride-2 subsample of P5
(Detectron's FPN). With ``fpn_norm`` other than ``none`` every FPN conv is
followed by that norm, as in Detectron's GN FPN (paper §4.2, Table 6 "GN is
applied to the backbone, box head, and mask head" via the GN project's
FPN with GN).

Layer names: ``fpn_lateral<k>_conv``/``_norm``, ``fpn_output<k>_conv``/
``_norm``, ``fpn_up<k>``, ``fpn_add<k>``, ``fpn_p6``; outputs keyed ``"2"``
.. ``"6"``.
"""

import keras

from gn_keras import models, norms

ENDPOINTS = ("C2", "C3", "C4", "C5")


def norm_factory(config, norm):
    return norms.get(norm, groups=config.groups, group_size=config.group_size)


def build_backbone(config):
    """The zoo model ``config.backbone`` with ``backbone_norm``, cut at C2..C5."""
    if config.backbone not in models.available():
        raise ValueError(
            f"MaskRCNNConfig: field `backbone` must be one of {list(models.available())}, "
            f"got backbone={config.backbone!r}."
        )
    network = models.build(
        config.backbone,
        norm=config.backbone_norm,
        groups=config.groups,
        group_size=config.group_size,
        include_top=False,
        pooling=None,
        input_shape=tuple(config.image_size) + (3,),
    )
    return models.feature_extractor(network, ENDPOINTS)


def check_backbone(backbone, config):
    """A given backbone must map padded images to C2..C5 dicts."""
    outputs = getattr(backbone, "output", None)
    if not isinstance(outputs, dict) or sorted(outputs) != list(ENDPOINTS):
        raise ValueError(
            f"MaskRCNN: argument `backbone` must output a dict of {list(ENDPOINTS)} "
            f"(models.feature_extractor), got {type(outputs).__name__} "
            f"{sorted(outputs) if isinstance(outputs, dict) else ''}."
        )


def _conv_norm(x, factory, filters, kernel, name):
    x = factory.conv(
        2,
        filters,
        kernel,
        padding="same",
        kernel_initializer="lecun_uniform",  # Caffe2's XavierFill, Detectron's FPN init
        name=f"{name}_conv",
    )(x)
    return factory(axis=-1, name=f"{name}_norm")(x)


def build_fpn(config, backbone):
    """A model from the backbone's C2..C5 shapes to ``{"2": P2, ..., "6": P6}``."""
    factory = norm_factory(config, config.fpn_norm)
    inputs = {name: keras.Input(backbone.output[name].shape[1:], name=name) for name in ENDPOINTS}
    top_down = None
    outputs = {}
    for level in (5, 4, 3, 2):
        lateral = _conv_norm(
            inputs[f"C{level}"], factory, config.fpn_channels, 1, f"fpn_lateral{level}"
        )
        if top_down is not None:
            upsample = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_up{level}")
            upsampled = upsample(top_down)
            lateral = keras.layers.Add(name=f"fpn_add{level}")([lateral, upsampled])
        top_down = lateral
        outputs[str(level)] = _conv_norm(
            lateral, factory, config.fpn_channels, 3, f"fpn_output{level}"
        )
    outputs["6"] = keras.layers.MaxPooling2D(1, 2, padding="same", name="fpn_p6")(outputs["5"])
    ordered = {level: outputs[level] for level in config.levels}
    return keras.Model(inputs, ordered, name="fpn")
