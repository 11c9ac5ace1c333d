"""The paper's studies (§4.1; §4.3's video): the trainings each needs, run and reported.

Python API (``python -m gn_keras.train.study`` is the command line over it):

* ``run_study(name, base_config, out_dir, options=StudyOptions(), command="")``
  trains every run of study ``name`` (``norms``, ``batch_size``, ``groups``,
  ``feature_stats`` with ``train.classify.train``; ``video``, the §4.3
  Table 8 / Figure 7, with ``gn-video``'s ``train.video.main.train`` and a
  ``VideoConfig``; ``detection_heads``, ``detection_backbones`` and
  ``detection_scratch``, §4.2's Tables 4-7, with ``gn-detect``'s
  ``train.detect.train`` and a ``DetectionConfig``, after pre-training the
  backbones they fine-tune unless ``base_config.trained_model`` names them)
  in ``<out_dir>/<name>/<run name>/``, skipping finished
  runs and resuming started ones, then writes ``<out_dir>/<name>/<name>.md``
  with the table(s), the PNG figure(s) and ``summary.json``.  It returns a
  ``StudyOutcome`` (the report path and the ``runner.StudyRuns``).
* ``specs``: the studies (``STUDIES``, ``get_study``), their grids
  (``StudyOptions``) and runs (``RunSpec``).
* ``jobs``: which training job a study's runs are; ``runner``: skip/resume
  logic; ``summary``: numbers from results.json; ``tables`` and
  ``figures``: the paper's layouts; ``report``: the files;
  ``feature_stats``: the percentile callback of Figure 6; ``pretrain``: the
  detection studies' backbones pre-trained on shape crops.
"""

import dataclasses
import os

from gn_keras.train.studies import feature_stats, pretrain, report, runner
from gn_keras.train.studies.specs import STUDIES, StudyOptions, get_study

__all__ = ["STUDIES", "StudyOptions", "StudyOutcome", "get_study", "run_study"]


@dataclasses.dataclass
class StudyOutcome:
    report_path: str
    runs: runner.StudyRuns


def run_study(name, base_config, out_dir, options=None, command="", strategy=None):
    """Run (or finish) study ``name`` and write its report; see the module doc."""
    study = get_study(name)
    options = options or StudyOptions()
    study_dir = os.path.join(out_dir, study.name)
    specs = study.runs(options, first_seed=base_config.seed)
    if study.fine_tunes:
        norms = sorted(
            {pretrain.pretrained_norm(s.setting.overrides["backbone_norm"]) for s in specs}
        )
        base_config = pretrain.with_pretrained(
            base_config, norms, out_dir, options.detection_pretrain_epochs, strategy
        )
    recorder = (
        {"run_callbacks": feature_stats.run_callbacks, "after_run": feature_stats.check_recorded}
        if study.records_feature_stats
        else {}
    )
    runs = runner.run_all(study, specs, base_config, study_dir, strategy=strategy, **recorder)
    path = report.write_report(study, specs, runs, study_dir, command=command)
    return StudyOutcome(path, runs)
