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

A ``publish`` killed between its renames (only where ``renameat2`` cannot
exchange) leaves ``NAME.tmp-PID-old/``: the sweeps finish that swap first
(``settle_publish``), so the complete staging becomes ``NAME`` and is never
deleted as debris.

``staging(target)`` builds a whole folder (the ``--output_dir`` of
``gn-export``) beside ``target`` as ``NAME.tmp-PID/``, locked (``flock`` on
the folder) while its writer lives; ``publish`` swaps it in atomically.
Such stagings are not inside a locked ``--model_dir``, so their sweep
(``sweep_stagings``) asks each one's own lock: only a folder whose lock is
free (its writer is dead) is removed.

Other workers' private directories (``.NAME-workerN-tmp``) are theirs and
are left alone.  Where ``fcntl`` does not exist (not POSIX) there is no
lock and nothing is swept.
"""

import contextlib
import ctypes
import errno
import os
import re
import shutil
import socket

from absl import logging

from gn_keras._checks import FlagError

LOCK_FILE = ".lock"
_OUR_TEMPORARY = re.compile(r".+\.tmp-\d+(\.keras)?")
_CHECKPOINT_TEMPORARY = re.compile(r"ckpt-\d+_temp")
_ASIDE = re.compile(r"(?P<staging>(?P<target>.+)\.tmp-\d+)-old")
_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one step


def _fcntl():
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        return None
    return fcntl


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


def _remove(path):
    logging.warning("Removing %s (%.1f MB) left by an interrupted write.", path, _size(path) / 1e6)
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def settle_publish(aside):
    """Finish the ``publish`` whose writer died between renames, leaving ``aside``.

    ``aside`` (``NAME.tmp-PID-old``) is the old ``NAME``.  ``publish`` runs
    only on a finished staging, so ``NAME.tmp-PID``, if still there, is the
    complete new folder: it becomes ``NAME``; with it already moved, the old
    folder is removed; with no ``NAME`` and no staging, the old one returns.
    """
    found = _ASIDE.fullmatch(os.path.basename(aside))
    parent = os.path.dirname(aside)
    target, staged = (os.path.join(parent, found[key]) for key in ("target", "staging"))
    if not os.path.exists(target):
        source = staged if os.path.isdir(staged) else aside
        logging.warning("Finishing an interrupted swap: %s becomes %s.", source, target)
        os.rename(source, target)
    if os.path.isdir(aside):
        _remove(aside)


def _asides(parent, target_name=None):
    names = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
    return [
        os.path.join(parent, name)
        for name in names
        if (found := _ASIDE.fullmatch(name)) and target_name in (None, found["target"])
    ]


def sweep(model_dir):
    """Delete the leftovers of dead writers, warning about each; return their paths.

    Interrupted swaps are finished first (``settle_publish``).
    """
    for aside in _asides(model_dir):
        settle_publish(aside)
    removed = stale_files(model_dir)
    for path in removed:
        _remove(path)
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
    fcntl = _fcntl()
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


def _staging_pattern(target):
    return re.compile(re.escape(os.path.basename(target)) + r"\.tmp-\d+")


def _lock_folder(path):
    """An open descriptor of folder ``path`` holding its exclusive lock; None if it is taken."""
    fcntl = _fcntl()
    descriptor = os.open(path, os.O_RDONLY)
    if fcntl is None:
        return descriptor
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def sweep_stagings(target):
    """Delete the ``NAME.tmp-PID/`` beside ``target`` whose writer is gone; return their paths.

    A live writer holds its staging's lock, so a folder whose lock can be
    taken was left by a killed (or out-of-space) writer.  A dead writer's
    interrupted swap is finished first (``settle_publish``; ``publish``
    holds the old folder's lock while it is aside).
    """
    parent = os.path.dirname(os.path.abspath(target))
    if _fcntl() is None or not os.path.isdir(parent):
        return []
    for aside in _asides(parent, os.path.basename(os.path.abspath(target))):
        descriptor = _lock_folder(aside)
        if descriptor is not None:  # its writer is gone
            try:
                settle_publish(aside)
            finally:
                os.close(descriptor)
    pattern = _staging_pattern(target)
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not (pattern.fullmatch(name) and os.path.isdir(path)):
            continue
        descriptor = _lock_folder(path)
        if descriptor is None:  # its writer is alive
            continue
        try:
            _remove(path)
            removed.append(path)
        finally:
            os.close(descriptor)
    return removed


@contextlib.contextmanager
def staging(target):
    """Yield a fresh, locked folder ``NAME.tmp-PID`` beside ``target`` to build it in.

    Dead writers' stagings of ``target`` are swept first.  Whatever is
    still at the staging path when the block ends (a failed build, or the
    old folder after ``publish``) is deleted; ``target`` itself is changed
    only by ``publish``.
    """
    target = os.path.abspath(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    sweep_stagings(target)
    path = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    descriptor = _lock_folder(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if descriptor is not None:
            os.close(descriptor)


def _exchange(first, second):
    """Swap two paths in one step (Linux renameat2); False where that is unavailable."""
    try:
        rename = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd = -100  # AT_FDCWD: paths relative to the working directory
    if rename(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or file system
        return False
    raise OSError(code, os.strerror(code), second)


def publish(staging_path, target):
    """Put the finished ``staging_path`` at ``target``; the old ``target`` goes to the staging path.

    An existing ``target`` is exchanged with the staging in one atomic step,
    so a kill at any moment leaves either the old or the new folder at
    ``target`` (the other is a staging, swept later).  Without renameat2 the
    old folder is moved aside first, locked: a kill between those renames
    leaves no ``target``, the old folder at ``STAGING-old`` and the new one
    at ``STAGING``, and the next sweep finishes the swap (``settle_publish``).
    """
    target = os.path.abspath(target)
    if not os.path.exists(target):
        os.rename(staging_path, target)
        return
    if _exchange(staging_path, target):
        return
    aside = f"{staging_path}-old"
    descriptor = _lock_folder(target)  # a sweep leaves a locked aside alone
    try:
        os.rename(target, aside)
        try:
            os.rename(staging_path, target)
        except BaseException:
            os.rename(aside, target)  # a failed (not killed) swap puts the old folder back
            raise
        os.rename(aside, staging_path)
    finally:
        if descriptor is not None:
            os.close(descriptor)
