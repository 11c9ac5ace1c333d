"""Shared pytest set-up: quiet TensorFlow, and fresh random inputs per run.

Each run draws a new session seed (printed in the header); set
GN_TEST_SEED to replay a failing run exactly.  Tests draw their inputs from
the ``rng`` fixture; the global generators that Keras initializers, NumPy's
legacy functions and TensorFlow ops draw from are seeded per test from the
same seed, so the weights a test never sets replay too.
"""

import os
import secrets
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The compiled kernels (gn_keras/kernels) must build here: a silent fallback
# to TensorFlow ops would leave them untested.  Tests that want the
# fallback set GN_KERAS_KERNELS=off themselves.
os.environ.setdefault("GN_KERAS_KERNELS", "require")

import numpy as np
import pytest

SESSION_SEED = int(os.environ.get("GN_TEST_SEED", secrets.randbits(32)))


def pytest_report_header(config):
    return f"gn-keras random inputs: GN_TEST_SEED={SESSION_SEED}"


@pytest.fixture
def rng(request):
    """A generator seeded by the session seed and the test's id."""
    return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(autouse=True)
def _seed_global_generators(request):
    import keras

    keras.utils.set_random_seed(zlib.crc32(f"{SESSION_SEED}/{request.node.nodeid}".encode()))


@pytest.fixture(params=["compiled", "tf_ops"])
def kernels_setting(request, monkeypatch):
    """Runs a check on the compiled kernels, then on TensorFlow ops alone."""
    monkeypatch.setenv("GN_KERAS_KERNELS", "require" if request.param == "compiled" else "off")
    return request.param
