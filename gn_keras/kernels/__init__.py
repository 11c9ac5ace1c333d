"""Building and loading the optional compiled Group Normalization kernels.

This package owns ``group_norm_ops.cc`` (with ``group_norm_blocks.h``,
``group_norm_channels_first.h`` and ``group_norm_activations.h``), a fused
CPU forward and backward for
channels-last and channels-first tensors, and the decision
whether it can be used.  The
kernels are optional: without a C++ compiler, or with
``GN_KERAS_KERNELS=off``, :func:`load` returns None and
:mod:`gn_keras.tf_fast` runs plain TensorFlow ops (XLA-compiled in
training graphs).  Nothing is downloaded: the source ships with the package
and is compiled against the installed TensorFlow on first use, about 10 s,
into a per-user cache, so later processes only load it.

``GN_KERAS_KERNELS`` selects the behaviour:

* ``auto`` (default): build if needed; on failure warn once and fall back;
* ``off``: never build or load;
* ``require``: build if needed and raise if that fails (tests, benchmarks).

``GN_KERAS_CACHE_DIR`` overrides the cache directory (default
``$XDG_CACHE_HOME/gn_keras`` or ``~/.cache/gn_keras``).  Run
``python -m gn_keras.kernels`` to build ahead of time and print the result.
"""

import contextlib
import functools
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_HERE, "group_norm_ops.cc")
# Every file the build reads: a change to any of them is a new build.
SOURCES = (
    SOURCE,
    *(
        os.path.join(_HERE, f"group_norm_{name}.h")
        for name in ("blocks", "channels_first", "activations")
    ),
)
MODES = ("auto", "off", "require")


class KernelBuildError(RuntimeError):
    """The compiled kernels were required but could not be built or loaded."""


def mode():
    """The ``GN_KERAS_KERNELS`` setting, validated."""
    value = os.environ.get("GN_KERAS_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"GN_KERAS_KERNELS={value!r} is not one of {', '.join(MODES)}")
    return value


def load():
    """The loaded op module (``gn_keras_group_norm``, ``..._grad``) or None."""
    selected = mode()
    if selected == "off":
        return None
    return _load_once(selected)


@functools.cache
def _load_once(selected):
    import tensorflow as tf

    try:
        return tf.load_op_library(build())
    except (KernelBuildError, OSError, tf.errors.NotFoundError) as error:
        if selected == "require":
            raise KernelBuildError(f"GN_KERAS_KERNELS=require, but {error}") from error
        warnings.warn(
            f"gn_keras: compiled kernels unavailable, using TensorFlow ops ({error})",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def build():
    """Path of the compiled library for this TensorFlow and CPU, built if missing."""
    command = _compile_command("{output}")
    target = os.path.join(_cache_dir(), f"group_norm_ops_{_build_key(command)}.so")
    if os.path.exists(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with _exclusive(target + ".lock"):
        if os.path.exists(target):  # another process built it while we waited
            return target
        handle, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(target))
        os.close(handle)
        try:
            started = time.monotonic()
            _run_compiler([part.format(output=partial) for part in command])
            os.replace(partial, target)  # atomic: readers never see half a file
            logging.getLogger("gn_keras").info(
                "built the compiled kernels in %.0f s: %s", time.monotonic() - started, target
            )
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return target


def _compile_command(output):
    import tensorflow as tf

    compiler = os.environ.get("CXX", "g++")
    return [
        compiler, "-shared", "-fPIC", "-O3", "-march=native",
        "-Wno-deprecated-declarations", SOURCE, "-o", output,
        *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(),
    ]  # fmt: skip


def _build_key(command):
    """Changes with the sources, the command, TensorFlow and the CPU.

    Not with the compiler's version: a cached library must load on a
    machine (a slim Docker image, say) that has no compiler at all.
    """
    import tensorflow as tf

    digest = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as source:
            digest.update(source.read())
    for part in (*command, tf.__version__, platform.machine(), _cpu_features()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


# /proc/cpuinfo lines naming the CPU and its instruction sets (x86, ARM).
_CPU_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU part")


def _cpu_features():
    # -march=native: a cache shared between different CPUs must not mix builds.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            found = {}
            for line in info:
                field = line.split(":", 1)[0].strip()
                if field in _CPU_FIELDS:
                    found.setdefault(field, line.strip())
            return "\n".join(found[field] for field in sorted(found))
    except OSError:
        return platform.processor()


def _run_compiler(command):
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise KernelBuildError(f"no working C++ compiler {command[0]!r}: {error}") from error
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise KernelBuildError(f"compiling {SOURCE} failed:\n{tail}")


def _cache_dir():
    configured = os.environ.get("GN_KERAS_CACHE_DIR")
    if configured:
        return os.path.join(configured, "kernels")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gn_keras", "kernels")


@contextlib.contextmanager
def _exclusive(lock_path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the rename still keeps builds whole
        yield
        return
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main():
    """``python -m gn_keras.kernels``: build now, print the library's path."""
    try:
        print(build())
    except KernelBuildError as error:
        print(f"gn_keras kernels: {error}", file=sys.stderr)
        return 1
    return 0
