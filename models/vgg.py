"""VGG-16 (Simonyan & Zisserman 2015) with a normalization after every conv.

The paper's Figure 6 trains VGG-16 with BN, GN and without normalization:
"We apply BN or GN right after each convolutional layer". Each conv unit is
conv → norm → ReLU; ``norm="none"`` gives the classic network, whose convs
keep their bias, so it has exactly ``keras.applications.VGG16``'s 138,357,544
parameters at 224×224. The head is the original 4096-4096 MLP with dropout
0.5 (dropout has no weights, so the counts are unaffected).

Names: unit ``j`` of block ``b`` is ``block<b>_<j>`` (``block1_1_conv``,
``block1_1_norm``, ``block1_1_relu``), pools ``block<b>_pool``, endpoints
``C1``..``C5`` mark each block's last ReLU (before its pool), then
``flatten``, ``fc1``, ``fc2``, ``logits``.
"""

import keras

from gn_keras.models.common import classifier_initializer

# (convs, filters) per block
BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
FC_WIDTH = 4096
DROPOUT = 0.5


def _fc(x, name):
    x = keras.layers.Dense(
        FC_WIDTH, activation="relu", kernel_initializer=classifier_initializer(), name=name
    )(x)
    return keras.layers.Dropout(DROPOUT, name=f"{name}_dropout")(x)


def build_vgg16(builder, inputs, *, include_top, num_classes, pooling):
    x = inputs
    for block, (convs, filters) in enumerate(BLOCKS, start=1):
        for unit in range(1, convs + 1):
            x = builder.conv_norm(x, filters, 3, 1, f"block{block}_{unit}")
        x = builder.mark_endpoint(x, f"C{block}")
        x = keras.layers.MaxPooling2D(
            2, 2, data_format=builder.data_format, name=f"block{block}_pool"
        )(x)
    if include_top:
        x = keras.layers.Flatten(data_format=builder.data_format, name="flatten")(x)
        x = _fc(_fc(x, "fc1"), "fc2")
        return builder.classifier(x, num_classes)
    return builder.backbone_output(x, pooling)
