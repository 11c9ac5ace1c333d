"""The machine a benchmark ran on: CPU, library versions and load, for its JSON report.

Shared by every script under ``bench/`` so their reports describe the machine
the same way.  Deliberately free of flags and heavy imports beyond TF/Keras.
"""

import os
import platform

import keras
import tensorflow as tf


def cpu_model():
    """The CPU's marketing name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info():
    """CPU, core count, software versions and the load average right now."""
    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    from gn_keras import kernels

    library = kernels.load()  # GN_KERAS_KERNELS decides; None means TensorFlow ops
    info["gn_keras_kernels"] = {"setting": kernels.mode(), "loaded": library is not None}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        info["torch"] = None
    return info
