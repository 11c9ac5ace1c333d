"""Importing PyTorch (and timm, torchvision) into a process that runs TensorFlow.

The CUDA builds of torch bring Triton, and ``torchvision.ops`` imports it
through ``torch._dynamo``. Triton's compiler library loaded after
TensorFlow's crashes the process (a segmentation fault inside
``triton._C.libtriton``; in the other order both load). Nothing here needs
Triton (torch runs on the CPU, uncompiled), so once TensorFlow is loaded
Triton is marked as absent before torch is imported: torch then takes it
as not installed, as on a CPU-only build.
"""

import importlib
import sys


def keep_triton_out():
    """Make ``import triton`` fail if TensorFlow is already in this process."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # import raises ImportError: "not installed"


def import_module(name):
    """``importlib.import_module(name)`` after :func:`keep_triton_out`."""
    keep_triton_out()
    return importlib.import_module(name)
