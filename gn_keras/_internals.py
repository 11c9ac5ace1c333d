"""Every private TensorFlow, Keras and CPython detail gn_keras relies on.

The TensorFlow fast path (:mod:`gn_keras.tf_fast`) decides while a graph is
traced whether that graph may hold the compiled kernels, XLA calls or a
custom gradient (:mod:`gn_keras.portable` says why).  TensorFlow and Keras
offer no public query for what it needs to know, so it asks their internals:

* whether a ``GradientTape`` records (``tensorflow.python.eager.record``);
* whether XLA compiles the graph being traced (``control_flow_util``);
* whether ``tf.saved_model.save`` is tracing (``save_context``);
* whether Keras's training loops or an exporter are tracing, found by the
  names of their modules on the Python call stack (``sys._getframe``).

They are looked up here only, lazily and guarded: ``import gn_keras`` never
touches them.  If one has moved in a newer TensorFlow or Keras,
:func:`available` is False after one ``RuntimeWarning``, and the fast path
runs the portable TensorFlow ops (standard ops, TensorFlow's own gradients)
for every call: slower, never wrong.  ``tests/test_internals.py`` is the
canary that fails in CI when a version bump moves one of them.
"""

import functools
import importlib
import importlib.util
import sys
import typing
import warnings

# name -> (module, attribute): the TensorFlow functions the fast path calls.
TF_FUNCTIONS = {
    "could_possibly_record": ("tensorflow.python.eager.record", "could_possibly_record"),
    "graph_in_xla_context": (
        "tensorflow.python.ops.control_flow_util",
        "GraphOrParentsInXlaContext",
    ),
    "in_save_context": ("tensorflow.python.saved_model.save_context", "in_save_context"),
}
# Keras's TensorFlow training loops: their graphs run in this process only.
KERAS_LOOP_MODULES = ("keras.src.backend.tensorflow.trainer",)
# Modules that trace graphs to write them out or convert them.  The first
# ones ship with TensorFlow and Keras and must exist; the converters are
# optional packages.
EXPORTER_MODULES = ("keras.src.export", "tensorflow.python.saved_model", "tensorflow.lite")
OPTIONAL_EXPORTER_MODULES = ("tf2onnx", "ai_edge_litert")
# Stack walks stop here: the tracing entry point is never deeper than this.
_MAX_FRAMES = 400


class MissingInternal(ImportError):
    """A private TensorFlow, Keras or CPython detail is not where it was."""


class TensorFlowInternals(typing.NamedTuple):
    """The private TensorFlow functions, resolved."""

    could_possibly_record: typing.Callable
    graph_in_xla_context: typing.Callable
    in_save_context: typing.Callable


def load():
    """Resolve every internal now; raise :class:`MissingInternal` naming the first absent."""
    resolved = {}
    for name, (module_name, attribute) in TF_FUNCTIONS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise MissingInternal(f"module {module_name} is gone ({error})") from error
        if not callable(getattr(module, attribute, None)):
            raise MissingInternal(f"{module_name}.{attribute} is gone")
        resolved[name] = getattr(module, attribute)
    for module_name in KERAS_LOOP_MODULES + EXPORTER_MODULES:
        try:
            found = importlib.util.find_spec(module_name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingInternal(f"module {module_name} is gone")
    if not hasattr(sys, "_getframe"):
        raise MissingInternal("sys._getframe is gone")
    return TensorFlowInternals(**resolved)


@functools.cache
def _resolved():
    try:
        return load()
    except MissingInternal as error:
        import keras
        import tensorflow as tf

        warnings.warn(
            f"gn_keras: a TensorFlow/Keras internal the fast path needs is missing in "
            f"TensorFlow {tf.__version__} / Keras {keras.__version__}: {error}. "
            "GroupNormalization runs on standard TensorFlow ops instead (same results, "
            "slower; no compiled kernels, no XLA, no closed-form gradient).",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def available():
    """Whether every internal resolved (warns once, the first time, if not)."""
    return _resolved() is not None


def reset():
    """Forget the resolution: the next query resolves (and may warn) again."""
    _resolved.cache_clear()


def tape_could_record():
    """Whether a ``GradientTape`` might record the ops created now."""
    return _resolved().could_possibly_record()


def graph_in_xla_context():
    """Whether the graph being traced (or a parent) is compiled whole by XLA."""
    import tensorflow as tf

    return _resolved().graph_in_xla_context(tf.compat.v1.get_default_graph())


def in_save_context():
    """Whether ``tf.saved_model.save`` is tracing the current graph."""
    return _resolved().in_save_context()


def module_on_stack(prefixes, skip=2):
    """Whether a frame of a module named ``prefixes*`` calls us (``skip`` frames up)."""
    frame = sys._getframe(skip)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith(prefixes):
            return True
        frame = frame.f_back
    return False
