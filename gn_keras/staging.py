"""Building a folder beside its final place and swapping it in atomically.

``staging(target)`` yields a fresh folder ``NAME.tmp-PID/`` beside
``target``, locked (``flock`` on the folder) while its writer lives;
``publish`` swaps the finished folder in, in one step (Linux
``renameat2``), so a kill at any moment leaves the old or the new folder at
``target``, never a part of either.  What a killed writer left beside a
target (its staging, or the old folder a swap had moved aside) is swept by
the next writer: ``sweep_stagings`` asks each staging's own lock, so only a
folder whose writer is dead is removed, with a warning naming it and its size.

Used by every writer of a whole folder: gn-export's ``--output_dir``, a
run's SavedModel (``train.outputs``), converted weights
(``models.pretrained.output``) and generated data sets.  A training run's
own ``--model_dir`` is owned by ``train.workdir``, which sweeps with the
helpers here.  Where ``fcntl`` does not exist (not POSIX) there is no lock
and nothing is swept.
"""

import contextlib
import ctypes
import errno
import os
import re
import shutil

from absl import logging

_ASIDE = re.compile(r"(?P<staging>(?P<target>.+)\.tmp-\d+)-old")
_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one step


def fcntl_or_none():
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


def remove_leftover(path):
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
        remove_leftover(aside)


def asides(parent, target_name=None):
    names = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
    return [
        os.path.join(parent, name)
        for name in names
        if (found := _ASIDE.fullmatch(name)) and target_name in (None, found["target"])
    ]


def _staging_pattern(target):
    return re.compile(re.escape(os.path.basename(target)) + r"\.tmp-\d+")


def _lock_folder(path):
    """An open descriptor of folder ``path`` holding its exclusive lock; None if it is taken."""
    fcntl = fcntl_or_none()
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
    if fcntl_or_none() is None or not os.path.isdir(parent):
        return []
    for aside in asides(parent, os.path.basename(os.path.abspath(target))):
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
            remove_leftover(path)
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
