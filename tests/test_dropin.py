"""gn_keras.replace_group_norms on functional, sequential, subclassed and keras-hub models.

The reference is the original model itself (Keras's GroupNormalization and
Activation layers), with random γ, β and convolutions: the drop-in's
outputs must agree within the export tolerance, and its report must name
exactly the layers replaced and the activations fused.
"""

import keras
import numpy as np
import pytest
from keras_hub.src.models.vae.vae_backbone import VAEBackbone  # not exported by keras_hub

import gn_keras
from gn_keras.export import default_tolerance


def _randomize_norms(model, rng):
    """Random γ and β in every Keras GN, so copied weights are checked, not defaults."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.GroupNormalization):
            layer.set_weights(
                [
                    (w + rng.normal(scale=0.5, size=w.shape)).astype(w.dtype)
                    for w in layer.get_weights()
                ]
            )


def _assert_same_outputs(reference, candidate, model):
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    assert reference.shape == candidate.shape
    allowed = default_tolerance(model) * max(1.0, float(np.max(np.abs(reference))))
    assert float(np.max(np.abs(candidate - reference))) <= allowed


def _layers_of(model, kind):
    return [layer for layer in model._flatten_layers(include_self=False) if type(layer) is kind]


def _functional_model(rng):
    """One GN of each case: fusable SiLU and ReLU, two consumers, shared SiLU, model output."""
    x = keras.Input((6, 6, 8))
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv")(x)
    h = keras.layers.GroupNormalization(4, epsilon=1e-6, name="gn_silu")(h)
    h = keras.layers.Activation("swish", name="silu")(h)
    h = keras.layers.GroupNormalization(2, center=False, name="gn_relu")(h)
    h = keras.layers.ReLU(name="relu")(h)
    n = keras.layers.GroupNormalization(8, name="gn_two_consumers")(h)
    h = keras.layers.Add(name="add")([keras.layers.Activation("silu", name="silu_2")(n), n])
    shared = keras.layers.Activation("silu", name="shared_silu")
    h = shared(keras.layers.GroupNormalization(4, name="gn_shared_act")(h))
    h = shared(keras.layers.Conv2D(16, 1, name="conv_2")(h))
    out = keras.layers.GroupNormalization(4, scale=False, name="gn_output")(h)
    model = keras.Model(x, [out, keras.layers.GlobalAveragePooling2D(name="pool")(out)])
    _randomize_norms(model, rng)
    return model


def test_functional_model_replaced_and_only_sole_consumers_fused(rng):
    model = _functional_model(rng)
    result = gn_keras.replace_group_norms(model)
    names = ("gn_silu", "gn_relu", "gn_two_consumers", "gn_shared_act", "gn_output")
    assert result.replaced == names and result.left == ()
    assert {(f.norm, f.activation, f.function) for f in result.fused} == {
        ("gn_silu", "silu", "silu"),
        ("gn_relu", "relu", "relu"),
    }
    new = result.model
    assert not _layers_of(new, keras.layers.GroupNormalization)
    assert [layer.name for layer in _layers_of(new, keras.layers.Identity)] == ["silu", "relu"]
    activations = {
        layer.name: layer.activation for layer in _layers_of(new, gn_keras.GroupNormalization)
    }
    assert activations == dict(zip(names, ("silu", "relu", None, None, None)))
    old_gn = model.get_layer("gn_relu")
    new_gn = new.get_layer("gn_relu")
    assert (new_gn.groups, new_gn.epsilon, new_gn.center, new_gn.scale) == (
        old_gn.groups,
        old_gn.epsilon,
        old_gn.center,
        old_gn.scale,
    )
    x = rng.normal(size=(3, 6, 6, 8)).astype("float32")
    for expected, got in zip(model.predict_on_batch(x), new.predict_on_batch(x)):
        _assert_same_outputs(expected, got, model)
    # The input model is untouched.
    assert len(_layers_of(model, keras.layers.GroupNormalization)) == 5


def test_sequential_model_fuses_and_reloads_from_keras_file(rng, tmp_path):
    model = keras.Sequential(
        [
            keras.Input((5, 5, 12)),
            keras.layers.Conv2D(12, 3, padding="same"),
            keras.layers.GroupNormalization(3, epsilon=1e-6, name="gn_a"),
            keras.layers.Activation("silu", name="act_a"),
            keras.layers.Conv2D(6, 1),
            keras.layers.GroupNormalization(-1, name="gn_b"),  # instance norm
        ]
    )
    _randomize_norms(model, rng)
    result = gn_keras.replace_group_norms(model)
    assert result.replaced == ("gn_a", "gn_b")
    assert [(f.norm, f.activation) for f in result.fused] == [("gn_a", "act_a")]
    assert isinstance(result.model, keras.Sequential)
    x = rng.normal(size=(2, 5, 5, 12)).astype("float32")
    expected = model.predict_on_batch(x)
    _assert_same_outputs(expected, result.model.predict_on_batch(x), model)
    path = tmp_path / "dropin.keras"
    result.model.save(path)
    reloaded = keras.saving.load_model(path)
    assert len(_layers_of(reloaded, gn_keras.GroupNormalization)) == 2
    _assert_same_outputs(expected, reloaded.predict_on_batch(x), model)


def test_fuse_activations_false_replaces_without_fusing(rng):
    model = _functional_model(rng)
    result = gn_keras.replace_group_norms(model, fuse_activations=False)
    assert len(result.replaced) == 5 and result.fused == ()
    assert not _layers_of(result.model, keras.layers.Identity)


@keras.saving.register_keras_serializable(package="gn_keras_tests")
class _Block(keras.layers.Layer):
    """A subclassed block: norm -> act -> conv, a list of GN stages, and a
    nested Sequential (GN -> ReLU, a graph of its own)."""

    def __init__(self, filters, act=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.norm = keras.layers.GroupNormalization(4, epsilon=1e-6, name="norm")
        self.act = act or keras.layers.Activation("silu")
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")
        self.stages = [keras.layers.GroupNormalization(2, name=f"stage_norm_{i}") for i in range(2)]
        self.inner = keras.Sequential(
            [
                keras.layers.GroupNormalization(4, name="inner_gn"),
                keras.layers.ReLU(name="inner_relu"),
            ]
        )

    def build(self, input_shape):
        for layer in (self.norm, self.act, self.conv, *self.stages):
            layer.build(input_shape)
        self.inner.build(input_shape)

    def call(self, x):
        h = self.conv(self.act(self.norm(x)))
        for norm in self.stages:
            h = norm(h) + h
        return self.inner(h) - 0.5

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="gn_keras_tests")
class _Net(keras.Model):
    """Three blocks; the last two share one SiLU layer, so theirs cannot be fused."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        shared = keras.layers.Activation("silu")
        self.blocks = [_Block(8, name="block_0")] + [
            _Block(8, act=shared, name=f"block_{i}") for i in (1, 2)
        ]

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_subclassed_model_with_a_pattern_and_a_nested_graph(rng, tmp_path):
    model = _Net()
    x = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    model(x)
    _randomize_norms(model, rng)
    patterns = {f"{_Block.__module__}.{_Block.__qualname__}": [("norm", "act")]}
    result = gn_keras.replace_group_norms(model, patterns=patterns)
    per_block = ("norm", "stages/0", "stages/1", "inner/inner_gn")
    assert result.replaced == tuple(f"blocks/{i}/{name}" for i in range(3) for name in per_block)
    inner = {(f"blocks/{i}/inner/inner_gn", f"blocks/{i}/inner/inner_relu") for i in range(3)}
    assert {(f.norm, f.activation) for f in result.fused} == inner | {
        ("blocks/0/norm", "blocks/0/act")
    }
    new = result.model
    assert type(new) is _Net and result.left == ()
    assert (
        new.blocks[1].act is new.blocks[2].act
        and type(new.blocks[1].act) is keras.layers.Activation
    )
    assert len(new.weights) == len(model.weights)
    expected = model(x)
    _assert_same_outputs(expected, new(x), model)
    assert model.blocks[0].norm is not new.blocks[0].norm  # the input model is untouched
    assert type(model.blocks[0].norm) is keras.layers.GroupNormalization
    path = tmp_path / "net.keras"
    new.save(path)
    _assert_same_outputs(expected, keras.saving.load_model(path)(x), model)


def _small_vae():
    """keras-hub's VAE at a small width: two stacks of one block, 32 filters (G=32)."""
    return VAEBackbone(
        encoder_num_filters=[32, 32],
        encoder_num_blocks=[1, 1],
        decoder_num_filters=[32, 32],
        decoder_num_blocks=[1, 1],
        sampler_method="mode",  # deterministic, so the whole model can be compared
        input_channels=3,
        sample_channels=8,
        output_channels=3,
    )


def _vae_paths(part, stacks):
    blocks = [f"{part}/blocks/{i}" for i in range(stacks)] + [
        f"{part}/mid_block_{i}" for i in (0, 1)
    ]
    norms = [f"{block}/norm{k}" for block in blocks for k in (1, 2)]
    return blocks, norms + [f"{part}/mid_attention/group_norm", f"{part}/output_norm"]


def test_keras_hub_vae_resnet_blocks_fused_and_outputs_kept(rng, tmp_path):
    model = _small_vae()
    _randomize_norms(model, rng)
    result = gn_keras.replace_group_norms(model)
    expected_replaced, expected_fused = [], []
    for part in ("encoder", "decoder"):
        blocks, norms = _vae_paths(part, 2)
        expected_replaced += norms
        expected_fused += [(f"{b}/norm{k}", f"{b}/act{k}", "silu") for b in blocks for k in (1, 2)]
        expected_fused.append((f"{part}/output_norm", f"{part}/output_act", "silu"))
    assert sorted(result.replaced) == sorted(expected_replaced) and result.left == ()
    assert sorted((f.norm, f.activation, f.function) for f in result.fused) == sorted(
        expected_fused
    )
    new = result.model
    assert type(new) is VAEBackbone
    assert new.decoder.blocks[0].norm1.activation == "silu"
    assert type(new.decoder.blocks[0].act1) is keras.layers.Identity
    assert new.decoder.mid_attention.group_norm.activation is None
    assert len(_layers_of(model, keras.layers.GroupNormalization)) == 20  # untouched
    images = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    latents = rng.normal(size=(2, 4, 4, 4)).astype("float32")
    # Eager calls run the compiled kernels too, without tracing a predict graph.
    expected_images = model(images)
    _assert_same_outputs(expected_images, new(images), model)
    expected_decoded = model.decode(latents)
    _assert_same_outputs(expected_decoded, new.decode(latents), model)
    path = tmp_path / "vae.keras"
    new.save(path)
    reloaded = keras.saving.load_model(path)
    _assert_same_outputs(expected_images, reloaded(images), model)
    _assert_same_outputs(expected_decoded, reloaded.decode(latents), model)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((keras.layers.Dense(2),), "argument `model` must be a keras.Model, got Dense"),
        ((keras.Sequential([keras.layers.Dense(2)]),), "is not built"),
        (
            (
                keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]),
                {"patterns": {"A": "x"}},
            ),
            "argument `patterns` must map class paths",
        ),
    ],
)
def test_bad_arguments_are_refused_in_one_line(arguments, message):
    *positional, keywords = arguments if isinstance(arguments[-1], dict) else (*arguments, {})
    with pytest.raises(ValueError, match=message) as raised:
        gn_keras.replace_group_norms(*positional, **keywords)
    assert "\n" not in str(raised.value)
