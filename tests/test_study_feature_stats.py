"""The Figure 6 percentile callback against NumPy, in Keras's own fit loop.

The reference response is computed in float64 NumPy from the layers'
weights (BN in inference mode, then a 'valid' conv), and its percentiles
with ``np.percentile``; the callback must record exactly those.
"""

import json

import keras
import numpy as np
import pytest

from gn_keras.train.studies import feature_stats

EPSILON = 1e-3


def _probe_model():
    inputs = keras.Input((6, 6, 2), name="images")
    x = keras.layers.BatchNormalization(epsilon=EPSILON, name="pre_bn")(inputs)
    x = keras.layers.Conv2D(3, 3, padding="valid", name="probe_conv")(x)
    x = keras.layers.BatchNormalization(name="probe_norm")(x)
    x = keras.layers.ReLU(name="probe_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs)


def _reference_response(model, images):
    """pre_bn in inference mode, then the 'valid' 3×3 conv, in float64."""
    gamma, beta, mean, variance = (
        np.asarray(w, np.float64) for w in model.get_layer("pre_bn").get_weights()
    )
    x = (images.astype(np.float64) - mean) / np.sqrt(variance + EPSILON) * gamma + beta
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("probe_conv").get_weights())
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))
    return np.einsum("nijcab,abco->nijo", windows, kernel) + bias


def _trained_with_callback(rng, tmp_path, epochs=2, layer_name="probe_conv"):
    model = _probe_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = rng.normal(1.5, 2.0, (24, 6, 6, 2)).astype(np.float32)
    labels = rng.integers(0, 4, 24)
    probe = rng.normal(0.5, 3.0, (10, 6, 6, 2)).astype(np.float32)
    path = tmp_path / "feature_stats.json"
    callback = feature_stats.FeaturePercentiles(layer_name, probe, str(path))
    model.fit(images, labels, batch_size=8, epochs=epochs, verbose=0, callbacks=[callback])
    return model, probe, callback, path


# layer_name=None measures the last conv, which is probe_conv here.
@pytest.mark.parametrize("layer_name", ["probe_conv", None])
def test_callback_records_numpy_percentiles_every_epoch(rng, tmp_path, layer_name):
    model, probe, _, path = _trained_with_callback(rng, tmp_path, layer_name=layer_name)
    stats = json.loads(path.read_text())
    assert stats["layer"] == "probe_conv"
    assert stats["percentiles"] == [1, 20, 80, 99]
    assert [r["epoch"] for r in stats["epochs"]] == [0, 1]
    expected = np.percentile(_reference_response(model, probe), [1, 20, 80, 99])
    np.testing.assert_allclose(stats["epochs"][-1]["values"], expected, rtol=1e-5, atol=1e-5)
    # The first epoch measured other weights, so its percentiles differ.
    assert not np.allclose(stats["epochs"][0]["values"], stats["epochs"][1]["values"])


def test_callback_leaves_batch_norm_statistics_alone(rng, tmp_path):
    model, probe, callback, _ = _trained_with_callback(rng, tmp_path, epochs=1)
    before = [np.array(w) for w in model.get_layer("pre_bn").get_weights()]
    callback.on_epoch_end(7)
    after = model.get_layer("pre_bn").get_weights()
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)


def test_records_survive_a_resume_and_replace_a_repeated_epoch(rng, tmp_path):
    model, probe, _, path = _trained_with_callback(rng, tmp_path, epochs=1)
    first = json.loads(path.read_text())["epochs"][0]
    # A fresh callback, as a resumed run creates, records epoch 1 and then
    # epoch 1 again after the weights moved.
    resumed = feature_stats.FeaturePercentiles("probe_conv", probe, str(path))
    resumed.set_model(model)
    resumed.on_epoch_end(1)
    kernel = model.get_layer("probe_conv").kernel
    kernel.assign(kernel.numpy() * 2.0)
    resumed.on_epoch_end(1)
    stats = json.loads(path.read_text())
    assert [r["epoch"] for r in stats["epochs"]] == [0, 1]
    assert stats["epochs"][0] == first
    expected = np.percentile(_reference_response(model, probe), [1, 20, 80, 99])
    np.testing.assert_allclose(stats["epochs"][1]["values"], expected, rtol=1e-5, atol=1e-5)


def test_response_percentiles_use_every_element(rng):
    activations = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(
        feature_stats.response_percentiles(activations, (1, 50, 99)),
        np.percentile(activations.astype(np.float64).ravel(), (1, 50, 99)),
    )


def test_last_conv_of_vgg16_is_conv5_3():
    from gn_keras import models

    model = models.build("vgg16", norm="gn", num_classes=10, input_shape=(32, 32, 1))
    assert feature_stats.last_conv_layer(model) == "block5_3_conv"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_name": ""}, "layer_name"),
        ({"percentiles": (1, 101)}, "percentiles"),
        ({"percentiles": ()}, "percentiles"),
        ({"images": np.zeros((0, 6, 6, 2), np.float32)}, "images"),
    ],
)
def test_bad_callback_arguments_name_the_argument(rng, tmp_path, kwargs, message):
    arguments = {
        "layer_name": "probe_conv",
        "images": rng.standard_normal((2, 6, 6, 2)).astype(np.float32),
        "path": str(tmp_path / "stats.json"),
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        feature_stats.FeaturePercentiles(**arguments)


def test_unknown_layer_lists_the_models_layers(rng, tmp_path):
    callback = feature_stats.FeaturePercentiles(
        "conv5_3",
        rng.standard_normal((2, 6, 6, 2)).astype(np.float32),
        str(tmp_path / "stats.json"),
    )
    callback.set_model(_probe_model())
    with pytest.raises(ValueError, match="conv5_3.*probe_conv"):
        callback.on_epoch_end(0)
