"""Which traced graphs may hold the compiled kernels, and which must not.

The compiled kernels of :mod:`gn_keras.kernels` are custom ops: a graph
that holds them runs only where they are built.  TensorFlow reuses a
function's trace wherever the function goes next, so the decision is made
when tracing, from what is known then.  :mod:`gn_keras.tf_fast` uses the
kernels only in eager calls and in graphs that cannot reasonably leave the
process:

* graphs traced under a recording ``GradientTape`` (training steps);
* graphs traced by Keras's own ``fit``/``evaluate``/``predict`` loops
  (:func:`keras_loop_on_stack`).

A ``tf.function`` of the user's without a tape (an inference or serving
function) runs standard ops, because TF may reuse its trace for an export
later (``get_concrete_function`` before ``tf.saved_model.save``, tf2onnx's
``from_function``).  And :func:`required` recognises graphs being traced
for export, which never hold the kernels (nor a custom gradient):

* anything traced inside :func:`portable_ops` (the export helpers of
  :mod:`gn_keras.export` use it);
* anything traced by ``tf.saved_model.save`` (its save context);
* anything traced while Keras's export code, tf2onnx or a LiteRT/TFLite
  converter is on the call stack (Keras's ``ExportArchive`` traces its
  endpoints before it enters ``tf.saved_model.save``, so the save context
  alone would miss ``model.export``).
"""

import contextlib
import threading

from gn_keras import _internals

# Module-name prefixes looked up on the call stack (see gn_keras/_internals.py).
KERAS_LOOP_MODULES = _internals.KERAS_LOOP_MODULES
EXPORTER_MODULES = _internals.EXPORTER_MODULES + _internals.OPTIONAL_EXPORTER_MODULES
_state = threading.local()


@contextlib.contextmanager
def portable_ops():
    """Trace graphs for export: standard TensorFlow ops, no custom gradient.

    Needed only for a training function (traced under a tape) that you will
    save or convert yourself; inference functions never hold the kernels::

        with gn_keras.portable_ops():
            concrete = train_step.get_concrete_function(spec)

    TF reuses an existing trace, so the function must be traced for the
    first time inside the block.
    """
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


def required():
    """Whether the graph being traced now must hold standard ops only.

    Asks private TensorFlow and Keras details: call it only when
    :func:`gn_keras._internals.available`.
    """
    if getattr(_state, "depth", 0) > 0 or _internals.in_save_context():
        return True
    return _internals.module_on_stack(EXPORTER_MODULES, skip=2)


def keras_loop_on_stack():
    """Whether Keras's ``fit``/``evaluate``/``predict`` is tracing this graph."""
    return _internals.module_on_stack(KERAS_LOOP_MODULES, skip=2)
