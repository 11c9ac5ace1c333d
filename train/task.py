"""The task interface: the one part of a training run that differs between tasks.

Classification, detection and video training share one machinery
(``gn_keras.train.trainer``): the strategy, the step runner with its
``--steps_per_loop`` inner loop, the epoch loop, checkpoints and resume,
``results.json`` and the other outputs, Keras callbacks, the progress line
and TensorBoard.  A task supplies only what is its own, in this order
(TF Model Garden's Task/Trainer split, without its weight):

1. **data**: ``make_data(config, strategy)`` returns a ``TaskData``: the
   dataset functions for ``strategy.distribute_datasets_from_function``, the
   step counts, and the ``preprocessing`` dict written to
   ``preprocessing.json``.
2. **model**: ``build_model(config, data)`` returns the ``keras.Model``; it
   is called inside the strategy's scope.
3. **loss and metrics**: ``compute_loss(model, batch, global_batch_size)``
   runs on each replica under the gradient tape and returns
   ``(loss, outputs)``.  ``loss`` is this replica's share of the loss of the
   global batch (e.g. ``tf.nn.compute_average_loss``), so summed over the
   replicas it is the global loss; the machinery adds the weight-decay and
   layer regularization terms itself.  ``make_train_metrics()`` gives Keras
   metrics (created in the strategy's scope) and
   ``update_train_metrics(metrics, batch, outputs)`` updates them in the
   graph.
4. **evaluation**: ``make_evaluator(data)`` returns an ``Evaluator``: its
   ``replica_step(model, batch)`` runs on every replica in the graph and may
   return tensors that the machinery hands, as NumPy, to ``accumulate`` on
   the host (detection gathers boxes for COCO there; classification keeps
   Keras metrics in the graph and returns nothing).  ``result()`` gives the
   epoch's validation metrics.  ``primary_metric`` names the one that picks
   ``best.keras`` and the summary of ``results.json`` (``primary_metric_label``
   says it in words), and ``lower_is_better`` its direction.
5. **export**: ``export(model, directory, data, verify)`` writes the serving
   artefacts (a SavedModel with the task's own signature) into a staging
   directory that the machinery then moves into place; ``verify`` (true on
   the chief) asks it to check them against the Keras model.

A new task is a class with these methods (``Task`` below spells out the
protocol); the machinery never looks inside the batch or the outputs.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol


@dataclasses.dataclass
class TaskData:
    """The input side of a run, as the machinery needs it.

    ``train_dataset_fn(epoch, skip_steps)`` and ``eval_dataset_fn(steps)``
    return functions of a ``tf.distribute.InputContext`` that give
    per-replica batches; an epoch's order must depend only on (seed, epoch)
    so that a resumed epoch can skip the ``skip_steps`` batches it trained.
    ``info`` holds task-specific facts for ``results.json`` (e.g. example
    counts); ``extras`` whatever else the task keeps for itself.
    """

    train_dataset_fn: Callable[[int, int], Callable]
    eval_dataset_fn: Callable[[int], Callable]
    steps_per_epoch: int
    eval_steps: int
    global_batch_size: int
    preprocessing: dict
    info: dict = dataclasses.field(default_factory=dict)
    extras: Any = None


class Evaluator(Protocol):
    """Validation of one epoch; see the module docstring, step 4."""

    primary_metric: str
    primary_metric_label: str  # in words, for the end of the console output
    lower_is_better: bool

    def reset(self) -> None: ...

    def replica_step(self, model, batch) -> Any: ...

    def accumulate(self, outputs) -> None: ...

    def result(self) -> dict: ...


class Task(Protocol):
    """What a task supplies to the training machinery; see the module docstring."""

    name: str

    def make_data(self, config, strategy) -> TaskData: ...

    def build_model(self, config, data: TaskData): ...

    def compute_loss(self, model, batch, global_batch_size) -> tuple: ...

    def make_train_metrics(self) -> dict: ...

    def update_train_metrics(self, metrics, batch, outputs) -> None: ...

    def make_evaluator(self, data: TaskData) -> Evaluator: ...

    def export(self, model, directory, data: TaskData, verify: bool) -> None: ...
