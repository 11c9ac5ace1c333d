"""The percentile callback behind the feature-distribution study (Figure 6).

Figure 6 of the paper follows the distribution of VGG-16's conv5_3 output,
taken before normalization and ReLU, as the 1st/20th/80th/99th percentiles
of its responses over training.  ``FeaturePercentiles`` is a Keras callback
that, at every epoch end, runs the model up to one named layer on a fixed
batch (in inference mode, so no BN statistic moves) and records those
percentiles with ``np.percentile`` over every element of the response.

Records go to a JSON file in the run directory and are keyed by epoch, so a
run resumed by the training loop keeps what earlier attempts wrote and an
epoch recorded twice is simply overwritten.

The study passes the callback to ``train.classify.train`` (``run_callbacks``),
whose loop calls ``on_epoch_end`` after an epoch's results and before its
checkpoint: every epoch is recorded live, with the weights the loop has at
that epoch's end, and a run killed and resumed still ends with one record
per epoch (``check_recorded`` verifies it).
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from gn_keras.train import data, outputs

PERCENTILES = (1, 20, 80, 99)
FEATURE_STATS_FILE = "feature_stats.json"
# Images in the fixed batch (fewer if the validation set is smaller).
PROBE_IMAGES = 64
_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def response_percentiles(activations, percentiles=PERCENTILES):
    """Percentiles of every element of ``activations`` (float64 NumPy)."""
    values = np.asarray(activations, dtype=np.float64).ravel()
    return [float(v) for v in np.percentile(values, percentiles)]


def read_feature_stats(path):
    """The records of a feature_stats.json, or an empty layout if absent."""
    if not os.path.exists(path):
        return {"layer": None, "percentiles": list(PERCENTILES), "epochs": []}
    return outputs.read_json(path)


class FeaturePercentiles(keras.callbacks.Callback):
    """Record percentiles of one layer's output on a fixed batch per epoch.

    Args:
        layer_name: name of the layer (in ``self.model``) whose output is
            measured; ``None`` for the model's last conv (``last_conv_layer``),
            whose output is Figure 6's response before normalization and ReLU.
        images: the fixed batch, a NumPy array the model accepts.
        path: JSON file the records are written to after every epoch.
        percentiles: which percentiles to record, each in [0, 100].
    """

    def __init__(self, layer_name, images, path, percentiles=PERCENTILES):
        super().__init__()
        if layer_name is not None and (not isinstance(layer_name, str) or not layer_name):
            raise ValueError(
                f"FeaturePercentiles: `layer_name` must be None or a non-empty string, "
                f"got layer_name={layer_name!r}."
            )
        images = np.asarray(images)
        if images.ndim < 2 or images.shape[0] == 0:
            raise ValueError(
                "FeaturePercentiles: `images` must be a non-empty batch, got an "
                f"array of shape {images.shape}."
            )
        percentiles = tuple(percentiles)
        if not percentiles or any(not 0 <= p <= 100 for p in percentiles):
            raise ValueError(
                f"FeaturePercentiles: `percentiles` must be numbers in [0, 100], "
                f"got percentiles={percentiles!r}."
            )
        self.layer_name = layer_name
        self.images = images
        self.path = path
        self.percentiles = percentiles
        self._probe = None
        self._probed_model = None
        self._probed_layer = None

    def _probe_model(self):
        # A sub-model sharing the layers (and so the weights) of the trained
        # model; rebuilt only if the callback is attached to another model.
        if self._probed_model is not self.model:
            name = self.layer_name or last_conv_layer(self.model)
            try:
                layer = self.model.get_layer(name)
            except ValueError:
                names = [layer.name for layer in self.model.layers]
                raise ValueError(
                    f"FeaturePercentiles: `layer_name`={name!r} is not a "
                    f"layer of model {self.model.name!r}; its layers are {names}."
                ) from None
            self._probe = keras.Model(self.model.input, layer.output)
            self._probed_model, self._probed_layer = self.model, name
        return self._probe

    def activations(self):
        """The layer's response to the fixed batch, in inference mode."""
        probe = self._probe_model()
        return keras.ops.convert_to_numpy(probe(self.images, training=False))

    def on_epoch_end(self, epoch, logs=None):
        record = {
            "epoch": int(epoch),
            "values": response_percentiles(self.activations(), self.percentiles),
        }
        stats = read_feature_stats(self.path)
        kept = [r for r in stats["epochs"] if r["epoch"] != record["epoch"]]
        stats.update(
            layer=self._probed_layer,
            percentiles=list(self.percentiles),
            epochs=sorted(kept + [record], key=lambda r: r["epoch"]),
        )
        outputs.write_json_atomically(self.path, stats)


def last_conv_layer(model):
    """The name of ``model``'s last conv layer, whose output is pre-norm, pre-ReLU.

    In the zoo every conv is followed by its normalization and then the
    ReLU, with no activation of its own (for VGG-16 this is
    ``block5_3_conv``, the paper's conv5_3).
    """
    convs = [layer for layer in model.layers if isinstance(layer, _CONV_TYPES)]
    if not convs:
        raise ValueError(f"Model {model.name!r} has no conv layer to measure.")
    last = convs[-1]
    if last.activation is not keras.activations.linear:
        raise ValueError(
            f"The last conv {last.name!r} of model {model.name!r} applies "
            f"{last.activation.__name__}; its output is not the pre-ReLU response."
        )
    return last.name


def fixed_batch(config, size=PROBE_IMAGES):
    """The first ``size`` validation images, preprocessed as for evaluation."""
    pipeline = data.InputPipeline(
        data.make_source(config), dataclasses.replace(config, batch_size_per_replica=size)
    )
    dataset = pipeline.eval_dataset_fn(1)(tf.distribute.InputContext())
    images, _, weights = next(iter(dataset))
    # Evaluation pads a short validation set with zero-weight images.
    return images.numpy()[weights.numpy() > 0]


def run_callbacks(config):
    """The callbacks of one study run: percentiles of its last conv, live."""
    path = os.path.join(config.model_dir, FEATURE_STATS_FILE)
    return [FeaturePercentiles(None, fixed_batch(config), path)]


def check_recorded(config, results):
    """Refuse a run whose feature_stats.json misses one of its epochs.

    Live recording cannot miss one; a run started before recording was live
    (its statistics came after the run) and resumed since can.
    """
    path = os.path.join(config.model_dir, FEATURE_STATS_FILE)
    recorded = {r["epoch"] for r in read_feature_stats(path)["epochs"]}
    missing = [r["epoch"] for r in results["epochs"] if r["epoch"] not in recorded]
    if missing:
        raise ValueError(
            f"Run {config.model_dir!r} has no feature statistics for epochs {missing} "
            f"in {path!r}; delete the run directory to train it again."
        )
