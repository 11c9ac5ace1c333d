"""Markdown tables laid out like the paper's Tables 1-8 and Figure 6's inset.

Each function takes ``{setting key: summary.SettingResult}`` and returns
Markdown.  Errors are printed with two decimals (digits-sized errors are
small); a setting that could not run shows ``n/a``.  Δ rows follow the
paper's sign: a setting's error minus the reference's, so a positive Δ
means worse than the reference.  Detection tables (4-7) print COCO AP in %
with one decimal, as the paper does, and the paper's own rows beneath.
"""

MISSING = "n/a"


def fmt_error(value):
    return MISSING if value is None else f"{value:.2f}"


def fmt_delta(value):
    return MISSING if value is None else f"{value:+.2f}"


def markdown_table(header, rows, lead=1):
    """A Markdown table from a header list and rows of cell strings; ``lead`` columns left."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * lead + ["---:"] * (len(header) - lead)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _error(summaries, key):
    return summaries[key].error if key in summaries else None


def _minus(value, reference):
    return None if value is None or reference is None else value - reference


def norms_table(summaries, settings):
    """Table 1 (and Figure 6's inset): val error per norm, Δ vs. BN if BN ran."""
    header = [""] + [s.column for s in settings]
    errors = [_error(summaries, s.key) for s in settings]
    rows = [["val error (%)"] + [fmt_error(e) for e in errors]]
    if "bn" in summaries:
        reference = summaries["bn"].error
        rows.append(
            ["Δ (vs. BN)"]
            + [
                "-" if s.key == "bn" else fmt_delta(_minus(e, reference))
                for s, e in zip(settings, errors)
            ]
        )
    return markdown_table(header, rows)


def batch_size_table(summaries, settings):
    """Table 2: BN and GN rows per batch size, and the GN − BN row."""
    bn_settings = [s for s in settings if s.panel == "bn"]
    gn_keys = {s.column: s.key for s in settings if s.panel == "gn"}
    bn = [_error(summaries, s.key) for s in bn_settings]
    gn = [_error(summaries, gn_keys.get(s.column)) for s in bn_settings]
    rows = [
        ["BN"] + [fmt_error(e) for e in bn],
        ["GN"] + [fmt_error(e) for e in gn],
        ["Δ (GN − BN)"] + [fmt_delta(_minus(g, b)) for g, b in zip(gn, bn)],
    ]
    return markdown_table(["batch size (per replica)"] + [s.column for s in bn_settings], rows)


def _panel(summaries, settings, title):
    errors = [_error(summaries, s.key) for s in settings]
    known = [e for e in errors if e is not None]
    best = min(known) if known else None
    header = [title] + [s.column for s in settings]
    rows = [
        ["val error (%)"] + [fmt_error(e) for e in errors],
        ["Δ (vs. best)"]
        + ["-" if e is not None and e == best else fmt_delta(_minus(e, best)) for e in errors],
    ]
    return markdown_table(header, rows)


def groups_tables(summaries, settings):
    """Table 3: the fixed-G panel and the fixed channels-per-group panel."""
    by_count = [s for s in settings if s.panel == "groups"]
    by_size = [s for s in settings if s.panel == "group_size"]
    parts = []
    if by_count:
        parts.append(_panel(summaries, by_count, "# groups (G)"))
    if by_size:
        parts.append(_panel(summaries, by_size, "# channels per group"))
    return "\n\n".join(parts)


def video_table(accuracies, settings):
    """Table 8: BN and GN rows, one column per clip setting, "top-1 / top-5" (%).

    ``accuracies`` maps a setting key to its ``(top-1, top-5)`` test
    accuracy; a setting that did not run shows ``n/a``.
    """
    columns = [s.column for s in settings if s.panel == "bn"]
    rows = []
    for norm in ("bn", "gn"):
        by_column = {s.column: s.key for s in settings if s.panel == norm}
        cells = []
        for column in columns:
            scores = accuracies.get(by_column.get(column))
            cells.append(MISSING if scores is None else f"{scores[0]:.1f} / {scores[1]:.1f}")
        rows.append([norm.upper()] + cells)
    return markdown_table(["top-1 / top-5 accuracy (%)"] + columns, rows)


# The leading header cells of each detection table (a row's ``Setting.column``
# holds its cells, separated by " | ").
DETECTION_LEAD = {
    "detection_heads": ("backbone", "box head"),
    "detection_backbones": ("architecture", "backbone"),
    "detection_scratch": ("from scratch",),
}
# The paper's ResNet-50 COCO val2017 numbers (Tables 4-7), as printed cells.
# † from §4.2's text, not a table: the 2fc head's 38.5 box AP; LN in C4 "1.9
# box AP worse than GN"; BN in the box head "~9 AP worse" (than the GN head).
# Table 7's sync-BN row (from [34]) has no mask AP.
_NA = ("–",) * 5
PAPER_AP = {
    "bnstar_2fc": ("38.5†", *_NA),
    "bnstar_4conv1fc": ("38.6", "59.5", "41.9", "34.2", "56.2", "36.1"),
    "bnstar_gn_head": ("39.5", "60.0", "43.2", "34.4", "56.4", "36.3"),
    "gn_everywhere": ("40.0", "61.0", "43.3", "34.8", "57.3", "36.3"),
    "bnstar_bn_head": ("≈30.5†", *_NA),
    "c4_bnstar": ("37.7", "57.9", "40.9", "32.8", "54.3", "34.7"),
    "c4_gn": ("38.8", "59.2", "42.2", "33.6", "55.9", "35.4"),
    "c4_ln": ("36.9†", *_NA),
    "fpn_bnstar": ("38.6", "59.8", "42.1", "34.5", "56.4", "36.3"),
    "fpn_gn": ("40.3", "61.0", "44.0", "35.7", "57.9", "37.7"),
    "scratch_sync_bn": ("34.5", "55.2", "37.7", "–", "–", "–"),
    "scratch_gn": ("39.5", "59.8", "43.6", "35.2", "56.9", "37.6"),
}
PAPER_NOTE = (
    "The paper's numbers (ResNet-50, COCO train2017 → val2017) for reference; "
    "† from §4.2's text, not its tables."
)


def detection_tables(study_name, summaries, settings):
    """Tables 4-7 laid out: our rows with the COCO columns (%), then the paper's rows."""
    from gn_keras.train.studies.summary import COCO_COLUMNS

    header = list(DETECTION_LEAD[study_name]) + [name for name, _ in COCO_COLUMNS]
    ours, paper = [], []
    for setting in settings:
        cells = setting.column.split(" | ")
        result = summaries.get(setting.key)
        values = [MISSING if result is None else f"{result.ap[key]:.1f}" for _, key in COCO_COLUMNS]
        ours.append(cells + values)
        paper.append(cells + list(PAPER_AP.get(setting.key, (MISSING,) * len(COCO_COLUMNS))))
    lead = len(DETECTION_LEAD[study_name])
    return markdown_table(header, ours, lead), markdown_table(header, paper, lead)
