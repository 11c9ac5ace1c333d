"""channels_first zoo models on every CPU, with oneDNN off and on.

The suite runs with oneDNN off (tests/conftest.py), where TensorFlow's CPU
kernels cannot run NCHW convolutions: channels_first models must still
build, give the channels_last model's outputs and endpoints (in NCHW), and
train. One subprocess turns oneDNN on, where the same models run NCHW
throughout. Weights move by layer name between the layouts.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from subprocess_utils import run_python
from test_models import check_forward_and_training

from gn_keras import models
from gn_keras.models import layout

CASES = {
    "resnet18-gn": ("resnet18", "gn", (32, 32, 3)),
    "resnet50-bn": ("resnet50", "bn", (32, 32, 3)),
    "vgg16-gn+ws": ("vgg16", "gn+ws", (32, 32, 3)),
    "resnet20-wn": ("resnet20", "wn", (32, 32, 3)),
    "resnet20_i3d-gn": ("resnet20_i3d", "gn", (4, 16, 16, 3)),
}


def _build(name, norm, shape, data_format, **kwargs):
    return models.build(
        name,
        norm=norm,
        num_classes=4,
        input_shape=shape if data_format == "channels_last" else shape[-1:] + shape[:-1],
        group_size=8,
        groups=None,
        zero_init_residual=False,
        data_format=data_format,
        **kwargs,
    )


def _copy_weights_by_name(source, target):
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def _to_first(x):
    return np.moveaxis(x, -1, 1)


def test_the_layout_probe_sees_that_this_cpu_cannot_run_nchw_without_onednn():
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0" or tf.config.list_logical_devices("GPU"):
        pytest.skip("only meaningful on a CPU with oneDNN off")
    assert not layout.runs_channels_first_natively()
    assert layout.compute_format("channels_first") == "channels_last"
    assert layout.compute_format("channels_last") == "channels_last"


@pytest.mark.parametrize("case", CASES)
def test_channels_first_matches_channels_last_and_trains(rng, case):
    name, norm, shape = CASES[case]
    last = _build(name, norm, shape, "channels_last")
    first = _build(name, norm, shape, "channels_first")
    _copy_weights_by_name(last, first)
    x = rng.normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(
        first(_to_first(x), training=False), last(x, training=False), rtol=1e-4, atol=1e-4
    )
    features_first = models.feature_extractor(first)(_to_first(x))
    features_last = models.feature_extractor(last)(x)
    assert list(features_first) == list(features_last)
    for key, value in features_last.items():
        np.testing.assert_allclose(features_first[key], _to_first(value), rtol=1e-4, atol=1e-4)
    check_forward_and_training(first, _to_first(x), 4, rng)


def test_a_channels_first_backbone_returns_its_map_in_nchw(rng):
    kwargs = {"include_top": False, "pooling": None}
    last = _build("resnet18", "gn", (32, 32, 3), "channels_last", **kwargs)
    first = _build("resnet18", "gn", (32, 32, 3), "channels_first", **kwargs)
    _copy_weights_by_name(last, first)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    got = first(_to_first(x))
    assert got.shape == (2, 512, 1, 1)
    np.testing.assert_allclose(got, _to_first(last(x)), rtol=1e-4, atol=1e-4)


def test_the_emulated_layout_saves_and_reloads(rng, tmp_path):
    first = _build("resnet20", "gn", (32, 32, 3), "channels_first")
    path = str(tmp_path / "first.keras")
    first.save(path)
    x = _to_first(rng.normal(size=(2, 32, 32, 3)).astype("float32"))
    np.testing.assert_allclose(keras.saving.load_model(path)(x), first(x), rtol=1e-6, atol=1e-6)


def test_with_onednn_on_channels_first_runs_nchw_throughout_with_the_same_outputs(rng):
    """A fresh process with oneDNN on: no transposes, every conv NCHW."""
    seed = int(rng.integers(2**31))
    out = run_python(
        f"""
        import keras, numpy as np
        from gn_keras import models
        from gn_keras.models import layout
        assert layout.runs_channels_first_natively()
        kw = dict(norm="gn", num_classes=4, group_size=8, groups=None, zero_init_residual=False)
        last = models.build("resnet18", input_shape=(32, 32, 3), **kw)
        first = models.build(
            "resnet18", input_shape=(3, 32, 32), data_format="channels_first", **kw
        )
        assert not [l for l in first.layers if isinstance(l, keras.layers.Permute)]
        convs = [l for l in first.layers if isinstance(l, keras.layers.Conv2D)]
        assert convs and all(l.data_format == "channels_first" for l in convs)
        for layer in first.layers:
            if layer.weights:
                layer.set_weights(last.get_layer(layer.name).get_weights())
        x = np.random.default_rng({seed}).normal(size=(2, 32, 32, 3)).astype("float32")
        got = np.asarray(first(np.moveaxis(x, -1, 1), training=False))
        want = np.asarray(last(x, training=False))
        print("maxdiff", float(np.abs(got - want).max()))
        """,
        env={"TF_ENABLE_ONEDNN_OPTS": "1"},
    )
    assert float(out.split("maxdiff")[-1]) < 1e-4
