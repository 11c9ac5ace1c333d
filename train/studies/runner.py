"""Running a study's trainings through the one training job, resumably.

Every run of a study lives in ``<study_dir>/<run name>/`` and is an ordinary
job of the study's kind (``jobs.JOBS[study.job]``: ``train.classify.train``
or ``train.video.main.train``) with ``model_dir`` set to that directory.
The runner only decides what to do with each run:

* finished (``results.json`` covers every epoch, holds the job's final
  entries such as the video test, and the SavedModel is there): skipped,
  its results read back;
* started (a ``results.json`` or checkpoint exists): handed back to the
  job, whose checkpoint resume continues it;
* a setting whose model cannot be built (e.g. G=32 groups on a 16-channel
  layer): not trained, and reported as not applicable with the reason.

A run directory holding a run with other settings is refused: results of a
different configuration must never be mixed into a table.
"""

import dataclasses
import os

import keras

from gn_keras._checks import FlagError
from gn_keras.train import outputs, settings
from gn_keras.train import strategy as strategy_lib
from gn_keras.train.records import EpochRecord
from gn_keras.train.studies import jobs


@dataclasses.dataclass
class StudyRuns:
    """What a study's runs produced and what the runner did with them."""

    results: dict  # run name -> results.json contents
    configs: dict  # run name -> TrainConfig
    not_applicable: dict  # setting key -> reason
    trained: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)


def run_config(base_config, spec, study_dir, job=jobs.CLASSIFY):
    """The validated config (the job's kind) of one run of a study."""
    config = job.run_config(
        dataclasses.replace(
            base_config, **spec.overrides(), model_dir=os.path.join(study_dir, spec.name)
        )
    )
    job.validate(config)
    return config


def results_path(config):
    return os.path.join(config.model_dir, outputs.RESULTS_FILE)


def read_results(config):
    """The run's ``results.json``, or ``None`` if it has none yet."""
    path = results_path(config)
    return outputs.read_json(path) if os.path.exists(path) else None


def is_finished(config, results, job=jobs.CLASSIFY):
    """All epochs recorded, the job's final entries written and the export there."""
    if results is None:
        return False
    epochs = [EpochRecord.from_json(r).epoch for r in results.get("epochs", [])]
    exported = os.path.exists(os.path.join(config.model_dir, "saved_model", "saved_model.pb"))
    final = all(key in results for key in job.result_keys)
    return epochs == list(range(config.epochs)) and exported and final


def check_same_settings(config, results):
    """Refuse a run directory that holds a run with other settings (``train.settings``)."""
    differing = settings.differences(
        settings.compared(type(config), results.get("flags", {})),
        settings.compared(type(config), config.as_dict()),
    )
    if differing:
        details = ", ".join(
            f"{key}: stored {old!r} vs {new!r}" for key, (old, new) in differing.items()
        )
        raise FlagError(
            f"--out_dir holds run {config.model_dir!r} trained with other settings "
            f"({details}); use a new --out_dir or the flags of that study."
        )


def _plan(specs, base_config, study_dir, job):
    """``(spec, config, stored results)`` of every run, checked before any training."""
    planned = []
    for spec in specs:
        config = run_config(base_config, spec, study_dir, job)
        results = read_results(config)
        if results is not None:
            check_same_settings(config, results)
        planned.append((spec, config, results))
    return planned


def _not_applicable(planned, job):
    # One model build per setting (not per seed), and none for a setting
    # that already has a run.
    started = {spec.setting.key for spec, _, results in planned if results is not None}
    problems = {}
    for spec, config, _ in planned:
        key = spec.setting.key
        if key not in started and key not in problems:
            problems[key] = job.build_problem(config)
    return {key: problem for key, problem in problems.items() if problem}


def run_all(
    study, specs, base_config, study_dir, *, strategy=None, run_callbacks=None, after_run=None
):
    """Train (or skip, or resume) every run; return a ``StudyRuns``.

    ``run_callbacks(config)`` gives the Keras callbacks of a run's training
    loop and ``after_run(config, results)`` is called once per finished run,
    trained now or earlier, e.g. to check what those callbacks recorded.
    Both only on the chief, the one process that writes run directories.
    """
    job = jobs.JOBS[study.job]
    job.check_model_name(base_config)
    planned = _plan(specs, base_config, study_dir, job)
    runs = StudyRuns(results={}, configs={}, not_applicable=_not_applicable(planned, job))
    os.makedirs(study_dir, exist_ok=True)
    for spec, config, results in planned:
        if spec.setting.key in runs.not_applicable:
            continue
        if is_finished(config, results, job):
            runs.skipped.append(spec.name)
        else:
            if strategy is None:
                strategy = strategy_lib.strategy_for(base_config)
            print(f"[{study.name}] training {spec.name} in {config.model_dir}")
            callbacks = (
                run_callbacks(config)
                if run_callbacks is not None and strategy_lib.is_chief(strategy)
                else None
            )
            results = job.train(config, strategy=strategy, callbacks=callbacks)
            runs.trained.append(spec.name)
            # Each run builds a fresh model; without this, Keras's global
            # state keeps every earlier one alive for the whole study.
            keras.backend.clear_session()
        if after_run is not None and strategy_lib.is_chief(strategy):
            after_run(config, results)
        runs.results[spec.name] = results
        runs.configs[spec.name] = config
    return runs
