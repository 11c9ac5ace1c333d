"""Converted checkpoints reproduce their PyTorch networks: logits and C2–C5.

ResNets, and timm's pre-activation ResNet-V2 (BiT with GN + WS convs, and
resnetv2_50d_gn). Networks are built by timm and torchvision themselves with
random weights (nothing downloads); their norms get random γ, β and running statistics so
a mapping error cannot hide behind identity layers. The Detectron and
detectron2 files are written here from those same weights with names spelled
out in this file, so the converter's own name maps are not reused. Every
comparison is torch's float32 forward against Keras's at 1e-4 relative.
"""

import pickle

import numpy as np
import pytest

from gn_keras.models.pretrained import torch_runtime  # noqa: E402

torch_runtime.keep_triton_out()  # TensorFlow may be loaded already: see torch_runtime
torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from gn_keras import load  # noqa: E402
from gn_keras.models import feature_extractor, load_pretrained, pretrained  # noqa: E402

SIZE = 64
TOLERANCE = 1e-4
BGR_NOTE = "Caffe2 models read BGR: the file's conv1 holds the RGB kernel reversed"


def randomize(network, rng):
    """Random weights everywhere, norms included (their defaults are 1 and 0)."""
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                values = rng.uniform(0.5, 2.0, tensor.shape)
            elif tensor.ndim == 1 and name.endswith("weight"):  # γ
                values = rng.uniform(0.5, 1.5, tensor.shape)
            elif tensor.ndim == 1:  # β, running mean, fc bias
                values = rng.normal(0.0, 0.1, tensor.shape)
            else:  # He-scaled, so activations stay O(1) through the depth
                fan_in = int(np.prod(tensor.shape[1:]))
                values = rng.normal(0.0, np.sqrt(2.0 / fan_in), tensor.shape)
            tensor.copy_(torch.from_numpy(values.astype(np.float32)))
    return network.eval()


def torch_outputs(network, images):
    """Logits and the four stages' outputs (C2..C5), as NHWC numpy.

    The stages are ``layer1..layer4`` of a ResNet, ``stages`` of timm's ResNet-V2.
    """
    stages = getattr(network, "stages", None) or [
        getattr(network, f"layer{i}") for i in range(1, 5)
    ]
    found = {}
    hooks = [
        stage.register_forward_hook(
            lambda _m, _i, out, key=f"C{i + 2}": found.__setitem__(key, out)
        )
        for i, stage in enumerate(stages)
    ]
    with torch.no_grad():
        logits = network(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    for hook in hooks:
        hook.remove()
    maps = {key: value.numpy().transpose(0, 2, 3, 1) for key, value in found.items()}
    return logits.numpy(), maps


def assert_close(got, want, what):
    relative = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert relative <= TOLERANCE, f"{what}: relative difference {relative:.3g}"


def assert_same_network(model, network, images, compare_logits=True):
    want_logits, want_maps = torch_outputs(network, images)
    got_maps = feature_extractor(model)(images, training=False)
    for key in ("C2", "C3", "C4", "C5"):
        assert_close(np.asarray(got_maps[key]), want_maps[key], key)
    if compare_logits:
        assert_close(np.asarray(model(images, training=False)), want_logits, "logits")


def numpy_state(network):
    return {name: value.numpy().copy() for name, value in network.state_dict().items()}


def detectron_blobs(state, norm_tag, affine_from_bn=False):
    """torchvision names → Caffe2 blob names, written out independently."""
    blobs = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[0] == "conv1":
            blobs["conv1_w"] = value[:, ::-1].copy()  # BGR_NOTE
        elif parts[0] == "bn1":
            blobs[f"res_conv1_{norm_tag}_{parts[-1]}"] = value
        elif parts[0] == "fc":
            blobs[f"pred_{parts[-1][0]}"] = value
        else:
            stage, block, module = int(parts[0][-1]) + 1, parts[1], parts[2]
            if module == "downsample":
                branch, is_norm = "branch1", parts[3] == "1"
            else:
                branch, is_norm = f"branch2{'abc'[int(module[-1]) - 1]}", module.startswith("bn")
            prefix = f"res{stage}_{block}_{branch}"
            blobs[f"{prefix}_{norm_tag}_{parts[-1]}" if is_norm else f"{prefix}_w"] = value
    renamed = {"weight": "s", "bias": "b"}
    blobs = {
        (key.rsplit("_", 1)[0] + "_" + renamed[key.rsplit("_", 1)[1]])
        if key.rsplit("_", 1)[1] in renamed
        else key: value
        for key, value in blobs.items()
    }
    if affine_from_bn:  # MSRA's affine BN: fold the statistics into s and b
        for key in [k for k in blobs if k.endswith("_running_mean")]:
            base = key[: -len("_running_mean")]
            scale = blobs[f"{base}_s"] / np.sqrt(blobs[f"{base}_running_var"] + 1e-5)
            blobs[f"{base}_b"] = blobs[f"{base}_b"] - blobs.pop(key) * scale
            blobs[f"{base}_s"] = scale
            del blobs[f"{base}_running_var"]
    blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])  # solver state, skipped
    return blobs


@pytest.fixture
def images(rng):
    return rng.standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)


def test_timm_resnet50_gn_from_safetensors_and_detectron_pkl(tmp_path, rng, images):
    from safetensors.torch import save_file

    network = randomize(timm.create_model("resnet50_gn", pretrained=False), rng)
    path = tmp_path / "resnet50_gn.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    model = load_pretrained("timm", path, "resnet50", norm="gn", image_size=SIZE)
    assert_same_network(model, network, images)

    blobs = detectron_blobs(numpy_state(network), "gn")
    assert "res_conv1_gn_s" in blobs and "res2_0_branch1_w" in blobs and "pred_w" in blobs
    with open(tmp_path / "R-50-GN.pkl", "wb") as handle:
        pickle.dump(blobs, handle)
    conversion = pretrained.convert_checkpoint(
        "detectron", tmp_path / "R-50-GN.pkl", image_size=SIZE
    )
    assert conversion.report["model"] == "resnet50"
    assert conversion.report["skipped_bookkeeping_tensors"] == 1
    assert_same_network(conversion.model, network, images)
    # Detectron's pixel means, stored in RGB order for the flipped stem.
    assert conversion.preprocessing["mean"] == [122.7717, 115.9465, 102.9801]
    assert conversion.preprocessing["std"] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_torchvision_resnet18_bn_from_pth(tmp_path, rng, images, norm):
    network = randomize(torchvision.models.resnet18(weights=None), rng)
    torch.save(network.state_dict(), tmp_path / "resnet18.pth")
    conversion = pretrained.convert_checkpoint(
        "torchvision", tmp_path / "resnet18.pth", "resnet18", norm=norm, image_size=SIZE
    )
    assert_same_network(conversion.model, network, images)
    spec = load.check_preprocessing(conversion.preprocessing)
    np.testing.assert_allclose(spec["mean"], [123.675, 116.28, 103.53])
    np.testing.assert_allclose(spec["std"], [58.395, 57.12, 57.375])
    # The built-in check runs timm on the same tensors and agrees.
    assert pretrained.verify(conversion)["passed"]


def test_torchvision_resnet34_gn_in_a_training_checkpoint(tmp_path, rng, images):
    network = torchvision.models.resnet34(
        weights=None, norm_layer=lambda c: torch.nn.GroupNorm(32, c)
    )
    randomize(network, rng)
    state = {f"module.{k}": v for k, v in network.state_dict().items()}  # DDP-wrapped
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "checkpoint.pt")
    model = load_pretrained("torchvision", tmp_path / "checkpoint.pt", image_size=SIZE)
    assert model.name == "resnet34_gn"
    assert_same_network(model, network, images)


def test_detectron_affine_bn_pkl_into_bn_and_frozen_bn(tmp_path, rng, images):
    network = randomize(torchvision.models.resnet18(weights=None), rng)
    blobs = detectron_blobs(numpy_state(network), "bn", affine_from_bn=True)
    assert "res_conv1_bn_s" in blobs and not any("running" in key for key in blobs)
    with open(tmp_path / "R-18.pkl", "wb") as handle:
        pickle.dump({"blobs": blobs}, handle, protocol=2)
    for norm in ("bn", "frozen_bn"):
        conversion = pretrained.convert_checkpoint(
            "detectron", tmp_path / "R-18.pkl", norm=norm, image_size=SIZE
        )
        assert conversion.report["source_norm"] == "affine"
        assert_same_network(conversion.model, network, images)
    assert pretrained.verify(conversion)["passed"]


def detectron2_state(state, prefix):
    """torchvision names → detectron2 backbone names under ``prefix``."""
    renamed = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] == "conv1":
            key = "stem.conv1." + parts[-1]
        elif parts[0] == "bn1":
            key = "stem.conv1.norm." + parts[-1]
        elif parts[0] == "fc":
            continue  # a detector has no ImageNet classifier
        else:
            stage = f"res{int(parts[0][-1]) + 1}.{parts[1]}"
            module = parts[2]
            if module == "downsample":
                key = f"{stage}.shortcut." + ("norm." if parts[3] == "1" else "") + parts[-1]
            else:
                conv = "conv" + module[-1]
                key = f"{stage}.{conv}." + ("norm." if module.startswith("bn") else "") + parts[-1]
        renamed[prefix + key] = value
    return renamed


def test_detectron2_detector_checkpoint_backbone(tmp_path, rng, images):
    network = randomize(
        torchvision.models.resnet18(weights=None, norm_layer=lambda c: torch.nn.GroupNorm(32, c)),
        rng,
    )
    state = detectron2_state(network.state_dict(), "backbone.bottom_up.")
    state["backbone.fpn_lateral2.weight"] = torch.zeros(256, 64, 1, 1)
    torch.save({"model": state, "iteration": 90000}, tmp_path / "model_final.pth")
    with pytest.raises(
        ValueError,
        match=r"^\S+model_final.pth: 1 source tensor\(s\) unused: backbone.fpn_lateral2.weight; "
        r"2 model weight\(s\) not filled: logits/kernel, logits/bias; pass allow_partial",
    ):
        pretrained.convert_checkpoint(
            "detectron2", tmp_path / "model_final.pth", input_format="rgb"
        )
    conversion = pretrained.convert_checkpoint(
        "detectron2",
        tmp_path / "model_final.pth",
        input_format="rgb",
        image_size=SIZE,
        allow_partial=True,
    )
    assert conversion.report["unused_source_tensors"] == ["backbone.fpn_lateral2.weight"]
    assert_same_network(conversion.model, network, images, compare_logits=False)
    check = pretrained.verify(conversion)
    assert check["compared"] == "C5" and check["passed"]


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"source": "caffe"}, "`source` must be one of timm, "),
        ({"model": "resnet7"}, "`model` must be one of resnet18, "),
        ({"norm": "ln"}, "`norm` must be one of gn, bn, "),
        ({"groups": 0}, "`groups` must be a positive integer or unset, got groups=0."),
        ({"image_size": True}, "got image_size=True."),
        ({"input_format": "hsv"}, "got input_format='hsv'."),
    ],
)
def test_bad_arguments_are_refused_before_the_checkpoint_is_read(tmp_path, arguments, named):
    options = {"source": "torchvision", "checkpoint": tmp_path / "absent.pth", **arguments}
    with pytest.raises(ValueError) as caught:
        pretrained.convert_checkpoint(**options)
    message = str(caught.value)
    assert message.startswith("load_pretrained: argument `") and named in message, message


@pytest.fixture(scope="module")
def bit_checkpoint(tmp_path_factory):
    """timm's BiT ResNet-50x1 (GN + WS convs), random weights, as .safetensors."""
    from conftest import SESSION_SEED
    from safetensors.torch import save_file

    rng = np.random.default_rng([SESSION_SEED, 50])
    network = randomize(timm.create_model("resnetv2_50x1_bit", pretrained=False), rng)
    path = tmp_path_factory.mktemp("bit") / "resnetv2_50x1_bit.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return network, path


def test_timm_bit_resnetv2_50x1_converts_with_gn_ws(tmp_path, bit_checkpoint, images):
    network, path = bit_checkpoint
    conversion = pretrained.convert_checkpoint("timm", path, norm="gn+ws", image_size=SIZE)
    report = conversion.report
    assert (report["model"], report["width_multiplier"], report["ws_epsilon"]) == (
        "resnetv2_50",
        1,
        1e-8,
    )
    assert report["filled_weights"] == len(network.state_dict())
    assert_same_network(conversion.model, network, images)
    assert pretrained.verify(conversion)["passed"]
    # The .keras file keeps timm's ε in every WS conv.
    conversion.model.save(tmp_path / "bit.keras")
    reloaded = load.load_model(tmp_path / "bit.keras")
    assert {layer.epsilon for layer in reloaded.layers if hasattr(layer, "effective_kernel")} == {
        1e-8
    }
    assert_same_network(reloaded, network, images)
    # timm's ResNet-V2 normalize with the Inception mean/std (0.5, 0.5).
    assert conversion.preprocessing["mean"] == conversion.preprocessing["std"] == [127.5] * 3


def test_timm_resnetv2_50d_gn_converts_from_a_training_checkpoint(tmp_path, rng, images):
    network = randomize(timm.create_model("resnetv2_50d_gn", pretrained=False), rng)
    state = {f"module.{k}": v for k, v in network.state_dict().items()}  # DDP-wrapped
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "checkpoint.pth")
    conversion = pretrained.convert_checkpoint("timm", tmp_path / "checkpoint.pth", image_size=SIZE)
    assert conversion.model.name == "resnetv2_50d_gn" and conversion.report["ws_epsilon"] is None
    assert_same_network(conversion.model, network, images)
    assert pretrained.verify(conversion)["passed"]


def test_wrong_resnetv2_mappings_fail(bit_checkpoint, images):
    network, path = bit_checkpoint
    # BiT's kernels in plain convs: a consistent network, but not BiT.
    plain = pretrained.convert_checkpoint("timm", path, norm="gn", image_size=SIZE)
    with pytest.raises(AssertionError, match="relative difference"):
        assert_same_network(plain.model, network, images)
    # Two same-shaped norms swapped, as a wrong name map would: the check refuses.
    b_norm, c_norm = (plain.model.get_layer(f"res3_block2_{u}_norm") for u in "bc")
    b_weights = b_norm.get_weights()
    b_norm.set_weights(c_norm.get_weights())
    c_norm.set_weights(b_weights)
    with pytest.raises(load.ModelFileError, match=r"logits differ from torch's by .* than 0.0001"):
        pretrained.verify(plain)


def test_resnetv2_refusals_name_what_the_checkpoint_holds(tmp_path, bit_checkpoint):
    _, path = bit_checkpoint
    with pytest.raises(
        ValueError, match=r"holds a ResNet-V2; only GN ones convert, .* not norm=bn"
    ):
        pretrained.convert_checkpoint("timm", path, norm="bn")
    with pytest.raises(
        ValueError,
        match=r"holds a resnetv2_50 \(pre-activation bottlenecks 3/4/6/3, 7x7 stem of width 64\)"
        r" but model=resnetv2_50d was asked",
    ):
        pretrained.convert_checkpoint("timm", path, "resnetv2_50d", norm="gn+ws")
    network = torchvision.models.resnet18(weights=None)
    torch.save(network.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match="norm=gn\\+ws is for timm's ResNet-V2"):
        pretrained.convert_checkpoint("torchvision", tmp_path / "resnet18.pth", norm="gn+ws")
