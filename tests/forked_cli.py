"""Run ``python -m gn_keras.…`` and ``python bench/….py`` as forks of a warm interpreter.

A fresh interpreter spends about 8 s of CPU importing TensorFlow and Keras
before a script reads its first flag, and the suite runs many script
commands.  ``run`` gives each command the process that
``subprocess.run([sys.executable, "-m", module, *argv])`` (or a script path
in place of ``-m module``) would give, minus that import: a server process
(one per pytest worker and start-up environment) imports TensorFlow, Keras
and the ``gn_keras`` library once, then forks a child per command.  The
child takes the command's working directory, environment, ``sys.argv`` and
``sys.path[0]``, redirects its output to files, reseeds Python's and NumPy's
global generators, and runs the module or script with ``runpy`` as
``__main__``.  It leaves through the interpreter's normal exit, so the exit
status, output and ``atexit`` behave as in a fresh process.

Shared with the server: only the modules it imported.  None of them defines
a script flag, so every absl flag, Keras setting and script state is made
in the child.  Variables read while TensorFlow or Python start (``TF_*``,
``KERAS_*``, ``PYTHON*``, …) cannot change after a fork, so each distinct
set of them gets its own server.  Commands that need a truly fresh process
(a signal or kill, concurrent workers, other interpreters, console
scripts, the README as typed) keep using ``subprocess``.
"""

import atexit
import json
import os
import subprocess
import sys
import tempfile

# Read by TensorFlow, Keras, CUDA, XLA, the math libraries or Python at start.
START_VARIABLES = ("TF_", "KERAS", "CUDA", "XLA", "OMP_", "MKL", "OPENBLAS", "PYTHON", "LD_")
# Read only when a script picks its strategy, after the fork.
RUN_VARIABLES = ("TF_CONFIG",)
PRELOADED = (
    "tensorflow",
    "keras",
    "gn_keras",
    "gn_keras.models",
    "gn_keras.train.trainer",
    "gn_keras.train.classification",
    "gn_keras.train.detection",
    "gn_keras.train.video",
)

SERVER = r"""
import json, os, sys, time
requests = sys.stdin
replies = os.fdopen(os.dup(1), "w")
quiet = os.open(os.devnull, os.O_RDWR)
os.dup2(quiet, 1)
for name in sys.argv[1:]:
    __import__(name)
replies.write("ready\n")
replies.flush()
request = None
for line in requests:
    job = json.loads(line)
    child = os.fork()
    if child == 0:
        request = job
        break
    deadline = time.monotonic() + job["timeout"]
    while True:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(child, 9)
            os.waitpid(child, 0)
            status = None
            break
        time.sleep(0.02)
    replies.write(json.dumps({"status": status}) + "\n")
    replies.flush()
if request is None:
    sys.exit(0)
# The child: become the command, then leave through the interpreter's exit.
replies.close()
os.dup2(quiet, 0)
os.dup2(os.open(request["stdout"], os.O_WRONLY), 1)
os.dup2(os.open(request["stderr"], os.O_WRONLY), 2)
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
import random, runpy
random.seed()
sys.modules["numpy"].random.seed()
if request["module"]:
    sys.argv = ["-m", *request["argv"]]
    sys.path[0] = os.getcwd()
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
else:
    sys.argv = [request["script"], *request["argv"]]
    sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))
    runpy.run_path(request["script"], run_name="__main__")
"""

_servers = {}


def _start_variables(env):
    return tuple(
        sorted(
            (name, value)
            for name, value in env.items()
            if name.startswith(START_VARIABLES) and name not in RUN_VARIABLES
        )
    )


def _server(env):
    key = _start_variables(env)
    server = _servers.get(key)
    if server is None or server.poll() is not None:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, *PRELOADED],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the forking server did not start (exit {server.wait()})")
        _servers[key] = server
    return server


@atexit.register
def _stop_servers():
    for server in _servers.values():
        server.stdin.close()
        server.wait(timeout=30)


def _request(command):
    """What the child runs: ``-m module`` or a script path, and its arguments."""
    if len(command) < 2 or command[0] != sys.executable:
        raise ValueError(f"forked_cli.run takes [sys.executable, ...], not {command[:2]}")
    if command[1] == "-m":
        return {"module": command[2], "script": None, "argv": command[3:]}
    if command[1].endswith(".py"):
        return {"module": None, "script": command[1], "argv": command[2:]}
    raise ValueError(f"forked_cli.run takes '-m module' or a .py script, not {command[1]!r}")


def run(command, *, env=None, cwd=None, timeout=300, capture_output=True, text=True):
    """``subprocess.run(command, capture_output=True, text=True)``, forked from a server."""
    if not (capture_output and text):
        raise ValueError("forked_cli.run captures text output only")
    request = _request([str(part) for part in command])
    env = dict(os.environ if env is None else env)
    server = _server(env)
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as folder:
        outputs = {name: os.path.join(folder, name) for name in ("stdout", "stderr")}
        for path in outputs.values():
            open(path, "w").close()
        cwd = os.path.abspath(cwd or os.getcwd())
        request.update(env=env, cwd=cwd, timeout=timeout, **outputs)
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        reply = server.stdout.readline()
        if not reply:
            raise RuntimeError("the forking server died while running a command")
        for name, path in outputs.items():
            with open(path, encoding="utf-8", errors="replace") as handle:
                outputs[name] = handle.read()
    status = json.loads(reply)["status"]
    if status is None:
        raise subprocess.TimeoutExpired(command, timeout, outputs["stdout"], outputs["stderr"])
    return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), **outputs)
