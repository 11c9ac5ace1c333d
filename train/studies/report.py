"""A study's report: its Markdown table(s), PNG figure(s) and summary.json.

``write_report`` turns the runs of a study (``runner.StudyRuns``) into
``<study_dir>/<study>.md``, the PNGs beside it, and ``summary.json`` (the
numbers behind the table, per setting and per seed).  Every number comes
from the runs' results.json (and feature_stats.json for Figure 6) through
``summary.summarize_settings``; nothing is typed in.  The video study's
Table 8 reads each run's final 10-clip ``test`` entry, its Figure 7 the
per-epoch centre-clip validation error.  The detection studies' tables read
each run's final COCO AP (``final_bbox_AP``, …), their figure the AP after
every epoch, and print the paper's numbers beneath.
"""

import functools
import os

import numpy as np

from gn_keras._checks import FlagError
from gn_keras.train import outputs
from gn_keras.train.studies import feature_stats, figures, pretrain, summary, tables

REPORT_TITLES = {
    "norms": "Normalization methods at one batch size (the paper's Table 1, Figure 4)",
    "batch_size": "Sensitivity to the batch size (the paper's Table 2, Figures 1 and 5)",
    "groups": "Group division (the paper's Table 3)",
    "feature_stats": "Feature distributions of VGG-16's last conv (the paper's Figure 6)",
    "video": "Video classification, BN vs GN (the paper's Table 8, Figure 7)",
    "detection_heads": "Mask R-CNN box heads and their norms (the paper's Table 5)",
    "detection_backbones": "Mask R-CNN backbones, BN* vs GN (the paper's Tables 4 and 6)",
    "detection_scratch": "Mask R-CNN from scratch, GN vs sync BN (the paper's Table 7)",
}


def unique_settings(specs):
    """The settings of ``specs`` in grid order, each once."""
    seen = {}
    for spec in specs:
        seen.setdefault(spec.setting.key, spec.setting)
    return list(seen.values())


def caption(runs):
    """What every figure of the study states: data, model, epochs, batch, seeds."""
    configs = list(runs.configs.values())
    first = configs[0]
    seeds = sorted({config.seed for config in configs})
    models = sorted({config.model for config in configs})
    batches = sorted({config.batch_size_per_replica for config in configs}, reverse=True)
    return (
        f"Dataset {first.dataset} at {first.image_size} px, model {', '.join(models)}, "
        f"{first.epochs} epochs ({first.lr_schedule} lr, base {first.base_lr:g} per "
        f"{first.lr_reference_batch} images), batch {'/'.join(map(str, batches))} per "
        f"replica, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}. "
        "Error: top-1 val error (%), median of a run's last 5 epochs, "
        f"median over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}."
    )


def video_caption(runs):
    """What Table 8 and Figure 7 state: data, model, clips, schedule, the two metrics."""
    configs = list(runs.configs.values())
    first = configs[0]
    seeds = sorted({config.seed for config in configs})
    models = sorted({config.model for config in configs})
    plural = "s" if len(seeds) > 1 else ""
    return (
        f"Dataset {first.dataset}, model {', '.join(models)}, {first.crop_size} px crops, "
        f"{first.epochs} epochs ({first.lr_schedule} lr, base {first.base_lr:g} per "
        f"{first.lr_reference_batch} clips), seed{plural} {', '.join(map(str, seeds))}. "
        f"Table: top-1 / top-5 accuracy (%) of the final {first.test_clips}-clip test "
        f"({first.test_crops} crop{'s' if first.test_crops > 1 else ''} per clip, softmax "
        "averaged). Curves: top-1 val error (%) of one centre clip per video after each "
        f"epoch. Median over {len(seeds)} seed{plural}."
    )


def _backbone_start(configs):
    """Where the runs' backbones started, for the caption."""
    if all(not c.trained_model for c in configs):
        return "from scratch (nothing frozen)"
    freeze = {c.freeze_at for c in configs}
    frozen = "stem and res2 frozen" if freeze == {-1} else f"--freeze_at={min(freeze)}"
    norms = sorted({pretrain.pretrained_norm(c.backbone_norm).upper() for c in configs})
    parents = {os.path.basename(os.path.dirname(c.trained_model)) for c in configs}
    where = (
        f"pre-trained by the study on {pretrain.CROP_SIZE}-px shape crops"
        if parents == {pretrain.PRETRAIN_DIR}
        else "from --trained_model"
    )
    return f"{'/'.join(norms)} backbones {where} (BN frozen into BN*; {frozen})"


def detection_caption(runs):
    """What Tables 4-7 and the AP figure state: data, model, schedule, where backbones began."""
    configs = list(runs.configs.values())
    first = configs[0]
    seeds = sorted({config.seed for config in configs})
    plural = "s" if len(seeds) > 1 else ""
    steps = next(iter(runs.results.values()))["steps_per_epoch"]
    data = (
        f"shapes ({first.shapes_train_images} training, {first.shapes_val_images} validation "
        f"images of {first.shapes_image_size} px)"
        if first.dataset == "shapes"
        else first.dataset
    )
    return (
        f"Dataset {data}, Mask R-CNN on {first.backbone} at {first.image_size[0]} px, "
        f"{first.epochs} epochs of {steps} steps of {first.batch_size_per_replica} images per "
        f"replica ({first.lr_schedule} lr, base {first.base_lr:g} per {first.lr_reference_batch} "
        f"images), {_backbone_start(configs)}, seed{plural} {', '.join(map(str, seeds))}. "
        "Table: COCO AP (%) on the validation images after the last epoch, median over "
        f"{len(seeds)} seed{plural}. Curves: AP after each epoch."
    )


def _detection(name, settings, summaries, runs, study_dir, text):
    ours, paper = tables.detection_tables(name, summaries, settings)
    path = figures.ap_curves_figure(
        [summaries[s.key] for s in settings if s.key in summaries],
        os.path.join(study_dir, f"{name}_ap.png"),
        text,
    )
    return f"{ours}\n\n{tables.PAPER_NOTE}\n\n{paper}", [path]


def _video(settings, summaries, runs, study_dir, text):
    accuracies = {
        key: summary.median_test_accuracy(result, runs.results) for key, result in summaries.items()
    }
    short = min(s.overrides["frames"] for s in settings)
    long = max(s.overrides["frames"] for s in settings)
    panels = [
        (
            f"{norm.upper()}, {short} frames: val error",
            [
                summaries[s.key]
                for s in settings
                if s.panel == norm and s.overrides["frames"] == short and s.key in summaries
            ],
        )
        for norm in ("bn", "gn")
    ]
    panels.append(
        (
            f"{long} frames: val error",
            [
                summaries[s.key]
                for s in settings
                if s.overrides["frames"] == long and s.key in summaries
            ],
        )
    )
    curves = figures.per_panel_curves_figure(
        panels, os.path.join(study_dir, "video_curves.png"), text
    )
    return tables.video_table(accuracies, settings), [curves]


def _norms(settings, summaries, runs, study_dir, text):
    path = os.path.join(study_dir, "norms_curves.png")
    figures.error_curves_figure(
        [summaries[s.key] for s in settings if s.key in summaries], path, text
    )
    return tables.norms_table(summaries, settings), [path]


def _batch_size(settings, summaries, runs, study_dir, text):
    columns = [s.column for s in settings if s.panel == "bn"]
    lines = {
        norm.upper(): [
            summaries[s.key].error if s.key in summaries else None
            for s in settings
            if s.panel == norm
        ]
        for norm in ("bn", "gn")
    }
    vs_batch = figures.error_vs_setting_figure(
        [("val error vs. batch size", "batch size (images per replica)", columns, lines)],
        os.path.join(study_dir, "batch_size_error.png"),
        text,
    )
    panels = [
        (
            f"{norm.upper()}: val error",
            [summaries[s.key] for s in settings if s.panel == norm and s.key in summaries],
        )
        for norm in ("bn", "gn")
    ]
    curves = figures.per_panel_curves_figure(
        panels, os.path.join(study_dir, "batch_size_curves.png"), text
    )
    return tables.batch_size_table(summaries, settings), [vs_batch, curves]


def _groups(settings, summaries, runs, study_dir, text):
    panels = []
    for panel, title, xlabel in (
        ("groups", "fixed number of groups", "# groups (G)"),
        ("group_size", "fixed channels per group", "# channels per group"),
    ):
        chosen = [s for s in settings if s.panel == panel]
        if chosen:
            errors = [summaries[s.key].error if s.key in summaries else None for s in chosen]
            panels.append((title, xlabel, [s.column for s in chosen], {"GN": errors}))
    path = figures.error_vs_setting_figure(panels, os.path.join(study_dir, "groups.png"), text)
    return tables.groups_tables(summaries, settings), [path]


def median_percentiles(run_dirs):
    """Per-epoch median over runs of each recorded percentile."""
    stats = [
        feature_stats.read_feature_stats(os.path.join(d, feature_stats.FEATURE_STATS_FILE))
        for d in run_dirs
    ]
    records = [s["epochs"] for s in stats]
    epochs = [r["epoch"] for r in records[0]]
    values = np.median(np.asarray([[r["values"] for r in rs] for rs in records]), axis=0)
    return stats[0]["percentiles"], [
        {"epoch": e, "values": [float(v) for v in row]} for e, row in zip(epochs, values)
    ]


def _feature_stats(settings, summaries, runs, study_dir, text):
    panels, error_rows = [], []
    for setting in settings:
        if setting.key not in summaries:
            continue
        result = summaries[setting.key]
        run_dirs = [runs.configs[name].model_dir for name in result.run_names]
        percentiles, records = median_percentiles(run_dirs)
        title = "none (w/o norm)" if setting.key == "none" else setting.label
        panels.append((title, percentiles, records))
        error_rows.append((setting.label, tables.fmt_error(result.error)))
    path = figures.percentile_figure(
        panels, error_rows, os.path.join(study_dir, "feature_stats.png"), text
    )
    return tables.norms_table(summaries, settings), [path]


_SECTIONS = {
    "norms": _norms,
    "batch_size": _batch_size,
    "groups": _groups,
    "feature_stats": _feature_stats,
    "video": _video,
    **{name: functools.partial(_detection, name) for name in tables.DETECTION_LEAD},
}


def _test_entry(result, runs):
    """A video setting's final-test accuracies (%), median and per seed."""
    if not all("test" in runs.results[name] for name in result.run_names):
        return {}
    per_seed = [summary.test_accuracy(runs.results[name]) for name in result.run_names]
    return {
        "test_top1_top5": list(summary.median_test_accuracy(result, runs.results)),
        "test_top1_top5_per_seed": [list(scores) for scores in per_seed],
    }


def _summary_json(summaries, runs):
    if summaries and isinstance(next(iter(summaries.values())), summary.DetectionResult):
        return _detection_summary_json(summaries, runs)
    return {
        "settings": {
            key: {
                "label": r.label,
                "error": r.error,
                "errors": r.errors,
                "seeds": r.seeds,
                "runs": r.run_names,
                "val_curve": r.val_curve,
                **_test_entry(r, runs),
            }
            for key, r in summaries.items()
        },
        "not_applicable": runs.not_applicable,
    }


def _detection_summary_json(summaries, runs):
    return {
        "settings": {
            key: {
                "label": r.label,
                "coco_ap": r.ap,
                "coco_ap_per_seed": r.ap_per_seed,
                "seeds": r.seeds,
                "runs": r.run_names,
                "steps": r.steps,
                "box_ap_curve": r.box_curve,
                "mask_ap_curve": r.mask_curve,
            }
            for key, r in summaries.items()
        },
        "not_applicable": runs.not_applicable,
    }


def _markdown(study, table, paths, text, runs, command):
    lines = [f"# {REPORT_TITLES[study.name]}", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    lines += [table, ""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in paths]
    lines += ["", f"*{text}*", ""]
    if runs.not_applicable:
        lines += ["Settings that could not be built and were not run:", ""]
        lines += [f"- `{key}`: {reason}" for key, reason in runs.not_applicable.items()]
        lines.append("")
    return "\n".join(lines)


def write_report(study, specs, runs, study_dir, command=""):
    """Write the study's Markdown, PNGs and summary.json; return the .md path."""
    if not runs.results:
        raise FlagError(
            f"--study={study.name}: none of its settings could run "
            f"({runs.not_applicable}); nothing to report."
        )
    settings = unique_settings(specs)
    if study.job == "detect":
        summaries = summary.summarize_detection(specs, runs.results)
        text = detection_caption(runs)
    else:
        summaries = summary.summarize_settings(specs, runs.results)
        text = video_caption(runs) if study.job == "video" else caption(runs)
    table, paths = _SECTIONS[study.name](settings, summaries, runs, study_dir, text)
    outputs.write_json_atomically(
        os.path.join(study_dir, "summary.json"), _summary_json(summaries, runs)
    )
    path = os.path.join(study_dir, f"{study.name}.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_markdown(study, table, paths, text, runs, command))
    return path
