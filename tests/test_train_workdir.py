"""One writer per --model_dir, and the leftovers of killed writers swept (train/workdir.py)."""

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time

import forked_cli
import pytest
from absl import logging

from gn_keras import staging as staging_lib
from gn_keras.train import workdir

STALE = (
    "results.json.tmp-4242",
    "last.tmp-31337.keras",
    "saved_model.tmp-77/saved_model.pb",
    "checkpoints/ckpt-12_temp/part-00000-of-00001.data-00000-of-00001",
    "checkpoints/checkpoint.tmp-5",
)
KEPT = (
    "results.json",
    "last.keras",
    "saved_model/saved_model.pb",
    "checkpoints/ckpt-12.index",
    "checkpoints/checkpoint",
    ".checkpoints-worker1-tmp/ckpt-12.index",  # another worker's, alive in the same job
    "notes.tmp-x",
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The other processes below hold, probe and swap with train/workdir.py loaded
# by path with the two modules it imports: the same locks and renames as
# gn-train's, without the ~10 s of CPU that importing the gn_keras package
# (TensorFlow) costs each process.
WORKDIR_ALONE = f"""
import importlib.util, sys
def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
_load("gn_keras._checks", {os.path.join(REPO, "gn_keras", "_checks.py")!r})
staging_lib = _load("gn_keras.staging", {os.path.join(REPO, "gn_keras", "staging.py")!r})
workdir = _load("workdir_alone", {os.path.join(REPO, "train", "workdir.py")!r})
"""


def _write(root, relative, rng):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = rng.bytes(int(rng.integers(1, 2000)))
    with open(path, "wb") as handle:
        handle.write(payload)
    return payload


def test_claim_sweeps_exactly_what_dead_writers_left(rng, tmp_path, monkeypatch):
    kept = {name: _write(tmp_path, name, rng) for name in KEPT}
    for name in STALE:
        _write(tmp_path, name, rng)
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    with workdir.claim(str(tmp_path)):
        pass
    for name in STALE:
        top = (
            name.split("/")[0]
            if not name.startswith("checkpoints/")
            else "/".join(name.split("/")[:2])
        )
        assert not os.path.exists(tmp_path / top), name
    for name, payload in kept.items():
        assert (tmp_path / name).read_bytes() == payload, name
    assert len(warnings) == len(STALE)
    assert all("left by an interrupted write" in warning for warning in warnings)


def test_a_second_claim_is_refused_while_the_first_holds_and_nesting_keeps_it(tmp_path):
    probe = WORKDIR_ALONE + textwrap.dedent(f"""
        try:
            with workdir.claim({str(tmp_path)!r}):
                print("free")
        except ValueError:
            print("held")
    """)

    def other_process_sees():
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        return done.stdout.strip()

    with workdir.claim(str(tmp_path)):
        with workdir.claim(str(tmp_path / ".." / tmp_path.name)):  # the same folder
            pass
        assert other_process_sees() == "held"  # the inner claim's end released nothing
    assert other_process_sees() == "free"


def test_gn_train_on_a_directory_another_job_holds_says_so_in_one_line(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKDIR_ALONE
            + textwrap.dedent(f"""
            import time
            with workdir.claim({str(tmp_path)!r}):
                print("held", flush=True)
                time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        result = forked_cli.run(
            [
                sys.executable,
                "-m",
                "gn_keras.train.classify",
                f"--model_dir={tmp_path}",
                "--epochs=1",
                "--steps_per_epoch=1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "gn-train: error" in line]
    assert len(errors) == 1 and "is in use by a running job (pid" in errors[0]
    assert "Traceback" not in result.stderr
    assert time.perf_counter() - started < 300


# A writer killed at each step of swapping a finished export in (issue 23, item 3).
# The child loads train/workdir.py and gn_keras/staging.py alone (WORKDIR_ALONE) and SIGKILLs itself
# right after the chosen step; the exchange path is renameat2's, the fallback
# path the three renames of a file system without it.
_KILLED_WRITER = """
import os, shutil, signal, sys
target, new, mode, kill_after = sys.argv[1:5]
die = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
renames, real_rename, real_exchange = [], os.rename, staging_lib._exchange
def rename(source, destination):
    real_rename(source, destination)
    renames.append(source)
    if str(len(renames)) == kill_after:
        die()
os.rename = rename
staging_lib._exchange = (lambda a, b: real_exchange(a, b) and die()) if mode == "exchange" else (
    lambda a, b: False)
with staging_lib.staging(target) as staging:
    shutil.copytree(new, staging, dirs_exist_ok=True)
    if kill_after == "built":
        die()
    staging_lib.publish(staging, target)
"""
SWAP_STEPS = [  # (path, killed after, what saved_model/ holds then: old, new or nothing)
    ("exchange", "built", "old"),
    ("exchange", "exchange", "new"),
    ("fallback", "1", None),  # the old one moved aside: only here is there a gap
    ("fallback", "2", "new"),
    ("fallback", "3", "new"),
]


def _folder(root, rng):
    os.makedirs(os.path.join(root, "variables"))
    for name in ("saved_model.pb", "variables/variables.index"):
        _write(root, name, rng)
    return {name: open(os.path.join(root, name), "rb").read() for name in _names(root)}


def _names(root):
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    )


def _contents(root):
    if not os.path.isdir(root):
        return None
    return {name: open(os.path.join(root, name), "rb").read() for name in _names(root)}


@pytest.mark.parametrize("sweeper", ["claim", "staging"])
@pytest.mark.parametrize("mode, kill_after, at_kill", SWAP_STEPS)
def test_a_swap_killed_at_any_step_keeps_a_whole_export(
    tmp_path, rng, mode, kill_after, at_kill, sweeper
):
    model_dir = tmp_path / "run"
    target = model_dir / "saved_model"
    old = _folder(str(target), rng)
    new = _folder(str(tmp_path / "new"), rng)
    child = subprocess.run(
        [sys.executable, "-c", WORKDIR_ALONE + _KILLED_WRITER, str(target), str(tmp_path / "new")]
        + [mode, kill_after],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -9, child.stderr
    assert _contents(str(target)) == {"old": old, "new": new, None: None}[at_kill]
    if sweeper == "claim":  # the next run in --model_dir
        with workdir.claim(str(model_dir)):
            pass
    else:  # the next build of the same folder (gn-export's)
        with staging_lib.staging(str(target)):
            pass
    # A publish that began is finished; its complete staging is never swept as debris.
    assert _contents(str(target)) == (old if kill_after == "built" else new)
    assert set(os.listdir(model_dir)) - {".lock"} == {"saved_model"}


def _run_outputs(model_dir):
    import tensorflow as tf

    from gn_keras.train import outputs

    strategy = tf.distribute.get_strategy()
    return outputs.RunOutputs(
        str(model_dir), strategy, {}, {}, {}, metric="top1_error", lower_is_better=True
    )


def _failing_rename(monkeypatch, failing_call):
    real_rename, calls = os.rename, []

    def rename(source, destination):
        calls.append(source)
        if len(calls) == failing_call:
            raise OSError(errno.EIO, "Input/output error", destination)
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("failure", [None, "exchange", "fallback rename 1", "fallback rename 2"])
def test_run_export_publishes_whole_or_leaves_the_old_export(tmp_path, rng, monkeypatch, failure):
    run = _run_outputs(tmp_path)
    target = str(tmp_path / "saved_model")
    old = _folder(target, rng)
    new = _folder(str(tmp_path / "new_build"), rng)
    published = []
    monkeypatch.setattr(staging_lib, "publish", _spy(staging_lib.publish, published))
    if failure == "exchange":
        monkeypatch.setattr(staging_lib, "_exchange", _raise(OSError(errno.EIO, "I/O error")))
    elif failure:
        monkeypatch.setattr(staging_lib, "_exchange", lambda first, second: False)
        _failing_rename(monkeypatch, int(failure[-1]))

    def export_fn(model, directory, verify):
        assert verify and os.path.basename(directory).startswith("saved_model.tmp-")
        shutil.copytree(tmp_path / "new_build", directory, dirs_exist_ok=True)

    if failure:
        with pytest.raises(OSError, match="Input/output error|I/O error"):
            run.export(None, export_fn)
    else:
        assert run.export(None, export_fn) == target
    assert len(published) == 1  # the one atomic swap of gn_keras/staging.py
    assert _contents(target) == (old if failure else new)
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def _spy(function, calls):
    def spied(*args):
        calls.append(args)
        return function(*args)

    return spied


def _raise(error):
    def failing(*args):
        raise error

    return failing
