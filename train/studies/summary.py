"""From the runs' ``results.json`` to one number and two curves per setting.

Every figure and table of a study is drawn from these summaries, and these
come only from what the training loop wrote to each run's results.json:

* the error of a run is its ``median_last5_top1_error``, the paper's
  "median error rate of the final 5 epochs" (§4.1);
* with several seeds per setting (``--runs_per_config``) the setting's
  error is the median over seeds, and its curves the per-epoch median;
* a video run's final test (``results["test"]``, the 10-clip protocol of
  §4.3) gives its top-1/top-5 accuracy (``test_accuracy``);
* a detection run's COCO AP (Tables 4-7) is its final epoch's
  (``final_bbox_AP``, …), the model the paper evaluates, and its curve the
  AP after every epoch against the training steps taken
  (``summarize_detection``);
* all numbers are percentages.
"""

import dataclasses

import numpy as np

from gn_keras.train.records import EpochRecord


def to_percent(fraction):
    return 100.0 * float(fraction)


def run_error(results):
    """A run's reported error (%): the median val top-1 error of the last 5 epochs."""
    return to_percent(results["median_last5_top1_error"])


def test_accuracy(results):
    """A video run's final-test (top-1, top-5) accuracy (%)."""
    test = results["test"]
    return to_percent(test["top1_accuracy"]), to_percent(test["top5_accuracy"])


def median_test_accuracy(setting_result, all_results):
    """A setting's final-test (top-1, top-5) accuracy (%), each the median over its seeds."""
    scores = np.asarray([test_accuracy(all_results[name]) for name in setting_result.run_names])
    return tuple(float(v) for v in np.median(scores, axis=0))


def error_curves(results):
    """Per-epoch train and val top-1 error (%), in epoch order."""
    records = sorted(map(EpochRecord.from_json, results["epochs"]), key=lambda r: r.epoch)
    return (
        [to_percent(r.train["top1_error"]) for r in records],
        [to_percent(r.val["top1_error"]) for r in records],
    )


@dataclasses.dataclass
class SettingResult:
    """One setting of a study, reduced over its seeds."""

    setting: object  # specs.Setting
    run_names: list
    seeds: list
    errors: list  # per seed, %
    error: float  # median over seeds, %
    train_curve: list  # per epoch, median over seeds, %
    val_curve: list

    @property
    def key(self):
        return self.setting.key

    @property
    def label(self):
        return self.setting.label


def median_curve(curves):
    """The per-epoch median of equally long curves."""
    return [float(v) for v in np.median(np.asarray(curves, dtype=np.float64), axis=0)]


def runs_by_setting(specs, all_results):
    """``{setting key: (setting, [spec, ...])}`` in grid order, for the runs that finished."""
    grouped = {}
    for spec in specs:
        if spec.name in all_results:
            grouped.setdefault(spec.setting.key, (spec.setting, []))[1].append(spec)
    return grouped


def summarize_settings(specs, all_results):
    """``{setting key: SettingResult}`` in grid order, for settings that ran."""
    grouped = runs_by_setting(specs, all_results)
    summaries = {}
    for key, (setting, runs) in grouped.items():
        results = [all_results[spec.name] for spec in runs]
        errors = [run_error(r) for r in results]
        curves = [error_curves(r) for r in results]
        summaries[key] = SettingResult(
            setting=setting,
            run_names=[spec.name for spec in runs],
            seeds=[spec.seed for spec in runs],
            errors=errors,
            error=float(np.median(errors)),
            train_curve=median_curve([train for train, _ in curves]),
            val_curve=median_curve([val for _, val in curves]),
        )
    return summaries


# The paper's COCO columns (Tables 4-7) as (header, results.json val key).
COCO_COLUMNS = (
    ("AP^bbox", "bbox_AP"),
    ("AP^bbox_50", "bbox_AP50"),
    ("AP^bbox_75", "bbox_AP75"),
    ("AP^mask", "segm_AP"),
    ("AP^mask_50", "segm_AP50"),
    ("AP^mask_75", "segm_AP75"),
)


def final_coco_ap(results):
    """A detection run's COCO AP (%) after its last epoch, ``{val key: value}``."""
    return {key: to_percent(results[f"final_{key}"]) for _, key in COCO_COLUMNS}


def ap_curve(results, key):
    """``(training steps, AP %)`` after each epoch of a detection run."""
    records = sorted(map(EpochRecord.from_json, results["epochs"]), key=lambda r: r.epoch)
    steps = [(r.epoch + 1) * results["steps_per_epoch"] for r in records]
    return steps, [to_percent(r.val[key]) for r in records]


@dataclasses.dataclass
class DetectionResult:
    """One row of a detection table, reduced over its seeds (all numbers %)."""

    setting: object  # specs.Setting
    run_names: list
    seeds: list
    ap: dict  # val key -> median over seeds of the final AP
    ap_per_seed: list  # one {val key: AP} per seed
    steps: list  # training steps at each evaluation
    box_curve: list  # box AP per evaluation, median over seeds
    mask_curve: list

    @property
    def key(self):
        return self.setting.key

    @property
    def label(self):
        return self.setting.label


def summarize_detection(specs, all_results):
    """``{setting key: DetectionResult}`` in grid order, for settings that ran."""
    grouped = runs_by_setting(specs, all_results)
    summaries = {}
    for key, (setting, runs) in grouped.items():
        results = [all_results[spec.name] for spec in runs]
        per_seed = [final_coco_ap(r) for r in results]
        steps = ap_curve(results[0], "bbox_AP")[0]
        summaries[key] = DetectionResult(
            setting=setting,
            run_names=[spec.name for spec in runs],
            seeds=[spec.seed for spec in runs],
            ap={k: float(np.median([ap[k] for ap in per_seed])) for _, k in COCO_COLUMNS},
            ap_per_seed=per_seed,
            steps=steps,
            box_curve=median_curve([ap_curve(r, "bbox_AP")[1] for r in results]),
            mask_curve=median_curve([ap_curve(r, "segm_AP")[1] for r in results]),
        )
    return summaries
