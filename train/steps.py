"""The compiled train and evaluation steps, run on every replica by ``strategy.run``.

One ``StepRunner`` serves every strategy (one device, mirrored, multi-worker,
TPU) the way tf-models-official's orbit does: a ``tf.function`` takes the
next element of a distributed iterator (one global batch, as per-replica
values) and calls ``strategy.run`` on a per-replica step.  Keras 3's
``Model.fit`` is not used because it fails
under MultiWorkerMirroredStrategy (keras-team/keras#20585).

Per replica, the loss is the cross-entropy averaged over the *global* batch
(``tf.nn.compute_average_loss``) plus the regularization terms divided by the
replica count (``tf.nn.scale_regularization_loss``), so summing gradients
over replicas — which Keras's optimizer does — gives the global-batch
gradient.  The regularizers are the layers' own losses and the coupled L2
term of ``train.optimizer.l2_penalty``.  Logits are cast to float32 before
the loss so mixed precision never computes the softmax in 16 bits; the
optimizer's ``scale_loss`` is the identity unless it is Keras's
``LossScaleOptimizer``.

Metrics are Keras metrics created in the strategy's scope (their variables
are summed across replicas on read): mean cross-entropy, top-1 and top-5
accuracy, reported as errors.
"""

import keras
import tensorflow as tf

from gn_keras.train import optimizer as optimizer_lib


def _make_metrics(prefix, num_classes):
    return {
        "loss": keras.metrics.Mean(name=f"{prefix}_loss"),
        "top1": keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}_top1"),
        "top5": keras.metrics.SparseTopKCategoricalAccuracy(
            k=min(5, num_classes), name=f"{prefix}_top5"
        ),
    }


def _update(metrics, labels, logits, per_example_loss, weights=None):
    metrics["loss"].update_state(per_example_loss, sample_weight=weights)
    metrics["top1"].update_state(labels, logits, sample_weight=weights)
    metrics["top5"].update_state(labels, logits, sample_weight=weights)


class StepRunner:
    """Distributed train/eval steps of ``model`` and their running metrics.

    Args:
      strategy: the run's ``tf.distribute.Strategy``.
      model: a Keras model producing logits, built in ``strategy.scope()``.
      optimizer: a Keras optimizer built in ``strategy.scope()``.
      global_batch_size: images per step over all replicas.
      num_classes: logits width (for one-hot labels and top-k).
      label_smoothing: cross-entropy label smoothing.
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
        global_batch_size,
        num_classes,
        label_smoothing=0.0,
        weight_decay=0.0,
        decayed_variables=(),
        jit_compile=False,
    ):
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.global_batch_size = global_batch_size
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.decayed_variables = list(decayed_variables)
        with strategy.scope():
            self.train_metrics = _make_metrics("train", num_classes)
            self.eval_metrics = _make_metrics("val", num_classes)
        self._gradients = tf.function(self._loss_and_gradients, jit_compile=jit_compile)
        self._train_batch = tf.function(self._distributed_train_step)
        self._eval_batch = tf.function(self._distributed_eval_step)

    # The iterator stays outside the tf.functions: handing one in works, but
    # then deleting it at the end of an epoch stalls for seconds (9 s for
    # ResNet-20 here), while distributed batches as arguments cost nothing.
    def train_step(self, iterator):
        """Train on the next global batch of ``iterator``; return the loss."""
        images, labels = next(iterator)
        return self._train_batch(images, labels)

    def eval_step(self, iterator):
        """Add the next global batch of ``iterator`` to the eval metrics."""
        images, labels, weights = next(iterator)
        self._eval_batch(images, labels, weights)

    def _per_example_loss(self, labels, logits):
        one_hot = tf.one_hot(labels, self.num_classes)
        return keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=self.label_smoothing
        )

    def _loss_and_gradients(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = self._per_example_loss(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            regularization = optimizer_lib.l2_penalty(self.decayed_variables, self.weight_decay)
            regularization += sum(self.model.losses)
            loss += tf.nn.scale_regularization_loss(regularization)
            scaled = self.optimizer.scale_loss(loss)
        return loss, logits, per_example, tape.gradient(scaled, variables)

    def _replica_train_step(self, images, labels):
        loss, logits, per_example, gradients = self._gradients(images, labels)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        _update(self.train_metrics, labels, logits, per_example)
        return loss

    def _distributed_train_step(self, images, labels):
        losses = self.strategy.run(self._replica_train_step, args=(images, labels))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def _replica_eval_step(self, images, labels, weights):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        per_example = self._per_example_loss(labels, logits)
        _update(self.eval_metrics, labels, logits, per_example, weights)

    def _distributed_eval_step(self, images, labels, weights):
        self.strategy.run(self._replica_eval_step, args=(images, labels, weights))

    @staticmethod
    def results(metrics):
        """``{"loss", "top1_error", "top5_error"}`` as floats (all replicas)."""
        return {
            "loss": float(metrics["loss"].result()),
            "top1_error": 1.0 - float(metrics["top1"].result()),
            "top5_error": 1.0 - float(metrics["top5"].result()),
        }

    @staticmethod
    def reset(metrics):
        for metric in metrics.values():
            metric.reset_state()
