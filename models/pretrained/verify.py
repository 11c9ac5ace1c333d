"""Running the source network in PyTorch beside the converted Keras model.

The reference is timm's ResNet (torchvision's layout and names, which every
source is renamed into), given the checkpoint's own tensors. Both get the
same random batch of already-normalized images (the Keras model the
channels in RGB order when the source read BGR); the largest logit
difference, relative to the largest |logit| of torch, must stay within
``tolerance`` (1e-4 in float32). Without a filled classifier the C5 maps
are compared instead.

Without torch and timm installed the check is skipped and says so.
"""

import functools

import numpy as np

from gn_keras import load
from gn_keras.models import endpoints
from gn_keras.models.pretrained import torch_runtime

TOLERANCE = 1e-4
BATCH = 2
SEED = 20180322


def _runtime():
    try:
        return torch_runtime.import_module("torch"), torch_runtime.import_module("timm")
    except ImportError:
        return None


def _reference(conversion, torch, timm):
    report = conversion.report
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
    network.load_state_dict(state, strict=False)
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
    if report["missing_model_weights"] and not _only_head_missing(report):
        return {"skipped": "backbone weights are missing (allow_partial)"}
    torch, timm = runtime
    size = report["image_size"]
    images = np.random.default_rng(SEED).standard_normal((BATCH, 3, size, size), np.float32)
    keras_images = images.transpose(0, 2, 3, 1)
    if conversion.source_bgr:
        keras_images = keras_images[..., ::-1]
    network = _reference(conversion, torch, timm)
    compared = "C5" if report["missing_model_weights"] else "logits"
    with torch.no_grad():
        tensor = torch.from_numpy(images)
        want = network.forward_features(tensor) if compared == "C5" else network(tensor)
    want = want.numpy()
    if compared == "C5":
        extractor = endpoints.feature_extractor(conversion.model, ("C5",))
        got = np.asarray(extractor(keras_images, training=False)["C5"]).transpose(0, 3, 1, 2)
    else:
        got = np.asarray(conversion.model(keras_images, training=False))
    return _judge(got, want, compared, tolerance, report, torch, timm)


def _only_head_missing(report):
    return all(path.startswith("logits/") for path in report["missing_model_weights"])


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
