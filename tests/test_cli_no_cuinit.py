"""No "failed call to cuInit" line from our scripts on a machine without a GPU (train/cli.py).

TensorFlow's CUDA build logs it whenever it first looks for GPUs, and a
callback it registers with absl looks at every ``app.run``; the scripts look
once first with stderr captured.  The test compares with a bare absl app on
the same machine, which must show the line (else the test proves nothing).
"""

import glob
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    bool(glob.glob("/dev/nvidia*")), reason="the line is kept where a GPU device exists"
)


def _stderr(command):
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


def test_a_script_hides_the_cuinit_line_a_bare_absl_app_shows(tmp_path):
    bare = textwrap.dedent("""
        import tensorflow
        from absl import app
        app.run(lambda argv: None)
    """)
    _, bare_stderr = _stderr([sys.executable, "-c", bare])
    assert "failed call to cuInit" in bare_stderr, "no CUDA probe here: nothing to hide"
    status, stderr = _stderr(
        [
            sys.executable,
            "-m",
            "gn_keras.train.export",
            f"--trained_model={tmp_path / 'missing.keras'}",
            f"--output_dir={tmp_path / 'out'}",
        ]
    )
    assert status == 1, stderr
    assert "failed call to cuInit" not in stderr
    assert "gn-export: error:" in stderr
