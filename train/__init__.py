"""Training scripts and the reusable pieces behind them.

Command line: ``python -m gn_keras.train.classify`` (console script ``gn-train``);
every flag is a field of ``train.config.TrainConfig``.

Python API (what ``train.finetune`` and ``train.study`` build on — there is
one training loop, this one):

* ``train.config``: ``TrainConfig`` (one field per flag), ``PRESETS``,
  ``make_config(preset=None, **fields)`` and ``validate_config(config)``.
* ``train.flags``: ``define_flags(flag_values)`` and
  ``config_from_flags(flag_values)`` (explicit flags override the preset).
* ``train.classify.train(config, *, strategy=None, build_model=None, callbacks=None)`` runs a
  whole job and returns the ``results.json`` dict.  ``build_model(config,
  preprocessing) -> keras.Model`` (logits) replaces the model zoo, e.g. to
  start from a pre-trained backbone; it is called in the strategy's scope.
  ``train.classify.prepare(config, strategy, build_model)`` builds the data,
  model, optimizer and ``StepRunner`` of a run without training (used by
  ``bench/train_throughput.py``).
* ``train.strategy``: ``make_strategy(name, tpu_address="")`` (once per
  process), ``is_chief(strategy)``, ``worker_write_dir(strategy, path)``.
* ``train.data``: ``make_source(config)`` → ``train.sources.Source``;
  ``InputPipeline(source, config)`` with ``train_dataset_fn(epoch,
  skip_steps)``, ``eval_dataset_fn(steps)`` (for
  ``strategy.distribute_datasets_from_function``) and ``preprocessing()``
  (the ``preprocessing.json`` dict); ``steps_per_epoch`` and ``eval_steps``.
* ``train.optimizer``: ``make_schedule``, ``make_optimizer`` (SGD, loss-scaled
  under mixed_float16), ``decayed_variables``, ``l2_penalty`` (coupled L2).
* ``train.steps.StepRunner(strategy, model, optimizer, ...)``: the
  ``strategy.run`` train/eval steps and their Keras metrics.
* ``train.checkpoints.Checkpointer``: model, optimizer, epoch and step in a
  ``tf.train.CheckpointManager`` (+ preemption handling on multi-worker).
* ``train.outputs.RunOutputs``: ``results.json``, ``preprocessing.json``,
  TensorBoard, ``best.keras``/``last.keras`` and the SavedModel export.
* ``train.loop.run_epochs(runner, pipeline, checkpointer, outputs, plan, callbacks=())``:
  the epoch loop, resuming from the latest checkpoint; ``train.loop.evaluate``
  for an evaluation pass alone.
"""
