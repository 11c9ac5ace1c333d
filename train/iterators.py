"""The distributed iterators a run trains and evaluates from, kept across epochs.

Making a distributed iterator costs 0.1–0.5 s, and deleting one whose
dataset tf.data autotunes (every ``AUTOTUNE`` map or prefetch) waits up to
several seconds for the autotuning thread to stop, with no CPU used.  One
iterator per epoch paid both every epoch; these pay them once per run (per
``EPOCHS_PER_ITERATOR`` epochs for training), without changing a batch:

* ``TrainInput``: one dataset for a window of epochs, each epoch's
  ``TaskData.train_dataset_fn(epoch, skip_steps)`` taken to exactly its
  steps and concatenated, so every epoch still has the order of its own
  (seed, epoch) and a resumed epoch still skips the batches it trained.  A
  prefetch on top builds the next epoch's pipeline (and fills its shuffle
  buffer) while the current epoch's last steps train.
* ``EvalInput``: the ``eval_steps`` global batches of
  ``TaskData.eval_dataset_fn``, repeated: every epoch evaluates the same
  batches, as a fresh iterator did.

Counts are per input pipeline: each global step takes one per-replica batch
for each replica the pipeline feeds.
"""

import tensorflow as tf

# Building the concatenated dataset costs ~25 ms per epoch (measured on the
# synthetic classification pipeline), so a very long run is split into
# windows of this many epochs rather than one ever-growing dataset.
EPOCHS_PER_ITERATOR = 32


def _batches_per_step(context):
    """Per-replica batches one input pipeline gives per global step."""
    return context.num_replicas_in_sync // context.num_input_pipelines


def epochs_dataset_fn(train_dataset_fn, steps_per_epoch, first_epoch, first_step, end_epoch):
    """For ``distribute_datasets_from_function``: epochs ``first_epoch`` to
    ``end_epoch - 1`` back to back, the first resumed after ``first_step`` steps."""

    def dataset_fn(context):
        per_step = _batches_per_step(context)
        epochs = None
        for epoch in range(first_epoch, end_epoch):
            skip = first_step if epoch == first_epoch else 0
            one = train_dataset_fn(epoch, skip)(context)
            one = one.take((steps_per_epoch - skip) * per_step)
            epochs = one if epochs is None else epochs.concatenate(one)
        return epochs.prefetch(tf.data.AUTOTUNE)

    return dataset_fn


class TrainInput:
    """The training iterator of a run, positioned at each epoch as it comes.

    ``epoch_iterator(epoch, first_step)`` gives an iterator whose next batch
    is step ``first_step`` of ``epoch``; the caller then takes exactly the
    epoch's remaining steps.  Asking for the epoch that follows continues the
    same iterator; anything else (a new window, a jump) builds a new one.
    """

    def __init__(self, strategy, data, plan, epochs_per_iterator=EPOCHS_PER_ITERATOR):
        self.strategy = strategy
        self.data = data
        self.plan = plan
        self.epochs_per_iterator = epochs_per_iterator
        self._iterator = None
        self._next_epoch = None
        self._window_end = None

    def epoch_iterator(self, epoch, first_step=0):
        continues = first_step == 0 and epoch == self._next_epoch and epoch < self._window_end
        if not continues:
            self._iterator = None  # drop the old one before building the next
            self._window_end = max(
                epoch + 1, min(epoch + self.epochs_per_iterator, self.plan.epochs)
            )
            dataset_fn = epochs_dataset_fn(
                self.data.train_dataset_fn,
                self.plan.steps_per_epoch,
                epoch,
                first_step,
                self._window_end,
            )
            self._iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        self._next_epoch = epoch + 1
        return self._iterator


def repeated_eval_dataset_fn(eval_dataset_fn, eval_steps):
    """For ``distribute_datasets_from_function``: the first ``eval_steps``
    global steps of ``eval_dataset_fn(eval_steps)``, over and over."""
    make = eval_dataset_fn(eval_steps)

    def dataset_fn(context):
        return make(context).take(eval_steps * _batches_per_step(context)).repeat()

    return dataset_fn


class EvalInput:
    """The evaluation iterator of a run: each ``eval_steps`` batches are one pass."""

    def __init__(self, strategy, data, eval_steps):
        self.strategy = strategy
        self.data = data
        self.eval_steps = eval_steps
        self._iterator = None

    def iterator(self):
        if self._iterator is None:
            dataset_fn = repeated_eval_dataset_fn(self.data.eval_dataset_fn, self.eval_steps)
            self._iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        return self._iterator
