"""gn-convert and the model directory it writes; the converter's one-line refusals.

A small torchvision ResNet-18 with GN (random weights, 32×32 inputs) is the
checkpoint throughout. The directory gn-convert writes is then taken as a
trained model by gn-export's and gn-finetune's own functions.
"""

import json
import os
import pickle
import sys

import forked_cli
import numpy as np
import pytest

from gn_keras.models.pretrained import torch_runtime  # noqa: E402

torch_runtime.keep_triton_out()  # TensorFlow may be loaded already: see torch_runtime
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("timm")

from test_pretrained import assert_close, randomize, torch_outputs  # noqa: E402

from gn_keras import load  # noqa: E402
from gn_keras.models import pretrained  # noqa: E402

SIZE = 32


def gn_resnet18(rng):
    norm = lambda channels: torch.nn.GroupNorm(32, channels)  # noqa: E731
    return randomize(torchvision.models.resnet18(weights=None, norm_layer=norm), rng)


@pytest.fixture
def network(rng):
    return gn_resnet18(rng)


def save(state, path):
    torch.save(state, path)
    return path


def convert(path, **options):
    options = {"image_size": SIZE, **options}
    return pretrained.convert_checkpoint("torchvision", path, **options)


def refusal(path, **options):
    with pytest.raises(ValueError) as caught:
        convert(path, **options)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def test_unused_missing_and_mismatched_tensors_are_refused(tmp_path, network):
    state = network.state_dict()
    extra = save({**state, "head.extra.weight": torch.ones(3)}, tmp_path / "extra.pth")
    assert refusal(extra).endswith(
        ": 1 source tensor(s) unused: head.extra.weight; pass allow_partial=True "
        "(--allow_partial) to load the rest."
    )
    no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
    backbone = save(no_fc, tmp_path / "backbone.pth")
    assert "2 model weight(s) not filled: logits/kernel, logits/bias;" in refusal(backbone)
    full = save(state, tmp_path / "full.pth")
    assert (
        "2 shape mismatch(es): fc.weight as (512, 1000) vs logits/kernel (512, 10), "
        "fc.bias as (1000,) vs logits/bias (10,);" in refusal(full, num_classes=10)
    )


def test_norm_and_depth_mismatches_name_both(tmp_path, network):
    path = save(network.state_dict(), tmp_path / "r18_gn.pth")
    assert refusal(path, norm="bn").endswith(
        "holds GN layers (no running statistics) but norm=bn was asked; use norm=gn."
    )
    assert refusal(path, model="resnet50").endswith(
        "holds a resnet18 (basic blocks 2/2/2/2) but model=resnet50 was asked."
    )
    bn_path = save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "bn.pth")
    assert "holds BN layers but norm=gn was asked" in refusal(bn_path, norm="gn")


def test_pickles_that_run_code_are_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"conv1_w": Exploit()}, handle)
    with pytest.raises(load.ModelFileError, match="refusing to load posix.system"):
        pretrained.convert_checkpoint("detectron", tmp_path / "evil.pkl")


def test_allow_partial_loads_the_backbone_and_checks_c5(tmp_path, network, rng):
    no_fc = {k: v for k, v in network.state_dict().items() if not k.startswith("fc.")}
    conversion = convert(save(no_fc, tmp_path / "backbone.pth"), allow_partial=True)
    assert conversion.report["missing_model_weights"] == ["logits/kernel", "logits/bias"]
    assert conversion.report["unused_source_tensors"] == []
    check = pretrained.verify(conversion)
    assert check["compared"] == "C5" and check["passed"]


def run_convert(*flags):
    return forked_cli.run(
        [sys.executable, "-m", "gn_keras.train.convert", *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_gn_convert_writes_a_model_dir_that_export_and_finetune_take(tmp_path, network, rng):
    checkpoint = save(network.state_dict(), tmp_path / "r18_gn.pth")
    out = tmp_path / "converted"
    flags = [f"--checkpoint={checkpoint}", "--source=torchvision", "--model=resnet18"]
    flags += ["--norm=gn", f"--image_size={SIZE}", f"--output_dir={out}"]
    done = run_convert(*flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "logits match torch" in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["converted", "r18_gn.pth"]  # no staging left
    report = json.loads((out / "convert_report.json").read_text())
    assert report["verification"]["passed"] and report["verification"]["tolerance"] == 1e-4

    model = load.load_model(out)
    images = rng.standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    assert_close(
        np.asarray(model(images, training=False)), torch_outputs(network, images)[0], "logits"
    )
    spec = load.load_preprocessing(out)
    assert spec["image_size"] == [SIZE, SIZE] and spec["num_classes"] == 1000

    # The same conversion again is a no-op; a different one is refused.
    same = dict(image_size=SIZE, verify=False)  # torch was compared above
    again = pretrained.convert_to_directory("torchvision", checkpoint, out, **same)
    assert again["unchanged"]
    with pytest.raises(ValueError, match="already exists and holds a different conversion"):
        pretrained.convert_to_directory("torchvision", checkpoint, out, groups=16, **same)

    _export_takes(out, tmp_path / "exported")
    _finetune_takes(out, tmp_path / "finetuned")


def _export_takes(model_dir, output_dir):
    from gn_keras.train import export as export_script

    report = export_script.export_all(
        load.load_model(model_dir), output_dir, load.load_preprocessing(model_dir), formats=()
    )
    assert max(report["max_abs_difference"]["saved_model"].values()) < 1e-3
    assert os.path.isfile(output_dir / "saved_model" / "saved_model.pb")


def _finetune_takes(model_dir, run_dir):
    from gn_keras.train import config as config_lib
    from gn_keras.train import finetune

    config = config_lib.TrainConfig(
        dataset="synthetic",
        image_size=SIZE,
        num_classes=3,
        epochs=1,
        steps_per_epoch=1,
        eval_steps=1,
        batch_size_per_replica=2,
        warmup_epochs=0.0,
        log_every_steps=1000,
        model_dir=str(run_dir),
    )
    results = finetune.finetune(config, finetune.FinetuneOptions(str(model_dir)))
    assert np.isfinite(results["final_top1_error"])
    assert json.loads((run_dir / finetune.FINETUNE_FILE).read_text())["num_classes"] == 3


def test_gn_convert_reports_a_refusal_in_one_line(tmp_path, network):
    checkpoint = save(network.state_dict(), tmp_path / "r18_gn.pth")
    done = run_convert(
        "--source=torchvision",
        f"--checkpoint={checkpoint}",
        "--norm=bn",
        f"--output_dir={tmp_path}/o",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"gn-convert: error: {checkpoint}: holds GN layers (no running statistics) "
        "but norm=bn was asked; use norm=gn."
    )
    assert not os.path.exists(tmp_path / "o")


def test_gn_convert_flags_take_resnetv2_with_gn_ws(monkeypatch):
    # The whole run is in test_pretrained.py and docs/pretrained.md: its
    # SavedModel export of a ResNet-50 alone takes minutes on 2 cores.
    from absl import flags

    from gn_keras.train import convert as convert_script

    values = flags.FlagValues()
    convert_script.define_flags(values)
    values(["gn-convert", "--source=timm", "--checkpoint=bit.safetensors", "--output_dir=o"])
    values(["gn-convert", "--model=resnetv2_50", "--norm=gn+ws"])
    taken = {}
    monkeypatch.setattr(pretrained, "convert_to_directory", lambda *a, **k: taken.update(a=a))
    convert_script.convert(values)
    assert taken["a"] == ("timm", "bit.safetensors", "o", "resnetv2_50", "gn+ws")
    with pytest.raises(flags.IllegalFlagValueError, match=r"resnetv2_50\|resnetv2_50d\|"):
        values(["gn-convert", "--model=resnetv2_26"])
