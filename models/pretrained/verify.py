"""Running the source network in PyTorch beside the converted Keras model.

The reference is timm's ResNet (torchvision's layout and names, which every
source is renamed into), or timm's ``ResNetV2`` of a converted ResNet-V2
(:func:`.timm_resnetv2.reference_network`), given the checkpoint's own tensors. Both get the
same random batch of already-normalized images (the Keras model the
channels in RGB order when the source read BGR); the largest logit
difference, relative to the largest |logit| of torch, must stay within
``tolerance`` (1e-4 in float32). Without a filled classifier the C5 maps
(a ResNet-V2: the maps after its final norm, timm's ``forward_features``)
are compared instead.

Without torch and timm installed the check is skipped and says so.
"""

import functools

import keras
import numpy as np

from gn_keras import export, load
from gn_keras.models import endpoints
from gn_keras.models.pretrained import timm_resnetv2, torch_runtime

# Keras and PyTorch, both float32: the same floor as every export's check
# (sums reordered by another runtime), from its one home.
TOLERANCE = export.DEFAULT_TOLERANCE
BATCH = 2
SEED = 20180322


def _runtime():
    try:
        return torch_runtime.import_module("torch"), torch_runtime.import_module("timm")
    except ImportError:
        return None


def _reference(conversion, torch, timm):
    report = conversion.report
    if "width_multiplier" in report:  # a ResNet-V2
        network = timm_resnetv2.reference_network(timm, report)
        state = timm_resnetv2.torch_state(conversion.canonical, torch)
        network.load_state_dict(_fitting(state, network), strict=False)
        return network.eval()
    options = {"pretrained": False, "num_classes": report["num_classes"]}
    if report["norm"] == "gn":
        options["norm_layer"] = functools.partial(
            timm.layers.GroupNorm, num_groups=report["groups"]
        )
    network = timm.create_model(report["model"], **options)
    state = {
        name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in conversion.canonical.items()
    }
    if report["source_norm"] == "affine":  # μ = 0, σ² = 1 − ε: see assign.py
        for name, value in list(state.items()):
            if name.endswith(".bias") and not name.startswith("fc."):
                module = name[: -len(".bias")]
                state[f"{module}.running_mean"] = torch.zeros_like(value)
                state[f"{module}.running_var"] = torch.full_like(value, 1.0 - 1e-5)
    network.load_state_dict(_fitting(state, network), strict=False)
    return network.eval()


def verify(conversion, tolerance=TOLERANCE):
    """Compare torch and Keras on one random batch; return the report entry.

    Raises :class:`gn_keras.load.ModelFileError` naming the checkpoint when
    the difference exceeds ``tolerance``.
    """
    report = conversion.report
    runtime = _runtime()
    if runtime is None:
        return {"skipped": "torch and timm are not both installed"}
    if _unfilled(report) and not _only_head_missing(report):
        return {"skipped": "backbone weights are missing (allow_partial)"}
    torch, timm = runtime
    size = report["image_size"]
    images = np.random.default_rng(SEED).standard_normal((BATCH, 3, size, size), np.float32)
    keras_images = images.transpose(0, 2, 3, 1)
    if conversion.source_bgr:
        keras_images = keras_images[..., ::-1]
    network = _reference(conversion, torch, timm)
    compared = _compared(report)
    with torch.no_grad():
        tensor = torch.from_numpy(images)
        want = network(tensor) if compared == "logits" else network.forward_features(tensor)
    got = _keras_output(conversion.model, keras_images, compared)
    return _judge(got, want.numpy(), compared, tolerance, report, torch, timm)


def _compared(report):
    """Logits; without a classifier, what timm's ``forward_features`` gives."""
    if not _unfilled(report):
        return "logits"
    return timm_resnetv2.FEATURES_LAYER if "width_multiplier" in report else "C5"


def _keras_output(model, images, compared):
    """The Keras model's ``compared`` output, maps in torch's NCHW."""
    if compared == "logits":
        return np.asarray(model(images, training=False))
    if compared == "C5":
        maps = endpoints.feature_extractor(model, ("C5",))(images, training=False)["C5"]
    else:
        maps = keras.Model(model.input, model.get_layer(compared).output)(images, training=False)
    return np.asarray(maps).transpose(0, 3, 1, 2)


def _unfilled(report):
    """Keras weight paths left as built: missing, or of another shape (allow_partial)."""
    # A mismatch reads "SOURCE as (SHAPE) vs PATH (SHAPE)" (assign.FillResult).
    mismatched = [entry.split(" vs ")[1].rsplit(" (", 1)[0] for entry in report["mismatched"]]
    return report["missing_model_weights"] + mismatched


def _only_head_missing(report):
    return all(path.startswith("logits/") for path in _unfilled(report))


def _fitting(state, network):
    """The tensors of ``state`` whose shape fits ``network`` (allow_partial leaves the rest)."""
    own = network.state_dict()
    return {
        name: value
        for name, value in state.items()
        if name not in own or tuple(own[name].shape) == tuple(value.shape)
    }


def _judge(got, want, compared, tolerance, report, torch, timm):
    difference = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    relative = difference / max(scale, np.finfo(np.float32).tiny)
    entry = {
        "compared": compared,
        "reference": f"timm {timm.__version__} on torch {torch.__version__}",
        "batch_shape_nchw": list(got.shape[:1]) + [3, report["image_size"], report["image_size"]],
        "max_abs_difference": difference,
        "max_abs_reference": scale,
        "max_relative_difference": relative,
        "tolerance": tolerance,
        "passed": relative <= tolerance,
    }
    if not entry["passed"]:
        raise load.ModelFileError(
            report["checkpoint"],
            f"the converted model's {compared} differ from torch's by {relative:.3g} "
            f"(relative; max |diff| {difference:.3g}), more than {tolerance:g}.",
        )
    return entry
