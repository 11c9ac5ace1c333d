"""Stable Diffusion 3's VAE (keras-hub) with Keras's GN against the drop-in, side by side.

keras-hub's ``VAEBackbone`` with SD3's configuration (encoder 128-256-512-512
filters, 2 blocks a stack; decoder 512-512-256-128, 3 blocks a stack; 16
latent channels; every norm ``GroupNormalization(32, epsilon=1e-6)``
followed by a SiLU layer but the attention's), random weights, nothing
downloaded.  Three copies of it are timed:

* ``keras``: the model as keras-hub builds it;
* ``dropin``: ``gn_keras.replace_group_norms(model, fuse_activations=False)``;
* ``dropin_fused``: ``gn_keras.replace_group_norms(model)``: the SiLU after
  each ResNet block norm and the output norm fused into the normalization.

on the decode of one latent of the decoder's own shape (``--image_size``
/ 8 square, 16 channels; 32x32 → a 256-px image) and on the encode of one
image of ``--image_size``, both run as Keras infers (``predict_on_batch``
of a model around ``backbone.decoder`` / ``backbone.encoder``, where the
compiled GN kernels run).  Calls of all six contenders are interleaved in
rounds with a rotating order (``bench/train_throughput.py``'s timing, with
its ``--steps``, ``--warmup_steps``, ``--batch_size``, ``--image_size``
and ``--json`` flags); the report gives the ratio of median times and the
median of per-round ratios (``bench/detect_throughput.py``'s, which load
from other processes disturbs less), wall and CPU, and each drop-in's
largest difference from Keras's output relative to Keras's largest
|output|.  The goal (issue 26): ``dropin_fused`` decodes in ≤ 0.85× Keras's
time on CPU, within 1e-4 relative::

    python bench/vae_decode.py                 # SD3 VAE, 256 px, 15 rounds
    python bench/vae_decode.py --tiny --steps=2 --warmup_steps=1 --image_size=32
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GN_KERAS_KERNELS", "require")  # measure the compiled GN kernels

import keras  # noqa: E402
import numpy as np  # noqa: E402
import report  # noqa: E402  (bench/ is the script's directory)
from absl import app, flags  # noqa: E402
from keras_hub.src.models.vae.vae_backbone import VAEBackbone  # noqa: E402  (not exported)
from train_throughput import interleaved_times, summarize  # noqa: E402  (its flags too)

import gn_keras  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("tiny", False, "Smoke run: a 2-stack, 32-filter VAE instead of SD3's.")
FLAGS.set_default("steps", 15)
FLAGS.set_default("warmup_steps", 2)
FLAGS.set_default("batch_size", 1)
FLAGS.set_default("image_size", 256)

# keras-hub's SD3 VAE: 3 image channels, 16 latent channels (mean and log
# variance: 32 encoder outputs); the decoder has one more block per stack.
SD3_VAE = {
    "encoder_num_filters": [128, 256, 512, 512],
    "encoder_num_blocks": [2, 2, 2, 2],
    "decoder_num_filters": [512, 512, 256, 128],
    "decoder_num_blocks": [3, 3, 3, 3],
    "input_channels": 3,
    "sample_channels": 32,
    "output_channels": 3,
}
TINY_VAE = {
    **SD3_VAE,
    "encoder_num_filters": [32, 32],
    "encoder_num_blocks": [1, 1],
    "decoder_num_filters": [32, 32],
    "decoder_num_blocks": [1, 1],
}
GROUPS = ("decode", "encode")
CONTENDERS = ("keras", "dropin", "dropin_fused")
PAIRS = (("dropin", "keras"), ("dropin_fused", "keras"), ("dropin_fused", "dropin"))
GOAL = 0.85
GOAL_TOLERANCE = 1e-4


def build_vae(config, seed=0):
    """The VAE with random weights: Keras's initializers, and random γ and β."""
    keras.utils.set_random_seed(seed)
    vae = VAEBackbone(**config, sampler_method="mode")
    rng = np.random.default_rng(seed)
    for layer in vae._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.GroupNormalization):
            gamma, beta = layer.get_weights()
            layer.set_weights(
                [gamma + rng.normal(0, 0.1, gamma.shape), rng.normal(0, 0.1, beta.shape)]
            )
    return vae


def _predict(part, input_shape):
    """``predict_on_batch`` of a model around one part (encoder or decoder)."""
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, part(inputs)).predict_on_batch


def contenders(config, batch_size, image_size):
    """``(calls, inputs, report)``: name -> zero-argument call, its input, replace report."""
    vae = build_vae(config)
    models = {
        "keras": vae,
        "dropin": gn_keras.replace_group_norms(vae, fuse_activations=False),
        "dropin_fused": gn_keras.replace_group_norms(vae),
    }
    scale = 2 ** (len(config["encoder_num_filters"]) - 1)
    latent = image_size // scale
    rng = np.random.default_rng(1)
    inputs = {
        "decode": rng.normal(size=(batch_size, latent, latent, config["sample_channels"] // 2)),
        "encode": rng.uniform(-1, 1, size=(batch_size, image_size, image_size, 3)),
    }
    calls = {}
    for name, found in models.items():
        model = found if name == "keras" else found.model
        parts = {"decode": model.decoder, "encode": model.encoder}
        for group, part in parts.items():
            x = inputs[group].astype("float32")
            predict = _predict(part, x.shape[1:])
            calls[f"{group}/{name}"] = lambda predict=predict, x=x: predict(x)
    replaced = {name: models[name] for name in CONTENDERS[1:]}
    return calls, inputs, replaced


def max_relative_differences(calls):
    """Per group and drop-in, max |drop-in − Keras| / max |Keras| on one call."""
    differences = {}
    for group in GROUPS:
        expected = np.asarray(calls[f"{group}/keras"]())
        for name in CONTENDERS[1:]:
            got = np.asarray(calls[f"{group}/{name}"]())
            relative = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
            differences[f"{group}/{name}"] = relative
    return differences


def main(argv):
    del argv
    started, machine = report.start()
    config = TINY_VAE if FLAGS.tiny else SD3_VAE
    calls, inputs, replaced = contenders(config, FLAGS.batch_size, FLAGS.image_size)
    differences = max_relative_differences(calls)
    times = interleaved_times(calls, FLAGS.steps, FLAGS.warmup_steps)
    rows = summarize(times, FLAGS.batch_size)
    pairs = [
        (f"{group}: {n}/{d}", f"{group}/{n}", f"{group}/{d}") for group in GROUPS for n, d in PAIRS
    ]
    found = report.both_ratios(rows, times, pairs)
    print(
        f"keras-hub VAEBackbone ({'tiny' if FLAGS.tiny else 'SD3'} config), batch "
        f"{FLAGS.batch_size}, {FLAGS.image_size} px image / {inputs['decode'].shape[1]} px latent, "
        f"{FLAGS.steps} interleaved rounds; {report.header(started, machine)}"
    )
    report.print_step_report(rows, found, "contender", "images/s", ".2f", ratio_format=".3f")
    print("\nmax |drop-in - Keras| / max |Keras|:")
    for name, value in differences.items():
        print(f"  {name}: {value:.2e}")
    goal = found["decode: dropin_fused/keras (median of per-round ratios)"]["wall"]
    exact = max(differences.values()) <= GOAL_TOLERANCE
    verdict = "met" if goal <= GOAL and exact else "NOT met"
    print(
        f"decode dropin_fused/keras wall (median of per-round ratios): {goal:.3f}; goal <= {GOAL} "
        f"within {GOAL_TOLERANCE} relative: {verdict}"
    )
    settings = {
        "vae_config": config,
        "tiny": FLAGS.tiny,
        "image_size": FLAGS.image_size,
        "latent_shape": list(inputs["decode"].shape),
        "batch_size": FLAGS.batch_size,
        "steps": FLAGS.steps,
        "warmup_steps": FLAGS.warmup_steps,
        "goal": f"decode dropin_fused/keras wall <= {GOAL}, outputs within {GOAL_TOLERANCE}",
        "replaced": {name: len(result.replaced) for name, result in replaced.items()},
        "fused": {name: len(result.fused) for name, result in replaced.items()},
    }
    path = FLAGS.json or report.default_path("vae_decode.json")
    report.write_result(
        path,
        settings,
        rows,
        found,
        started=started,
        machine=machine,
        max_relative_difference=differences,
        round_times=times,
    )


if __name__ == "__main__":
    app.run(main)
