"""Resumable training state: model, optimizer, epoch and position in the epoch.

``Checkpointer`` owns the ``tf.train.Checkpoint`` of a run and its
``tf.train.CheckpointManager`` in ``<model_dir>/checkpoints``.  The state is
the model, the optimizer (slots, iteration count, loss scale), the number of
completed epochs and the number of steps already trained in the current
epoch; since an epoch's data order depends only on (seed, epoch), that pair
is the data position too, and a resumed run skips exactly those batches.

A damaged checkpoint (truncated, corrupt, a file missing) is found by
reading it in full before the restore (``gn_keras.load.check_checkpoint_file``).
The run then falls back to the newest intact checkpoint the manager still
keeps, with a warning naming the damaged file: a killed or full-disk save
costs the steps since the previous checkpoint, not the run.  Only when no
kept checkpoint is intact does the restore stop, with a one-line
``gn_keras.load.ModelFileError`` naming the file and what to do.

The manager's index (the ``checkpoint`` text file) is damaged too by a
killed write or a full disk: TensorFlow then ignores it (a run would silently
start over) or fails on it (an empty or non-UTF-8 file).  Instead, if ``ckpt-N`` files are
on disk but the index is missing or unreadable, the run warns naming the
index, takes those files as the kept checkpoints (newest first, with the
same fallback over damaged ones) and, where it writes, rewrites the index
from them, so the manager keeps rotating the old files out.

On multi-worker and TPU strategies a
``tf.distribute.experimental.PreemptionCheckpointHandler`` watches for a
preemption notice (SIGTERM on any worker) and, at the next step boundary
that all workers agree on, saves and stops every worker with one line saying
where the state went and to rerun all workers (exit status
``PREEMPTED_EXIT_STATUS``).  Every worker saves (MultiWorkerMirroredStrategy
needs all of them in a save); the chief into ``checkpoints/``, the others
into throw-away directories, and everyone restores from the chief's.

Every checkpoint, preemption ones included, is numbered by the global step
it holds (``ckpt-<step>``), so the numbers order the checkpoints in time and
an index rebuilt from the files on disk takes the newest for the newest.
"""

import os
import re
import shutil
import sys

import tensorflow as tf
from absl import logging
from tensorflow.python.util import deprecation

from gn_keras import load
from gn_keras.train import strategy as strategy_lib

_PREEMPTIBLE = (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)
# TensorFlow's own exit status after a preemption save: cluster managers
# restart a job that ends with it.
PREEMPTED_EXIT_STATUS = 42
_INDEX_FILE = "checkpoint"  # tf.train.CheckpointManager's default latest_filename
# A saved checkpoint's own .index file (the manager's default checkpoint_name).
_SAVED_CHECKPOINT = re.compile(r"ckpt-(\d+)\.index")


def _kept_checkpoints(directory):
    """``(paths, indexed)``: the checkpoints a run may resume from, newest first.

    Those the manager's index lists (``indexed``); if the index is missing
    or unreadable, the ``ckpt-N`` found on disk, with a warning naming it.
    """
    index = os.path.join(directory, _INDEX_FILE)
    try:
        state = tf.train.get_checkpoint_state(directory)
        problem = "is unreadable (corrupt?)" if os.path.exists(index) else "is missing"
    except ValueError as error:  # empty: "Invalid checkpoint state"; or not UTF-8
        state, problem = None, f"is unreadable ({error})"
    if state is not None and state.model_checkpoint_path:
        latest = state.model_checkpoint_path
        others = [p for p in reversed(state.all_model_checkpoint_paths) if p != latest]
        return [latest] + others, True
    on_disk = _checkpoints_on_disk(directory)
    if on_disk:
        logging.warning(
            "%s %s, but %d checkpoint(s) are on disk; taking them as the "
            "kept ones, newest first: %s.",
            index,
            problem,
            len(on_disk),
            ", ".join(os.path.basename(path) for path in on_disk),
        )
    return on_disk, False


def _checkpoints_on_disk(directory):
    """The ``ckpt-N`` prefixes whose ``.index`` file exists, highest N first."""
    if not os.path.isdir(directory):
        return []
    numbers = [
        int(match.group(1))
        for match in map(_SAVED_CHECKPOINT.fullmatch, os.listdir(directory))
        if match
    ]
    return [os.path.join(directory, f"ckpt-{number}") for number in sorted(numbers, reverse=True)]


def _rebuild_index(directory):
    """Rewrite a missing or unreadable index from the checkpoints on disk.

    Before the manager is created: it reads the index once, and would
    otherwise forget (never delete) the older files and refuse an empty one.
    """
    kept, indexed = _kept_checkpoints(directory)
    if kept and not indexed:
        oldest_first = list(reversed(kept))
        # The manager only manages (lists, later deletes) checkpoints newer
        # than last_preserved_timestamp: the files' times say when they were saved.
        times = [os.path.getmtime(f"{path}.index") for path in oldest_first]
        tf.compat.v1.train.update_checkpoint_state(
            directory,
            os.path.basename(oldest_first[-1]),
            [os.path.basename(path) for path in oldest_first],
            all_model_checkpoint_timestamps=times,
            last_preserved_timestamp=min(times) - 1,
        )


class Checkpointer:
    """Save and restore the training state of one run."""

    def __init__(self, strategy, model, optimizer, directory, max_to_keep=3):
        self.strategy = strategy
        self.directory = directory
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, step_in_epoch=self.step_in_epoch
        )
        self.write_directory = strategy_lib.worker_write_dir(strategy, directory)
        if self.write_directory == directory:  # other workers only read it
            _rebuild_index(directory)
        # A copy left by a killed save must not be restored by the preemption handler.
        self._drop_worker_copy()
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.write_directory, max_to_keep=max_to_keep
        )
        self._preemption = None
        self._preempted_at = None

    def restore(self):
        """Load the latest checkpoint if any; return ``(epoch, step_in_epoch)``."""
        latest = self._newest_intact()
        if latest:
            try:
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            except (AssertionError, ValueError) as error:
                raise ValueError(
                    f"--model_dir={os.path.dirname(self.directory)!r} holds checkpoint "
                    f"{latest!r} of a different model or optimizer ({error}); resume with "
                    "the flags of that run or choose a new --model_dir."
                ) from None
        if isinstance(self.strategy, _PREEMPTIBLE):
            # Created after the restore: it would otherwise restore from this
            # worker's own (empty, on non-chief workers) directory.
            self._preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
                self.strategy.cluster_resolver,
                self.manager,
                termination_config=tf.distribute.experimental.TerminationConfig(
                    save_fn=self._save_for_preemption, exit_fn=self._stop_after_preemption
                ),
            )
        return int(self.epoch.numpy()), int(self.step_in_epoch.numpy())

    def _newest_intact(self):
        """The newest kept checkpoint that reads in full; None if none was saved.

        Damaged newer ones are skipped with a warning; if every kept one is
        damaged, raise the newest one's ModelFileError, saying what to do.
        """
        kept, _ = _kept_checkpoints(self.directory)
        if not kept:
            return None
        latest = kept[0]
        damaged = []
        for path in kept:
            try:
                load.check_checkpoint_file(path)
            except load.ModelFileError as error:
                damaged.append(error)
                continue
            for error in damaged:
                logging.warning(
                    "%s; resuming from the older %s instead.", str(error).rstrip("."), path
                )
            return path
        raise load.ModelFileError(
            latest,
            f"{damaged[0].problem.rstrip('.')}; no older checkpoint in "
            f"{self.directory} is intact either: delete that directory to train from "
            "the start, or put back intact copies of the files.",
        )

    def _record(self, epoch, step_in_epoch):
        self.epoch.assign(epoch)
        self.step_in_epoch.assign(step_in_epoch)

    def save(self, epoch, step_in_epoch, global_step):
        """Checkpoint ``epoch`` completed epochs plus ``step_in_epoch`` steps."""
        self._record(epoch, step_in_epoch)
        path = self.manager.save(checkpoint_number=global_step)
        self._drop_worker_copy()
        return path

    def after_step(self, epoch, step_in_epoch, global_step):
        """Let the preemption handler save (and stop) if a notice came."""
        if self._preemption is None:
            return
        # Its save reads its own deprecated total_run_calls: 6 lines of warning.
        # (The exit after a save leaves the warnings off, as the process ends.)
        with deprecation.silence():
            self._preemption.save_checkpoint_if_preempted(epoch, step_in_epoch, global_step)

    def _save_for_preemption(self, epoch, step_in_epoch, global_step):
        self.save(epoch, step_in_epoch, global_step)
        self._preempted_at = (epoch, step_in_epoch, global_step)

    def _stop_after_preemption(self):
        """The handler's ``exit_fn``, on every worker once the state is saved."""
        epoch, step_in_epoch, global_step = self._preempted_at
        saved = os.path.join(self.directory, f"ckpt-{global_step}")
        sys.stderr.write(
            f"Preempted (SIGTERM): the training state after {global_step} steps ({epoch} "
            f"epochs and {step_in_epoch} steps) was saved to {saved}; rerun the same "
            "command on all workers to resume.\n"
        )
        sys.exit(PREEMPTED_EXIT_STATUS)

    def _drop_worker_copy(self):
        if self.write_directory != self.directory:
            shutil.rmtree(self.write_directory, ignore_errors=True)
