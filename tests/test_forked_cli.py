"""tests/forked_cli.py gives a command what a fresh interpreter would.

The script tests run their commands through it, so it is checked against
``subprocess.run`` itself: the same exit status and output for a refused
command and a Python error, the command's own working directory,
environment and ``sys.argv``, fresh random state, and a timeout.
"""

import json
import os
import subprocess
import sys

import forked_cli
import pytest

PROBE = """
import json, os, random, sys
import numpy as np
print(json.dumps({
    "cwd": os.getcwd(),
    "argv": sys.argv[1:],
    "path0": sys.path[0],
    "variable": os.environ.get("GN_FORK_PROBE"),
    "random": random.random(),
    "numpy": float(np.random.random()),
    "flags": sorted(name for name in __import__("absl.flags").flags.FLAGS if name == "model_dir"),
}))
sys.exit(int(sys.argv[1]))
"""


def _both(command, **kwargs):
    forked = forked_cli.run(command, capture_output=True, text=True, **kwargs)
    fresh = subprocess.run(command, capture_output=True, text=True, **kwargs)
    return forked, fresh


def test_a_refused_command_exits_and_prints_as_in_a_fresh_interpreter(tmp_path):
    command = [sys.executable, "-m", "gn_keras.train.classify", "--batch_size_per_replica=-3"]
    forked, fresh = _both(command, cwd=tmp_path)
    assert forked.returncode == fresh.returncode == 2
    assert forked.stdout == fresh.stdout
    assert forked.stderr == fresh.stderr and "--batch_size_per_replica" in forked.stderr


def test_a_script_gets_its_own_cwd_environment_argv_and_random_state(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "GN_FORK_PROBE": str(tmp_path)}
    work = tmp_path / "work"
    work.mkdir()
    forked, fresh = _both([sys.executable, str(script), "3", "x y"], cwd=work, env=env)
    assert forked.returncode == fresh.returncode == 3, forked.stderr
    seen, expected = json.loads(forked.stdout), json.loads(fresh.stdout)
    for key in ("cwd", "argv", "path0", "variable", "flags"):
        assert seen[key] == expected[key], key
    assert seen["flags"] == []  # no script's flags were defined before the fork
    again = json.loads(forked_cli.run([sys.executable, str(script), "3"], cwd=work).stdout)
    assert again["random"] != seen["random"] and again["numpy"] != seen["numpy"]


def test_an_uncaught_error_and_a_timeout(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(
        "import time, sys\nif sys.argv[1] == 'raise':\n    raise KeyError('k')\ntime.sleep(60)\n"
    )
    forked, fresh = _both([sys.executable, str(script), "raise"])
    assert forked.returncode == fresh.returncode == 1
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == "KeyError: 'k'"
    with pytest.raises(subprocess.TimeoutExpired):
        forked_cli.run([sys.executable, str(script), "sleep"], timeout=1)
