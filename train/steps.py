"""The compiled train and evaluation steps of any task, run on every replica by ``strategy.run``.

One ``StepRunner`` serves every strategy (one device, mirrored, multi-worker,
TPU) and every task (``gn_keras.train.task``) the way tf-models-official's
orbit does: a ``tf.function`` takes the next element of a distributed
iterator (one global batch, as per-replica values) and calls ``strategy.run``
on a per-replica step.  Keras 3's ``Model.fit`` is not used because it fails
under MultiWorkerMirroredStrategy (keras-team/keras#20585).

``train_steps(iterator, n)`` runs ``n`` steps inside one ``tf.function``
(``--steps_per_loop``), so the Python dispatch, the learning-rate read and
the host sync of the loss are paid once per ``n`` steps, not once per step.
It returns the loss of the first of those steps as a tensor: the loop reads
it only where it logs (chunks start at logged steps).

Per replica, the loss is the task's share of the global-batch loss (e.g.
``tf.nn.compute_average_loss``) plus the regularization terms divided by the
replica count (``tf.nn.scale_regularization_loss``), so summing gradients
over replicas — which Keras's optimizer does — gives the global-batch
gradient.  The regularizers are the layers' own losses and the coupled L2
term of ``train.optimizer.l2_penalty``.  The optimizer's ``scale_loss`` is
the identity unless it is Keras's ``LossScaleOptimizer``.
"""

import tensorflow as tf

from gn_keras.train import optimizer as optimizer_lib


class StepRunner:
    """Distributed train/eval steps of ``model`` for ``task``, and its train metrics.

    Args:
      strategy: the run's ``tf.distribute.Strategy``.
      model: the task's Keras model, built in ``strategy.scope()``.
      optimizer: a Keras optimizer built in ``strategy.scope()``.
      task: a ``gn_keras.train.task.Task``: loss and train metrics.
      global_batch_size: examples per step over all replicas.
      evaluator: the task's ``Evaluator`` (None: no evaluation steps).
      weight_decay: coupled L2 strength.
      decayed_variables: the variables ``weight_decay`` applies to.
      jit_compile: XLA-compile the forward/backward pass of a replica.
    """

    def __init__(
        self,
        strategy,
        model,
        optimizer,
        *,
        task,
        global_batch_size,
        evaluator=None,
        weight_decay=0.0,
        decayed_variables=(),
        jit_compile=False,
    ):
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.task = task
        self.global_batch_size = global_batch_size
        self.evaluator = evaluator
        self.weight_decay = weight_decay
        self.decayed_variables = list(decayed_variables)
        with strategy.scope():
            self.train_metrics = task.make_train_metrics()
        self._gradients = tf.function(self._loss_and_gradients, jit_compile=jit_compile)
        self._train_batch = tf.function(self._distributed_train_step)
        self._train_loop = tf.function(self._distributed_train_loop)
        self._eval_batch = tf.function(self._distributed_eval_step)

    # One step takes its batch from the iterator in Python and passes the
    # distributed batch; several steps per call take them inside the
    # function.  Either way the iterator lives for many epochs
    # (train.iterators): deleting one stalls for seconds.
    def train_step(self, iterator):
        """Train on the next global batch of ``iterator``; return the loss tensor."""
        return self._train_batch(next(iterator))

    def train_steps(self, iterator, num_steps):
        """Train ``num_steps`` global batches in one call; return the first one's loss tensor."""
        if num_steps == 1:
            return self.train_step(iterator)
        return self._train_loop(iterator, tf.constant(num_steps, tf.int32))

    def eval_step(self, iterator):
        """Evaluate the next global batch; return the replicas' outputs as NumPy (or None)."""
        outputs = self._eval_batch(next(iterator))
        if outputs is None:
            return None
        local = tf.nest.map_structure(self.strategy.experimental_local_results, outputs)
        return tf.nest.map_structure(lambda value: value.numpy(), local)

    def _loss_and_gradients(self, batch):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss, outputs = self.task.compute_loss(self.model, batch, self.global_batch_size)
            regularization = optimizer_lib.l2_penalty(self.decayed_variables, self.weight_decay)
            regularization += sum(self.model.losses)
            loss += tf.nn.scale_regularization_loss(regularization)
            scaled = self.optimizer.scale_loss(loss)
        return loss, outputs, tape.gradient(scaled, variables)

    def _replica_train_step(self, batch):
        loss, outputs, gradients = self._gradients(batch)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        self.task.update_train_metrics(self.train_metrics, batch, outputs)
        return loss

    def _distributed_train_step(self, batch):
        losses = self.strategy.run(self._replica_train_step, args=(batch,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def _distributed_train_loop(self, iterator, num_steps):
        first_loss = tf.constant(0.0)
        for index in tf.range(num_steps):
            loss = self._distributed_train_step(next(iterator))
            first_loss = tf.where(index == 0, tf.cast(loss, tf.float32), first_loss)
        return first_loss

    def _distributed_eval_step(self, batch):
        return self.strategy.run(self.evaluator.replica_step, args=(self.model, batch))

    def train_results(self):
        """The train metrics as floats (all replicas)."""
        return {name: float(metric.result()) for name, metric in self.train_metrics.items()}

    def reset_train_metrics(self):
        for metric in self.train_metrics.values():
            metric.reset_state()
