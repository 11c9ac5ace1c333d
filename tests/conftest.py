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
# oneDNN off, as TensorFlow leaves it on every CPU without AVX-512 (most
# users' machines): the suite then checks the same paths on every machine
# and is timed where it is slowest.  tests/test_models_layout.py runs the
# layout-dependent checks with it on too.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# The compiled kernels (gn_keras/kernels) must build here: a silent fallback
# to TensorFlow ops would leave them untested.  Tests that want the
# fallback set GN_KERAS_KERNELS=off themselves.
os.environ.setdefault("GN_KERAS_KERNELS", "require")

import numpy as np
import pytest

SESSION_SEED = int(os.environ.get("GN_TEST_SEED", secrets.randbits(32)))
# pytest-xdist's workers start from this process's environment: they take
# the seed drawn here, so the one seed in the header replays every worker.
os.environ["GN_TEST_SEED"] = str(SESSION_SEED)


def pytest_report_header(config):
    return f"gn-keras random inputs: GN_TEST_SEED={SESSION_SEED}"


def pytest_terminal_summary(terminalreporter, exitstatus):
    # The header is hidden under -q (the README's command): say it again where
    # a failure is read, so the run can be replayed.
    if exitstatus != 0:
        terminalreporter.write_line(f"replay these inputs with GN_TEST_SEED={SESSION_SEED}")


# The files that take a minute or more on 2 cores, slowest first.  They run
# before the rest, so that pytest-xdist (pytest.ini) never hands one to a
# worker while the other worker is nearly done.
SLOW_FILES_FIRST = (
    "test_detection_train.py",
    "test_transfer_pipeline.py",
    "test_detection_c4.py",
    "test_study_detection.py",
    "test_readme_commands.py",
    "test_video_train.py",
    "test_study.py",
    "test_study_video.py",
    "test_bench.py",
    "test_pretrained_cli.py",
    "test_cli_write_errors.py",
    "test_train_loop.py",
    "test_train_worker_failures.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order


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
