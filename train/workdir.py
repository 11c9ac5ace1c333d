"""Owning a ``--model_dir`` for a run: one writer at a time, and no leftovers of dead ones.

``claim(model_dir)`` takes an exclusive lock on ``<model_dir>/.lock`` for the
whole run (only the chief writes there).  A second run started on the same
directory while the first is alive is refused in one line naming the
holder.  Holding the lock also proves that no other process is writing, so
what a killed or out-of-space writer left behind is safe to delete; the
claim sweeps it, with a warning naming each file and its size:

* ``ckpt-N_temp/`` in ``checkpoints/`` (TensorFlow's checkpoint staging),
* ``NAME.tmp-PID`` and ``NAME.tmp-PID.keras`` (our atomic writes),
* ``saved_model.tmp-PID/`` (the export staging).

Other workers' private directories (``.NAME-workerN-tmp``) are theirs and
are left alone.  Where ``fcntl`` does not exist (not POSIX) there is no
lock and nothing is swept.
"""

import contextlib
import os
import re
import shutil
import socket

from absl import logging

LOCK_FILE = ".lock"
_OUR_TEMPORARY = re.compile(r".+\.tmp-\d+(\.keras)?")
_CHECKPOINT_TEMPORARY = re.compile(r"ckpt-\d+_temp")


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


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
    """Delete the leftovers of dead writers, warning about each; return their paths."""
    removed = stale_files(model_dir)
    for path in removed:
        logging.warning(
            "Removing %s (%.1f MB) left by an interrupted write.", path, _size(path) / 1e6
        )
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    return removed


@contextlib.contextmanager
def claim(model_dir, *, writes=True):
    """Hold ``model_dir`` for one run: lock it, sweep dead writers' files, release at the end.

    ``writes=False`` (a non-chief worker) takes nothing.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        fcntl = None
    if not writes or fcntl is None:
        yield
        return
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
