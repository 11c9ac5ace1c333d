"""Learning rate, optimizer and the paper's coupled L2 weight decay.

* Linear scaling: the peak rate is ``base_lr · global_batch / reference``
  (§4.1, "Small batch sizes": 0.1 for 32 images/GPU on 8 GPUs, 0.1·N/32
  for N images/GPU, i.e. 0.1 per 256 images in total).
* Schedules are Keras's own (``PiecewiseConstantDecay`` for "step",
  ``CosineDecay`` for "cosine"), wrapped in one linear warm-up.
* SGD with momentum is Keras's ``SGD``; under ``mixed_float16`` it is wrapped
  in Keras's ``LossScaleOptimizer``.
* Weight decay is *coupled* L2, as in the paper's Caffe2/Detectron code:
  ``wd·w`` is added to each decayed weight's gradient before momentum,
  which is what the loss term ``wd/2·Σ‖w‖²`` from ``l2_penalty`` produces.
  Keras's optimizer ``weight_decay`` argument is decoupled (AdamW-style,
  ``w ← w − lr·wd·w`` outside the momentum) and is deliberately not used.
"""

import keras
from keras import ops

from gn_keras import _checks


def peak_learning_rate(config, global_batch_size):
    """The linearly scaled rate reached after warm-up."""
    return config.base_lr * global_batch_size / config.lr_reference_batch


@keras.saving.register_keras_serializable(package="gn_keras")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Ramp linearly up to ``after_warmup`` over the first ``warmup_steps``.

    ``after_warmup`` is a Keras schedule or a constant rate (a float).
    During warm-up the rate is ``after_warmup(step) · (step + 1) / warmup``
    (Goyal et al.'s gradual warm-up); afterwards it is ``after_warmup(step)``,
    whose boundaries stay in absolute steps.
    """

    def __init__(self, after_warmup, warmup_steps):
        _checks.check_int(warmup_steps, "`warmup_steps`", minimum=0, where="LinearWarmup")
        self.after_warmup = after_warmup
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        target = self.after_warmup
        if callable(target):
            target = ops.cast(target(step), "float32")
        if self.warmup_steps == 0:
            return target
        fraction = ops.minimum((step + 1.0) / float(self.warmup_steps), 1.0)
        return target * fraction

    def get_config(self):
        after = self.after_warmup
        return {
            "after_warmup": after
            if isinstance(after, float)
            else keras.optimizers.schedules.serialize(after),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if not isinstance(config["after_warmup"], float):
            config["after_warmup"] = keras.optimizers.schedules.deserialize(config["after_warmup"])
        return cls(**config)


def make_schedule(config, global_batch_size, steps_per_epoch):
    """The learning-rate schedule of the run, in optimizer steps."""
    peak = peak_learning_rate(config, global_batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.lr_schedule == "step":
        # Keras switches value *after* a boundary step; the first step of
        # epoch b (step b·steps_per_epoch) must already use the lower rate.
        boundaries = [
            max(1, int(round(epoch * steps_per_epoch))) - 1 for epoch in config.lr_boundaries
        ]
        values = [peak * config.lr_decay_factor**i for i in range(len(boundaries) + 1)]
        after = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    elif config.lr_schedule == "cosine":
        after = keras.optimizers.schedules.CosineDecay(peak, decay_steps=total_steps)
    else:
        after = float(peak)
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    return LinearWarmup(after, warmup_steps)


def make_optimizer(config, schedule):
    """SGD with momentum on ``schedule``; loss-scaled under mixed_float16.

    Build it inside ``strategy.scope()`` so its slots are distributed.
    """
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def current_learning_rate(optimizer):
    """The rate the next step will use, as a Python float."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(ops.convert_to_numpy(inner.learning_rate))


def decayed_variables(model, decay_norm_params):
    """The trainable variables ``--weight_decay`` applies to.

    All of them when ``decay_norm_params`` (the paper's §4.1: "all weight
    layers, including γ and β"); otherwise all but the normalization γ/β.
    """
    variables = list(model.trainable_variables)
    if decay_norm_params:
        return variables
    from gn_keras.norms import is_norm_variable

    return [v for v in variables if not is_norm_variable(v)]


def l2_penalty(variables, weight_decay):
    """``wd/2 · Σ‖w‖²``: its gradient adds ``wd·w`` (Caffe2's coupled decay)."""
    if weight_decay == 0 or not variables:
        return 0.0
    total = sum(ops.sum(ops.square(ops.cast(v, "float32"))) for v in variables)
    return 0.5 * weight_decay * total
