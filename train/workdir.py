"""Owning a ``--model_dir`` for a run: one writer at a time, and no leftovers of dead ones.

``claim(model_dir)`` takes an exclusive lock on ``<model_dir>/.lock`` for the
whole run (only the chief writes there).  A second run started on the same
directory while the first is alive is refused in one line naming the
holder.  Holding the lock also proves that no other process is writing, so
what a killed or out-of-space writer left behind is safe to delete; the
claim sweeps it, with a warning naming each file and its size:

* ``ckpt-N_temp/`` in ``checkpoints/`` (TensorFlow's checkpoint staging),
* ``NAME.tmp-PID`` and ``NAME.tmp-PID.keras`` (our atomic writes),
* ``saved_model.tmp-PID/`` (the export staging, or the old export a
  finished ``publish`` swapped out).

A ``publish`` (``gn_keras.staging``) killed between its renames leaves
``NAME.tmp-PID-old/``: the sweep finishes that swap first
(``staging.settle_publish``), so the complete staging becomes ``NAME`` and
is never deleted as debris.

Other workers' private directories (``.NAME-workerN-tmp``) are theirs and
are left alone.  Where ``fcntl`` does not exist (not POSIX) there is no
lock and nothing is swept.
"""

import contextlib
import os
import re
import shutil
import socket

# Names, not the module: tests load this file without the gn_keras package.
from gn_keras._checks import FlagError
from gn_keras.staging import asides, fcntl_or_none, remove_leftover, settle_publish

LOCK_FILE = ".lock"
_OUR_TEMPORARY = re.compile(r".+\.tmp-\d+(\.keras)?")
_CHECKPOINT_TEMPORARY = re.compile(r"ckpt-\d+_temp")


def stale_files(model_dir):
    """The leftovers of earlier writers in ``model_dir`` (call only while holding the lock)."""
    found = []
    for directory, pattern in (
        (model_dir, _OUR_TEMPORARY),
        (os.path.join(model_dir, "checkpoints"), _CHECKPOINT_TEMPORARY),
        (os.path.join(model_dir, "checkpoints"), _OUR_TEMPORARY),
    ):
        if os.path.isdir(directory):
            found += [
                os.path.join(directory, name)
                for name in sorted(os.listdir(directory))
                if pattern.fullmatch(name)
            ]
    return found


def sweep(model_dir):
    """Delete the leftovers of dead writers, warning about each; return their paths.

    Interrupted swaps are finished first (``settle_publish``).
    """
    for aside in asides(model_dir):
        settle_publish(aside)
    removed = stale_files(model_dir)
    for path in removed:
        remove_leftover(path)
    return removed


def check_model_dir(model_dir):
    """Refuse (``FlagError``) a ``--model_dir`` that exists but is not a directory."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise FlagError(
            f"--model_dir={model_dir} is a file, not a directory; give a new or existing "
            "run directory."
        )


# Folders this process holds (see ``claim``).
_HELD = set()


@contextlib.contextmanager
def claim(model_dir, *, writes=True):
    """Hold ``model_dir`` for one run: lock it, sweep dead writers' files, release at the end.

    ``writes=False`` (a non-chief worker) takes nothing. A claim inside a
    claim of the same folder by this process holds on to the outer one, so
    a script can take the folder before it prepares the run and keep it
    through the machinery's own claim, with no moment where it is free.
    """
    fcntl = fcntl_or_none()
    held = os.path.realpath(model_dir)
    if not writes or fcntl is None or held in _HELD:
        yield
        return
    _HELD.add(held)
    try:
        with _locked(model_dir, fcntl):
            yield
    finally:
        _HELD.discard(held)


@contextlib.contextmanager
def _locked(model_dir, fcntl):
    check_model_dir(model_dir)
    created = not os.path.exists(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK_FILE)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ValueError(
                f"--model_dir={model_dir} is in use by a running job ({holder}); wait for it "
                "to finish or use another --model_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        sweep(model_dir)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            if created and os.listdir(model_dir) == [LOCK_FILE]:  # a run that never started
                shutil.rmtree(model_dir, ignore_errors=True)
