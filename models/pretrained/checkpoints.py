"""Reading a checkpoint file (or timm's hub) into ``{name: numpy array}``.

* ``.pth``, ``.pt``, ``.bin``: PyTorch's own zip format, through
  ``torch.load(weights_only=True)`` (no code in the file runs). A training
  checkpoint's ``state_dict`` or ``model`` entry is used.
* ``.safetensors``: through the ``safetensors`` package, without torch.
* ``.pkl``: the pickles Detectron (Caffe2 blobs, possibly under ``blobs``)
  and detectron2 (under ``model``) release. Pickles can run code, so only
  NumPy arrays, dicts and the few classes that rebuild them are let through.
* ``hub:NAME``: timm downloads ``NAME`` (e.g. ``resnet50_gn.a1h_in1k``)
  through its own hub code; the model's ``pretrained_cfg`` comes along.

Every problem raises :class:`gn_keras.load.ModelFileError` naming the path.
"""

import hashlib
import os
import pickle
import re

import numpy as np

from gn_keras import load
from gn_keras.models.pretrained import torch_runtime

HUB_PREFIX = "hub:"
# How torch's weights-only loader names what it refused to import.
_TORCH_GLOBAL = re.compile(r"GLOBAL ([\w.]+[\w])")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# What a Detectron/detectron2 pickle needs to rebuild its arrays, and nothing else.
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *(
        (f"numpy.{core}.multiarray", name)
        for core in ("core", "_core")
        for name in ("_reconstruct", "scalar")
    ),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a pickle")
        return super().find_class(module, name)


def file_digest(path):
    """SHA-256 of the file, to tell one conversion from another."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(module, path, what):
    try:
        return torch_runtime.import_module(module)
    except ImportError:
        raise load.ModelFileError(
            path, f"reading {what} needs the '{module.split('.')[0]}' package; pip install it."
        ) from None


def _unwrap(data, path):
    """The weights dict inside a training checkpoint or a detector pickle."""
    for key in ("state_dict", "model", "blobs"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict):
        raise load.ModelFileError(path, f"holds a {type(data).__name__}, not a dict of tensors.")
    return data


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value) if isinstance(value, np.ndarray | np.generic) else None


def _read_torch(path):
    torch = _require("torch", path, "a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle and "unsupported global" errors alike
        found = _TORCH_GLOBAL.search(str(error))
        if found:  # torch's own advice (load with weights_only=False) would run the file's code
            raise load.ModelFileError(
                path,
                f"refused: besides tensors it holds a Python object ({found.group(1)}) that "
                "could run code when loaded, and nothing in it was run; save the weights alone "
                "(torch.save(model.state_dict(), PATH)) and convert that file.",
            ) from None
        raise load.ModelFileError(
            path, f"cannot read the PyTorch checkpoint: {load.first_line(error)}"
        ) from None


def _read_safetensors(path):
    numpy_io = _require("safetensors.numpy", path, "a .safetensors file")
    try:
        return numpy_io.load_file(path)
    except Exception as error:  # the header or a tensor is damaged
        raise load.ModelFileError(
            path, f"cannot read the safetensors file: {load.first_line(error)}"
        ) from None


def _read_pickle(path):
    try:
        with open(path, "rb") as handle:
            return _ArraysOnlyUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise load.ModelFileError(
            path, f"cannot read the pickle: {load.first_line(error)}"
        ) from None


def read_file(path):
    """``{name: numpy array}`` of a checkpoint file (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise load.ModelFileError(path, "no such file.")
    if os.path.getsize(path) == 0:
        raise load.ModelFileError(path, "the file is empty.")
    if path.endswith(".safetensors"):
        data = _read_safetensors(path)
    elif path.endswith(".pkl"):
        data = _read_pickle(path)
    elif path.endswith(_TORCH_SUFFIXES):
        data = _read_torch(path)
    else:
        raise load.ModelFileError(
            path, "unknown checkpoint type: expected .pth, .pt, .bin, .safetensors or .pkl."
        )
    tensors = {name: _to_numpy(value) for name, value in _unwrap(data, path).items()}
    tensors = {name: value for name, value in tensors.items() if value is not None}
    if not tensors:
        raise load.ModelFileError(path, "holds no tensors.")
    return tensors


def read_hub(name):
    """(tensors, timm's ``pretrained_cfg``) of timm's pretrained ``name``."""
    path = HUB_PREFIX + name
    timm = _require("timm", path, "timm's hub")
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as error:  # unknown name, no network, damaged download
        raise load.ModelFileError(
            path, f"timm could not fetch it: {load.first_line(error)}"
        ) from None
    tensors = {key: _to_numpy(value) for key, value in model.state_dict().items()}
    return tensors, dict(model.pretrained_cfg)
