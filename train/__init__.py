"""Training scripts and the reusable pieces behind them.

Command line: ``python -m gn_keras.train.classify`` (console script ``gn-train``);
every flag is a field of ``train.config.TrainConfig``.

Python API (``gn-finetune``, ``gn-study`` and the coming detection and video
scripts build on it — there is one training machinery, this one):

* ``train.task``: the ``Task`` protocol (data → model → loss and metrics →
  evaluation → export) and ``TaskData``; ``train.classification`` has the
  classification task.
* ``train.trainer``: ``run(task, config, *, strategy=None, callbacks=None)``
  runs a whole job of any task and returns the ``results.json`` dict;
  ``prepare(task, config, strategy)`` stops before the first step.
* ``train.classify.train(config, *, strategy=None, build_model=None,
  callbacks=None)``: classification through ``trainer.run``;
  ``build_model(config, preprocessing) -> keras.Model`` (logits) replaces the
  model zoo; ``train.classify.prepare(config, strategy, build_model)`` (used
  by the benchmarks).
* ``train.config``: ``TrainConfig`` (one field per flag), ``PRESETS``,
  ``make_config(preset=None, **fields)`` and ``validate_config(config)``.
* ``train.flags``: ``define_flags(flag_values)`` and
  ``config_from_flags(flag_values)`` (explicit flags override the preset).
* ``train.cli``: the command-line plumbing of every script.
* ``train.strategy``: ``make_strategy(name, tpu_address="",
  worker_wait_timeout=0)`` (once per process), ``is_chief(strategy)``,
  ``worker_write_dir(strategy, path)``.
* ``train.cluster``: joining a multi-worker cluster (waiting line, timeout)
  and a lost worker reported in one line (``WorkerLostError``).
* ``train.data``: ``make_source(config)`` → ``train.sources.Source``;
  ``InputPipeline(source, config)``; ``steps_per_epoch`` and ``eval_steps``.
* ``train.optimizer``: ``make_schedule``, ``make_optimizer`` (SGD, loss-scaled
  under mixed_float16), ``decayed_variables``, ``l2_penalty`` (coupled L2).
* ``train.steps.StepRunner(strategy, model, optimizer, task=..., ...)``: the
  ``strategy.run`` train/eval steps, ``--steps_per_loop`` steps per call.
* ``train.checkpoints.Checkpointer``: model, optimizer, epoch and step in a
  ``tf.train.CheckpointManager`` (+ preemption handling on multi-worker).
* ``train.records.EpochRecord`` and ``summarize``: one epoch of
  ``results.json`` and the run's headline figures.
* ``train.outputs.RunOutputs``: ``results.json``, ``preprocessing.json``,
  TensorBoard, ``best.keras``/``last.keras`` and the staged export.
* ``train.loop.run_epochs(TrainingRun, callbacks=())``: the epoch loop,
  resuming from the latest checkpoint; ``train.loop.evaluate`` for an
  evaluation pass alone.
"""
