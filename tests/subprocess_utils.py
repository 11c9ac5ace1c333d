"""Run a Python snippet in a fresh interpreter, for tests that need one.

A fresh process proves that nothing registered or cached by the test
session is needed (loading a .keras file, another Keras backend, logical
devices that must be configured before TensorFlow starts).
"""

import os
import subprocess
import sys
import textwrap


def run_python(code, *, env=None, timeout=300, cwd=None):
    """Run ``code`` with this interpreter; return stdout, fail with stderr."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"subprocess exited with {completed.returncode}\n--- stdout\n"
            f"{completed.stdout[-4000:]}\n--- stderr\n{completed.stderr[-4000:]}"
        )
    return completed.stdout
