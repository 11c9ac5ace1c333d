"""Markdown tables laid out like the paper's Tables 1-3 and 8 and Figure 6's inset.

Each function takes ``{setting key: summary.SettingResult}`` and returns
Markdown.  Errors are printed with two decimals (digits-sized errors are
small); a setting that could not run shows ``n/a``.  Δ rows follow the
paper's sign: a setting's error minus the reference's, so a positive Δ
means worse than the reference.
"""

MISSING = "n/a"


def fmt_error(value):
    return MISSING if value is None else f"{value:.2f}"


def fmt_delta(value):
    return MISSING if value is None else f"{value:+.2f}"


def markdown_table(header, rows):
    """A Markdown table from a header list and rows of cell strings."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
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
