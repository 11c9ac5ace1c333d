"""When a traced graph must hold standard TensorFlow ops only.

The fast path (:mod:`gn_keras.tf_fast`) uses the optional compiled kernels
of :mod:`gn_keras.kernels` in graphs that run in this process: Keras
``fit``, ``evaluate`` and ``predict``, and the user's own ``tf.function``.
A graph that leaves the process must not contain them: a SavedModel would
not load where the kernels are not built, and converters (tf2onnx, LiteRT)
know only standard ops.  Such graphs are recognised here:

* anything traced inside :func:`portable_ops` (the export helpers of
  :mod:`gn_keras.export` use it);
* anything traced by ``tf.saved_model.save`` (its save context);
* anything traced while Keras's export code, tf2onnx or a LiteRT/TFLite
  converter is on the call stack (Keras's ``ExportArchive`` traces its
  endpoints before it enters ``tf.saved_model.save``, so the save context
  alone would miss ``model.export``).

A concrete function the user traces by hand and saves later must be traced
inside :func:`portable_ops`; the README says so.
"""

import contextlib
import sys
import threading

from tensorflow.python.saved_model import save_context  # no public query

# Modules that trace graphs to write them out or convert them.
EXPORTER_MODULES = (
    "keras.src.export",
    "tf2onnx",
    "tensorflow.lite",
    "tensorflow.python.saved_model",
    "ai_edge_litert",
)
_MAX_FRAMES = 400
_state = threading.local()


@contextlib.contextmanager
def portable_ops():
    """Trace graphs with standard TensorFlow ops only (no compiled kernels).

    Use it around a ``get_concrete_function`` (or any trace) whose graph you
    will save or convert yourself::

        with gn_keras.portable_ops():
            concrete = serve.get_concrete_function(spec)
        tf.saved_model.save(module, path, signatures=concrete)
    """
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


def required():
    """Whether the graph being traced now must hold standard ops only."""
    if getattr(_state, "depth", 0) > 0 or save_context.in_save_context():
        return True
    return _exporter_on_stack()


def _exporter_on_stack():
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return False
        module = frame.f_globals.get("__name__", "")
        if module.startswith(EXPORTER_MODULES):
            return True
        frame = frame.f_back
    return False
