"""Matplotlib figures laid out like the paper's Figures 1, 4, 5 and 6 and Table 3.

The detection studies (Tables 4-7, which have no figure in the paper) draw
their COCO AP after each epoch against the training steps.

Every function draws from ``summary.SettingResult`` objects (and, for
Figure 6, the recorded percentiles), saves one PNG and closes it.  Each
figure carries its caption (dataset, model, epochs, seeds) at the bottom,
so a PNG taken out of its report still says what it shows.  Epochs on the
x axes count completed epochs (1 after the first epoch).
"""

import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

PANEL_SIZE = (5.0, 3.8)
DPI = 100
CAPTION_WIDTH = 110


def _figure(panels, width_ratios=None):
    widths = width_ratios or [1] * panels
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(PANEL_SIZE[0] * sum(widths), PANEL_SIZE[1]),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    return fig, list(axes[0])


def ordinal(number):
    """1st, 2nd, 3rd, 20th, 99th, … for the percentile legends."""
    if number % 100 in (11, 12, 13):
        return f"{number}th"
    return f"{number}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(number % 10, 'th') }"


def _epoch_axis(ax, title):
    ax.set_title(title)
    ax.set_xlabel("epochs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _save(fig, path, caption):
    lines = textwrap.wrap(caption, CAPTION_WIDTH * len(fig.axes) // 2 or CAPTION_WIDTH)
    fig.tight_layout(rect=(0, 0.04 * (len(lines) + 1), 1, 1))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", ha="left")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _epochs(curve):
    return list(range(1, len(curve) + 1))


def _error_axis(ax, title, xlabel=None):
    _epoch_axis(ax, title)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel("error (%)")


def _zoom_past_first_epochs(ax, curves):
    """Like the paper's plots, leave the first quarter's high errors off the top.

    On easy data the first epochs' errors dwarf the differences that matter
    at the end; the y range covers the last three quarters of every curve.
    """
    tails = [value for curve in curves for value in curve[len(curve) // 4 :]]
    if tails and max(tails) > 0:
        ax.set_ylim(0, min(100.0, 1.15 * max(tails)))


def error_curves_figure(summaries, path, caption):
    """Figure 4: train (left) and val (right) error vs. epochs, one line per setting."""
    fig, (train_ax, val_ax) = _figure(2)
    for result in summaries:
        train_ax.plot(_epochs(result.train_curve), result.train_curve, label=result.label)
        val_ax.plot(_epochs(result.val_curve), result.val_curve, label=result.label)
    _error_axis(train_ax, "train error")
    _error_axis(val_ax, "val error")
    _zoom_past_first_epochs(train_ax, [r.train_curve for r in summaries])
    _zoom_past_first_epochs(val_ax, [r.val_curve for r in summaries])
    val_ax.legend()
    return _save(fig, path, caption)


def per_panel_curves_figure(panels, path, caption):
    """Figure 5: one panel per ``(title, summaries)``, val error vs. epochs."""
    fig, axes = _figure(len(panels))
    for ax, (title, summaries) in zip(axes, panels):
        for result in summaries:
            ax.plot(_epochs(result.val_curve), result.val_curve, label=result.label)
        _error_axis(ax, title)
        _zoom_past_first_epochs(ax, [r.val_curve for r in summaries])
        ax.legend(fontsize=8)
    return _save(fig, path, caption)


def error_vs_setting_figure(panels, path, caption):
    """Figure 1 and Table 3 drawn: error per setting, settings on a categorical x axis.

    ``panels`` is a list of ``(title, xlabel, columns, lines)`` where
    ``lines`` maps a legend label to one error per column (``None`` where
    the setting did not run).
    """
    fig, axes = _figure(len(panels))
    for ax, (title, xlabel, columns, lines) in zip(axes, panels):
        positions = list(range(len(columns)))
        for label, errors in lines.items():
            ran = [(x, e) for x, e in zip(positions, errors) if e is not None]
            ax.plot([x for x, _ in ran], [e for _, e in ran], marker="o", label=label)
        _error_axis(ax, title, xlabel)
        ran_any = [any(errors[i] is not None for errors in lines.values()) for i in positions]
        ticks = [c if ran else f"{c}\n(n/a)" for c, ran in zip(columns, ran_any)]
        ax.set_xticks(positions, ticks)  # after _error_axis, whose locator it replaces
        ax.legend()
    return _save(fig, path, caption)


def percentile_figure(panels, error_rows, path, caption):
    """Figure 6: percentiles of the response vs. epochs per model, and an error inset.

    ``panels`` is a list of ``(title, percentiles, records)`` with records
    as stored by ``feature_stats.FeaturePercentiles``; ``error_rows`` is a
    list of ``(label, error text)`` for the table beside the panels.
    """
    fig, axes = _figure(len(panels) + 1, width_ratios=[1] * len(panels) + [0.5])
    for ax, (title, percentiles, records) in zip(axes, panels):
        epochs = [record["epoch"] + 1 for record in records]
        for index, percentile in enumerate(percentiles):
            ax.plot(
                epochs,
                [record["values"][index] for record in records],
                label=f"{ordinal(percentile)} percentile",
            )
        _epoch_axis(ax, title)
        ax.legend(fontsize=8)
    inset = axes[-1]
    inset.axis("off")
    table = inset.table(
        cellText=[[label, text] for label, text in error_rows],
        colLabels=["", "val error (%)"],
        loc="center",
    )
    table.scale(1.0, 1.6)
    return _save(fig, path, caption)


def ap_curves_figure(summaries, path, caption):
    """Box AP (left) and mask AP (right) against training steps, one line per table row."""
    fig, (box_ax, mask_ax) = _figure(2)
    for ax, title, curve in ((box_ax, "box AP", "box_curve"), (mask_ax, "mask AP", "mask_curve")):
        for result in summaries:
            ax.plot(result.steps, getattr(result, curve), marker="o", label=result.label)
        ax.set_title(f"{title} (COCO AP, val)")
        ax.set_xlabel("training steps")
        ax.set_ylabel("AP (%)")
        ax.grid(alpha=0.3)
    mask_ax.legend(fontsize=8)
    return _save(fig, path, caption)
