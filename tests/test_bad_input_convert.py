"""gn-convert under issue 23's scenarios: --allow_partial, a killed conversion, modes, escapes.

One conversion (a random GN ResNet-18 from torchvision, 32x32, with a
1000-class head converted for 10 classes) serves three checks: the partial
load the shape refusal suggests goes through and is verified on C5 against
torch; a dead conversion's staging beside the output is swept; the output
folder gets the mode the umask gives.  Checkpoints holding Python objects
are refused in one plain line naming them, with nothing run.
"""

import argparse
import os
import stat

import numpy as np
import pytest

from gn_keras.models.pretrained import torch_runtime

torch_runtime.keep_triton_out()  # TensorFlow may be loaded already: see torch_runtime
torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

from test_bad_input_detection import assert_one_line, ending  # noqa: E402
from test_pretrained_cli import gn_resnet18, save  # noqa: E402

from gn_keras import load  # noqa: E402
from gn_keras.models import pretrained  # noqa: E402
from gn_keras.models.pretrained import checkpoints  # noqa: E402

SIZE = 32


def test_a_partial_conversion_after_the_shape_refusal_is_verified_swept_and_shared(rng, tmp_path):
    path = save(gn_resnet18(rng).state_dict(), tmp_path / "r18.pth")
    output_dir = tmp_path / "out"
    with pytest.raises(load.ModelFileError, match="pass allow_partial=True"):
        pretrained.convert_checkpoint("torchvision", path, image_size=SIZE, num_classes=10)
    stale = tmp_path / "out.tmp-999999999"  # a conversion killed mid-write: its lock is free
    (stale / "saved_model").mkdir(parents=True)
    (stale / "model.keras").write_bytes(rng.bytes(1000))
    previous = os.umask(0o027)
    try:
        report = pretrained.convert_to_directory(
            "torchvision", path, output_dir, image_size=SIZE, num_classes=10, allow_partial=True
        )
    finally:
        os.umask(previous)
    assert sorted(os.listdir(tmp_path)) == ["out", "r18.pth"]
    assert stat.S_IMODE(os.stat(output_dir).st_mode) == 0o750
    assert [entry.split(" as ")[0] for entry in report["mismatched"]] == ["fc.weight", "fc.bias"]
    check = report["verification"]
    assert check["compared"] == "C5" and check["passed"], check
    model = load.load_model(output_dir)
    assert model.output.shape[-1] == 10
    # The filled part is the checkpoint's: the stem conv in Keras layout.
    want = gn_resnet18_state(path)["conv1.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel.numpy(), want)


def gn_resnet18_state(path):
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["namespace", "code"])
def test_a_checkpoint_holding_python_objects_is_one_plain_line(tmp_path, kind):
    marker = tmp_path / "ran"
    extra = argparse.Namespace(lr=0.1) if kind == "namespace" else _RunsCode(str(marker))
    path = save({"state_dict": {"w": torch.ones(2)}, "extra": extra}, tmp_path / "ckpt.pth")
    with pytest.raises(load.ModelFileError) as refused:
        checkpoints.read_file(path)
    status, line = ending(refused.value, "gn-convert")
    assert status == 1
    named = "argparse.Namespace" if kind == "namespace" else "io.open"
    assert_one_line(line, f"{path}: refused: ", f"({named})", "nothing in it was run")
    assert "weights_only" not in line and not marker.exists()
