"""What the TensorFlow fast-path tests share: which implementation ran, the
keras.ops path on demand, and inputs far from zero-mean."""

import contextlib

from gn_keras import tf_fast


def record_choices(monkeypatch):
    """A list that receives the name of each implementation ``group_norm`` picks."""
    names = []
    original = tf_fast._choose_kernels
    monkeypatch.setattr(
        tf_fast, "_choose_kernels", lambda *a: names.append(original(*a).name) or original(*a)
    )
    return names


@contextlib.contextmanager
def keras_ops_path():
    """Run ``group_norm`` on its keras.ops code, as masks and other backends do."""
    original = tf_fast.supports
    tf_fast.supports = lambda x: False
    try:
        yield
    finally:
        tf_fast.supports = original


def offset_normal(rng, shape):
    """Normal values with a random spread in [0.5, 3) and mean in [-4, 4)."""
    return rng.normal(size=shape) * rng.uniform(0.5, 3.0) + rng.uniform(-4, 4)
