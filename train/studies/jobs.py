"""The training job a study's runs are: ``gn-train``, ``gn-video`` or ``gn-detect``.

The runner (``runner.run_all``) is the same for every study; what differs is
the job each run is.  A ``Job`` bundles the job's entry points so the runner
never names one:

* ``train(config, strategy=, callbacks=)``: the job itself, returning the
  run's results.json contents;
* ``validate(config)``: the job's config check (a ``FlagError`` naming the
  flag);
* ``check_model_name(config)``: rejects a ``--model`` (``--backbone``) the
  job cannot train, before any data is read;
* ``build_problem(config)``: why a setting's model cannot be built, or
  ``None``;
* ``result_keys``: what a finished run's results.json holds besides its
  epochs (the video job's final 10-clip ``test``);
* ``for_run(config)``: the run's config completed from its setting (the
  video and detection jobs fill ``{norm}`` in ``--trained_model``, since BN
  runs start from a BN model and GN runs from a GN one, as in the paper's
  §4.2 and §4.3; a BN* detection backbone starts from the BN model).

Imports happen inside the functions so that listing the studies (the CLI's
``--help``) does not load either training stack.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    train: object
    validate: object
    check_model_name: object
    build_problem: object
    result_keys: tuple = ()
    for_run: object = None  # config -> config; None: the config as it is

    def run_config(self, config):
        return config if self.for_run is None else self.for_run(config)


def _classify_train(config, *, strategy=None, callbacks=None):
    from gn_keras.train import classify

    return classify.train(config, strategy=strategy, callbacks=callbacks)


def _classify_validate(config):
    from gn_keras.train import config as config_lib

    config_lib.validate_config(config)


def _classify_check_model_name(config):
    from gn_keras.train import classify

    classify.check_model_name(config.model)


def _classify_build_problem(config):
    """Build the model once: e.g. G=32 groups cannot divide a 16-channel layer."""
    from gn_keras.train import classify, data

    pipeline = data.InputPipeline(data.make_source(config), config)
    try:
        classify.build_zoo_model(config, pipeline.preprocessing())
    except ValueError as error:
        return str(error)
    return None


def _video_train(config, *, strategy=None, callbacks=None):
    from gn_keras.train.video import main

    return main.train(config, strategy=strategy, callbacks=callbacks)


def _video_validate(config):
    from gn_keras.train.video import config as video_config

    video_config.validate(config)


def _video_check_model_name(config):
    from gn_keras.train.video import main

    main.check_model_name(config.model)


def _with_trained_norm(config, norm):
    """``config`` with ``{norm}`` in its ``--trained_model`` replaced by ``norm``."""
    if config.trained_model and "{norm}" in config.trained_model:
        path = config.trained_model.replace("{norm}", norm)
        return dataclasses.replace(config, trained_model=path)
    return config


def _video_for_run(config):
    return _with_trained_norm(config, config.norm)


def _detect_train(config, *, strategy=None, callbacks=None):
    from gn_keras.train import detect

    return detect.train(config, strategy=strategy, callbacks=callbacks)


def _detect_validate(config):
    from gn_keras.train.detection import config as detection_config

    detection_config.validate(config)


def _detect_check_model_name(config):
    from gn_keras import _checks, models

    _checks.check_choice(config.backbone, "--backbone", tuple(sorted(models.available())))


def _detect_for_run(config):
    """A BN* backbone starts from the BN model of ``{norm}``, any other from its own norm."""
    from gn_keras.train.studies import pretrain

    return _with_trained_norm(config, pretrain.pretrained_norm(config.backbone_norm))


def _no_build_problem(config):
    # The studies vary norms and heads only: validate() has checked the rest.
    del config
    return None


CLASSIFY = Job(
    "classify",
    _classify_train,
    _classify_validate,
    _classify_check_model_name,
    _classify_build_problem,
)
VIDEO = Job(
    "video",
    _video_train,
    _video_validate,
    _video_check_model_name,
    _no_build_problem,  # every I3D model builds for each norm, clip length and batch
    result_keys=("test",),
    for_run=_video_for_run,
)
DETECT = Job(
    "detect",
    _detect_train,
    _detect_validate,
    _detect_check_model_name,
    _no_build_problem,
    for_run=_detect_for_run,
)
JOBS = {job.name: job for job in (CLASSIFY, VIDEO, DETECT)}
