"""What the training benchmarks report: ratios of medians, Markdown tables and the JSON file.

Shared by the scripts under ``bench/`` that time whole training steps, so
their ratios are computed, printed and stored the same way:

* :func:`start` takes the UTC start time and the machine (``machine.py``,
  with its load at the start), :func:`header` words them for the first line;
* :func:`ratio` divides one contender's medians by another's, clock by
  clock; :func:`ratios` does it for the same pairs in every group of
  contenders named ``"<group>/<contender>"``; :func:`both_ratios` gives,
  for interleaved rounds, the ratio of medians beside the median of the
  per-round ratios (:func:`paired_ratio`);
* :func:`table` / :func:`print_table` print rows (a dict of dicts) as a
  Markdown table of chosen columns;
* :func:`write_result` writes one JSON file with the date, the machine
  (plus its load at the end), the settings, the rows and the ratios.
"""

import datetime
import os
import statistics

from machine import machine_info  # bench/ is the scripts' directory

from gn_keras.train import outputs

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Step-time rows (train_throughput.summarize): the clock of a ratio -> its median.
STEP_CLOCKS = {"wall": "median_step_s", "cpu": "median_cpu_step_s"}
STEP_TIME_COLUMNS = (
    ("median step s", "median_step_s", ".3f"),
    ("CPU s/step", "median_cpu_step_s", ".3f"),
)
RATIO_COLUMNS = (("wall", "wall", ".2f"), ("CPU", "cpu", ".2f"))


def start():
    """``(started, machine)``: the UTC time now and the machine with its load now."""
    return datetime.datetime.now(datetime.UTC), machine_info()


def header(started, machine):
    """``2026-11-29 20:26 UTC on <cpu> (2 CPUs, load [..])`` for a report's first line."""
    return (
        f"{started:%Y-%m-%d %H:%M} UTC on {machine['cpu']} ({machine['logical_cpus']} CPUs, "
        f"load {machine.get('load_average_at_start')})"
    )


def default_path(name):
    """``bench/results/<name>``, wherever the script is run from."""
    return os.path.join(RESULTS_DIR, name)


def ratio(rows, numerator, denominator, clocks=STEP_CLOCKS):
    """``{clock: rows[numerator][key] / rows[denominator][key]}`` for each ``clocks`` item.

    None when either contender was not measured.
    """
    top, bottom = rows.get(numerator), rows.get(denominator)
    if not (top and bottom):
        return None
    return {clock: top[key] / bottom[key] for clock, key in clocks.items()}


def ratios(rows, groups, pairs, clocks=STEP_CLOCKS):
    """``{"<group>: <num>/<den>": ratio}`` of rows named ``"<group>/<contender>"``.

    Pairs whose contenders were not both measured are left out.
    """
    found = {}
    for group in groups:
        for numerator, denominator in pairs:
            value = ratio(rows, f"{group}/{numerator}", f"{group}/{denominator}", clocks)
            if value is not None:
                found[f"{group}: {numerator}/{denominator}"] = value
    return found


def paired_ratio(times, numerator, denominator):
    """Per clock, the median over rounds of numerator's step / denominator's step."""
    return {
        clock: statistics.median(
            top / bottom for top, bottom in zip(times[numerator][clock], times[denominator][clock])
        )
        for clock in ("wall", "cpu")
    }


def both_ratios(rows, times, pairs):
    """``{"<label> (ratio of medians)": …, "<label> (median of per-round ratios)": …}``.

    ``pairs`` holds ``(label, numerator, denominator)``; ``times`` the
    per-round steps of interleaved rounds, so each round is a paired
    comparison that a burst of load slows on both sides.
    """
    found = {}
    for label, numerator, denominator in pairs:
        found[f"{label} (ratio of medians)"] = ratio(rows, numerator, denominator)
        found[f"{label} (median of per-round ratios)"] = paired_ratio(times, numerator, denominator)
    return found


def table(rows, columns, first="contender"):
    """A Markdown table: one line per row, the row's name under ``first``.

    ``columns`` are ``(header, value, format_spec)``; ``value`` is the row's
    key or a function of the row.
    """
    lines = [
        "| " + " | ".join([first, *(header for header, _, _ in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name, row in rows.items():
        cells = [
            format(value(row) if callable(value) else row[value], spec)
            for _, value, spec in columns
        ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def print_table(rows, columns, first="contender"):
    print(table(rows, columns, first))


def print_step_report(rows, found, first, rate_header, rate_format, ratio_format=".2f"):
    """The step-time table (with a rate column) and the step-time ratio table."""
    columns = (
        *STEP_TIME_COLUMNS,
        (rate_header, "images_per_sec", rate_format),
        ("first step s", "first_step_s", ".1f"),
    )
    print_table(rows, columns, first)
    print()
    ratio_columns = tuple((header, key, ratio_format) for header, key, _ in RATIO_COLUMNS)
    print_table(found, ratio_columns, "step-time ratio")


def write_result(path, settings, rows, ratios, *, started, machine, **extra):
    """Write the report to ``path`` (folders made, atomically) and say where.

    ``extra`` adds other top-level entries (e.g. every round's times).
    """
    result = {
        "date": started.isoformat(),
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "settings": settings,
        **extra,
        "results": rows,
        "ratios": ratios,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    outputs.write_json_atomically(path, result)
    print(f"wrote {path}")
