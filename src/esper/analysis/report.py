"""`esper report`: one recorded run (or several side by side) as a self-contained page.

The page is one HTML file with the figure inlined as SVG (text kept as text, so it can be
searched and copied) and the ratio-explosion table; `--png` writes the figure alone, with
the explosions listed under it. Each run gets a column and every head the same colour in
every panel and every column; the heads are the runs' own (`Run.head_names`, any number,
any names). Panels, top to bottom:

1. per-head ratio max per PPO update, log scale, on the dashboard's bands from the run's
   own clip range (`Run.bands`; at eps 0.2 healthy [0.8, 1.2], warning [0.5, 1.5],
   critical beyond), non-finite updates marked;
2. the joint ratio max beside the product of the relevant heads' maxima, with the run's
   joint bands and the ratio explosions;
3-5. per-head entropy, approximate KL and clip fraction;
6-7. episode return and final host accuracy per episode.

A head with no relevant sample in an update is left out of that update (a gap), never
drawn at the neutral 1.0. Drawing uses matplotlib's object API (`Figure`, no pyplot and
no global backend), so rendering is Agg for PNG and thread-safe. Requires the `report`
extra (matplotlib).
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from esper.analysis import AnalysisError
from esper.analysis.runs import Run, measured
from esper.telemetry.heads import flat_key

Format = Literal["html", "png"]

#: Figure geometry in inches at DPI: a header (head legend, column titles), then per run a
#: column of panel rows. Each row keeps room above its axes for the title and below for
#: tick labels and the x label. Fixed margins instead of a layout engine: the figure's
#: size is fixed anyway, and skipping the layout pass makes rendering a third faster.
DPI = 100
COLUMN_WIDTH = 7.0
ROW_HEIGHT = 2.3
HEADER_HEIGHT = 1.0
TEXT_ROW_HEIGHT = 1.8
MARGIN_LEFT = 0.85
MARGIN_RIGHT = 0.25
GAP_ABOVE = 0.3
GAP_BELOW = 0.55
#: Points per series up to which each point gets a marker of MARKER_SIZE.
MARKER_LIMIT = 200
MARKER_SIZE = 2.5
#: Explosions listed under each column of a PNG (the HTML table lists them all).
MAX_LISTED_EXPLOSIONS = 6
#: The default log-scale span of ratio panels, widened to fit the data.
RATIO_AXIS_SPAN = (0.4, 2.5)
#: Colours of the health bands (translucent fills) and each head's line colour.
BAND_COLOURS = {"healthy": "#2ca02c", "warning": "#ffbf00", "critical": "#d62728"}
BAND_ALPHA = 0.12
#: Past ten heads the default colour cycle repeats: then the 20 hues and shades of tab20
#: (hues first), then tab20b, which together tell up to 40 heads apart.
_MANY_COLOURS = (
    *(f"tab20:{i}" for i in (*range(0, 20, 2), *range(1, 20, 2))),
    *(f"tab20b:{i}" for i in range(20)),
)


def head_colours(heads: Sequence[str]) -> dict[str, str]:
    """A distinct matplotlib colour per head, by position (C0..C9 up to ten heads)."""
    if len(heads) <= 10:
        return {head: f"C{i}" for i, head in enumerate(heads)}
    colours = {}
    for i, head in enumerate(heads):
        cmap, index = _MANY_COLOURS[i % len(_MANY_COLOURS)].split(":")
        colours[head] = to_hex(matplotlib.colormaps[cmap](int(index)))
    return colours


def figure_heads(runs: Sequence[Run]) -> list[str]:
    """Every head of the runs, each once: the first run's in its order, then the others'."""
    return list(dict.fromkeys(h for run in runs for h in run.head_names))


def legend_columns(n_heads: int, n_runs: int) -> int:
    """Columns of the head legend: one row across several runs, else at most three rows."""
    if n_runs > 1 and n_heads <= 8 * n_runs:
        return max(1, n_heads)
    return max(1, min(n_heads, max(4, math.ceil(n_heads / 3))))


@dataclass(frozen=True)
class Panel:
    """One row of the figure: its title, y label and whether it is over updates."""

    key: str
    title: str
    ylabel: str
    over_updates: bool = True


#: The accuracy panel of a run none of whose episodes has a host (not esper's task).
NO_ACCURACY = "no host accuracy in this run (its episodes have no host)"

PANELS: tuple[Panel, ...] = (
    Panel("ratio_max", "Per-head ratio max (relevant samples)", "ratio (log)"),
    Panel("joint", "Joint ratio max vs product of per-head maxima", "ratio (log)"),
    Panel("entropy", "Per-head entropy (normalised, 1 = uniform)", "entropy"),
    Panel("approx_kl", "Per-head approximate KL", "KL"),
    Panel("clip_fraction", "Per-head clip fraction", "fraction"),
    Panel("return", "Episode return", "return", over_updates=False),
    Panel("accuracy", "Host accuracy at episode end", "accuracy", over_updates=False),
)


# --------------------------------------------------------------------------- pure helpers


def figure_size(n_runs: int, explosion_text: bool = False) -> tuple[float, float]:
    """(width, height) in inches of the figure for `n_runs` columns."""
    rows = len(PANELS) * ROW_HEIGHT + HEADER_HEIGHT
    return COLUMN_WIDTH * n_runs, rows + (TEXT_ROW_HEIGHT if explosion_text else 0.0)


Rect = tuple[float, float, float, float]


def column_rects(column: int, n_runs: int, explosion_text: bool = False) -> list[Rect]:
    """Axes rectangles (left, bottom, width, height as figure fractions) of one column."""
    width, height = figure_size(n_runs, explosion_text)
    left = (column * COLUMN_WIDTH + MARGIN_LEFT) / width
    axes_width = (COLUMN_WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / width
    rows = [ROW_HEIGHT] * len(PANELS) + ([TEXT_ROW_HEIGHT] if explosion_text else [])
    rects = []
    top = HEADER_HEIGHT
    for row in rows:
        axes_height = row - GAP_ABOVE - GAP_BELOW
        bottom = height - (top + GAP_ABOVE + axes_height)
        rects.append((left, bottom / height, axes_width, axes_height / height))
        top += row
    return rects


def png_size(n_runs: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG report of `n_runs` runs."""
    width, height = figure_size(n_runs, explosion_text=True)
    return round(width * DPI), round(height * DPI)


def log_limits(
    values: Iterable[float], span: tuple[float, float] = RATIO_AXIS_SPAN
) -> tuple[float, float]:
    """Log-axis limits covering `span` and every finite positive value, with 20% margin."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    lo = min([span[0], *(v / 1.2 for v in finite)])
    hi = max([span[1], *(v * 1.2 for v in finite)])
    return lo, hi


def band_spans(
    healthy: tuple[float, float], warning: tuple[float, float], limits: tuple[float, float]
) -> list[tuple[float, float, str]]:
    """(low, high, band) stripes tiling `limits`: critical, warning, healthy, warning, critical."""
    lo, hi = limits
    edges = [lo, warning[0], healthy[0], healthy[1], warning[1], hi]
    bands = ["critical", "warning", "healthy", "warning", "critical"]
    return [
        (max(a, lo), min(b, hi), band)
        for a, b, band in zip(edges, edges[1:], bands, strict=False)
        if min(b, hi) > max(a, lo)
    ]


def marker_size(points: int) -> float:
    """Markers show single points (a series cut by gaps) while there are few; past
    MARKER_LIMIT they only cost time and file size (one SVG element each)."""
    return MARKER_SIZE if points <= MARKER_LIMIT else 0.0


def log_ticks(limits: tuple[float, float], marks: Iterable[float]) -> list[float]:
    """Ticks of a log ratio axis: the band edges and 1, plus every power of ten, in range."""
    lo, hi = limits
    decades = (10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1))
    return sorted({v for v in (1.0, *marks, *decades) if lo <= v <= hi})


def tick_label(value: float, _pos: int | None = None) -> str:
    """A ratio tick as a plain number (0.8, 1.2, 1e+03), never mathtext."""
    return f"{value:.3g}"


def nonfinite_updates(run: Run) -> list[int]:
    """Update indices where some head's ratio was NaN/inf or a minibatch was non-finite."""
    u = run.updates
    flagged = [False] * len(u)
    for head in run.head_names:
        columns = (u.column(flat_key(head, "ratio_max")), u.column(flat_key(head, "ratio_min")))
        counts = u.column(flat_key(head, "nonfinite"))
        for i, (hi, lo, n) in enumerate(zip(*columns, counts, strict=True)):
            if n is not None:  # None: the update did not carry this head
                flagged[i] |= n > 0 or not (math.isfinite(hi) and math.isfinite(lo))
    return [idx for idx, bad in zip(u.column("update_index"), flagged, strict=True) if bad]


@dataclass(frozen=True)
class BadUpdates:
    """Where a run's failed updates fall on each kind of axis (see `bad_updates`)."""

    updates: list[int]  # update indices: skipped, or completed with non-finite values
    skipped: list[int]  # update indices of the skipped ones alone
    episodes: list[int]  # episode numbers of the batches those updates trained on


def bad_updates(run: Run) -> BadUpdates:
    """Skipped and non-finite updates, on the update axis and on the episode axis.

    A skipped update has no row in `ppo_updates`; its PPO_UPDATE_SKIPPED event gives its
    batch. Every batch takes one update index, so index - batch is the same for all
    updates of a run (0 unless its first updates predate its log): read it off a
    completed update.
    """
    u = run.updates
    offsets = [i - b for i, b in zip(u.column("update_index"), u.column("batch"), strict=True)]
    offset = next((o for o in offsets if o is not None), 0) if offsets else 0
    events = zip(run.events.column("event_type"), run.events.column("batch"), strict=True)
    skipped_batches = {b for kind, b in events if kind == "PPO_UPDATE_SKIPPED" and b is not None}
    nonfinite = set(nonfinite_updates(run))
    bad_batches = skipped_batches | {
        b
        for i, b in zip(u.column("update_index"), u.column("batch"), strict=True)
        if i in nonfinite
    }
    skipped = sorted(b + offset for b in skipped_batches)
    episodes = [
        x
        for x, b in zip(episode_axis(run), run.episodes.column("batch"), strict=True)
        if b in bad_batches
    ]
    return BadUpdates(sorted(nonfinite | set(skipped)), skipped, episodes)


def _mark_bad_updates(ax: Axes, panel: Panel, run: Run, column: int) -> None:
    """Shade every skipped or non-finite update on this panel's x axis, and keep the axis
    spanning every update even where all drawn values are NaN (it would collapse)."""
    bad = bad_updates(run)
    if panel.over_updates:
        xs, everything = bad.updates, [*run.updates.column("update_index"), *bad.skipped]
    else:
        xs, everything = bad.episodes, episode_axis(run)
    if everything:
        lo, hi = ax.get_xlim()
        if min(everything) < lo or max(everything) > hi or hi - lo < 1:
            ax.set_xlim(min(everything) - 0.5, max(everything) + 0.5)
    if xs:
        lines = ax.vlines(
            xs,
            0,
            1,
            transform=ax.get_xaxis_transform(),
            colors=BAND_COLOURS["critical"],
            alpha=0.3,
            lw=2,
            zorder=0.5,
        )
        lines.set_gid(f"run{column}-{panel.key}-bad-updates")


def episode_axis(run: Run) -> list[int]:
    """Each episode's number (its position in the log where the event carries none)."""
    return [e if e is not None else i for i, e in enumerate(run.episodes.column("episode"))]


# --------------------------------------------------------------------------- drawing


def _draw_bands(
    ax: Axes,
    healthy: tuple[float, float],
    warning: tuple[float, float],
    limits: tuple[float, float],
) -> None:
    for lo, hi, band in band_spans(healthy, warning, limits):
        ax.axhspan(lo, hi, color=BAND_COLOURS[band], alpha=BAND_ALPHA, lw=0, zorder=0)
    ax.set_yscale("log")
    ax.set_ylim(*limits)
    ax.yaxis.set_major_locator(FixedLocator(log_ticks(limits, (*healthy, *warning))))
    ax.yaxis.set_major_formatter(FuncFormatter(tick_label))
    ax.yaxis.set_minor_locator(NullLocator())


def _per_head(ax: Axes, run: Run, column: int, stat: str, colours: dict[str, str]) -> None:
    x = run.updates.column("update_index")
    for head in run.head_names:
        (line,) = ax.plot(
            x,
            measured(run.updates, head, stat),
            marker="o",
            ms=marker_size(len(x)),
            lw=1.2,
            color=colours[head],
            label=head,
        )
        line.set_gid(f"run{column}-{stat}-{head}")


def _ratio_panel(ax: Axes, run: Run, column: int, limits: _Limits) -> None:
    _draw_bands(ax, run.bands.healthy, run.bands.warning, limits.ratio)
    _per_head(ax, run, column, "ratio_max", limits.colours)
    handles: list[Any] = [Patch(color=BAND_COLOURS[b], alpha=0.4, label=b) for b in BAND_COLOURS]
    bad = nonfinite_updates(run)
    if bad:
        marks = ax.scatter(
            bad,
            [0.95] * len(bad),
            marker="x",
            color=BAND_COLOURS["critical"],
            transform=ax.get_xaxis_transform(),
            zorder=5,
            label="non-finite",
        )
        marks.set_gid(f"run{column}-nonfinite")
        handles.append(marks)
    ax.legend(handles=handles, loc="lower right", fontsize=7, ncols=len(handles))


def _joint_panel(ax: Axes, run: Run, column: int, limits: tuple[float, float]) -> None:
    healthy, warning = run.bands.joint_healthy, run.bands.joint_warning
    _draw_bands(ax, (1.0 / healthy, healthy), (1.0 / warning, warning), limits)
    x = run.updates.column("update_index")
    ms = marker_size(len(x))
    (line,) = ax.plot(x, run.updates.column("joint_ratio_max"), "k-o", ms=ms, label="joint max")
    line.set_gid(f"run{column}-joint_ratio_max")
    (line,) = ax.plot(
        x,
        run.updates.column("ratio_max_product"),
        "--s",
        ms=ms,
        color="0.45",
        label="product of head maxima",
    )
    line.set_gid(f"run{column}-ratio_max_product")
    if len(run.explosions):
        stars = ax.scatter(
            run.explosions.column("update_index"),
            run.explosions.column("joint_ratio_max"),
            marker="*",
            s=80,
            color=BAND_COLOURS["critical"],
            zorder=5,
            label="ratio explosion",
        )
        stars.set_gid(f"run{column}-explosions")
    ax.legend(loc="lower right", fontsize=7)


def _episode_panel(ax: Axes, run: Run, column: int, field: str, missing: str) -> None:
    """`field` per episode; `missing` is said instead when no episode holds a value.

    An episode outside esper's task has no host accuracy: a gap, not a point. When every
    episode lacks it (an SB3 or hand-written run), there is nothing to scale a y axis to,
    so the panel says so rather than draw an empty axis around a made-up range.
    """
    x = episode_axis(run)
    y = [math.nan if v is None else v for v in run.episodes.column(field)]
    if x and all(math.isnan(v) for v in y):
        note = ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", va="center")
        note.set_gid(f"run{column}-{field}-none")
        ax.set_yticks([])
        ax.set_xlim(min(x), max(x) if max(x) > min(x) else min(x) + 1)
        return
    (line,) = ax.plot(x, y, "-o", ms=marker_size(len(x)), color="C9")
    line.set_gid(f"run{column}-{field}")


def _explosion_text(ax: Axes, run: Run) -> None:
    ax.axis("off")
    summaries = run.explosions.column("summary")
    lines = summaries[:MAX_LISTED_EXPLOSIONS]
    if len(summaries) > len(lines):
        lines.append(f"... and {len(summaries) - len(lines)} more")
    text = "\n".join(lines) if lines else "no ratio explosions"
    ax.set_title("Ratio explosions", loc="left", fontsize=9)
    ax.text(0.0, 1.0, text, va="top", ha="left", fontsize=7, family="monospace")


def _column_title(run: Run) -> str:
    task = f" — {run.task}" if run.task else ""
    return f"{run.label}{task} ({run.status})"


@dataclass(frozen=True)
class _Limits:
    """Y limits (and head colours) shared by a row across runs, so columns compare at a glance."""

    ratio: tuple[float, float]
    joint: tuple[float, float]
    colours: dict[str, str]


def _decorate(ax: Axes, panel: Panel) -> None:
    ax.set_title(panel.title, loc="left", fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.set_xlabel("PPO update" if panel.over_updates else "episode", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_panel(ax: Axes, panel: Panel, run: Run, column: int, limits: _Limits) -> None:
    match panel.key:
        case "ratio_max":
            _ratio_panel(ax, run, column, limits)
        case "joint":
            _joint_panel(ax, run, column, limits.joint)
        case "return":
            _episode_panel(ax, run, column, "episode_return", "no finite episode return")
        case "accuracy":
            _episode_panel(ax, run, column, "final_accuracy", NO_ACCURACY)
        case stat:
            _per_head(ax, run, column, stat, limits.colours)
    if not len(run.updates if panel.over_updates else run.episodes):
        ax.set_xlim(0, 1)  # integer ticks on an empty axis, not -0.045 ... 0.045
    _mark_bad_updates(ax, panel, run, column)


def build_figure(runs: Sequence[Run], *, explosion_text: bool = False) -> Figure:
    """The report figure: a column per run, a row per panel (plus explosions if asked)."""
    if not runs:
        raise ValueError("build_figure needs at least one run")
    n_runs = len(runs)
    width, height = figure_size(n_runs, explosion_text)
    fig = Figure(figsize=(width, height), dpi=DPI)
    heads = figure_heads(runs)
    joint_warning = max(r.bands.joint_warning for r in runs)  # every column's bands in view
    limits = _Limits(
        ratio=log_limits(
            v for r in runs for h in r.head_names for v in measured(r.updates, h, "ratio_max")
        ),
        joint=log_limits(
            (
                v
                for r in runs
                for c in ("joint_ratio_max", "ratio_max_product")
                for v in r.updates.column(c)
            ),
            span=(1.0 / (2 * joint_warning), 2 * joint_warning),
        ),
        colours=head_colours(heads),
    )
    title_y = 1.0 - (HEADER_HEIGHT - 0.2) / height
    for col, run in enumerate(runs):
        fig.text(
            (col + 0.5) / n_runs,
            title_y,
            _column_title(run),
            ha="center",
            va="center",
            fontsize=11,
            weight="bold",
        )
        axes = [fig.add_axes(rect) for rect in column_rects(col, n_runs, explosion_text)]
        for ax, panel in zip(axes, PANELS, strict=False):
            _decorate(ax, panel)
            _draw_panel(ax, panel, run, col, limits)
        if not len(run.updates):
            skipped = len(bad_updates(run).skipped)
            note = (
                f"no completed PPO updates ({skipped} skipped)" if skipped else "no PPO updates yet"
            )
            axes[0].text(0.5, 0.5, note, transform=axes[0].transAxes, ha="center")
        if explosion_text:
            _explosion_text(axes[-1], run)
    handles = [Patch(color=limits.colours[h], label=h) for h in heads]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
        ncols=legend_columns(len(heads), n_runs),
        fontsize=8 if len(heads) <= 12 else 7,
    )
    return fig


# --------------------------------------------------------------------------- output


def figure_bytes(fig: Figure, fmt: Literal["svg", "png"]) -> bytes:
    """The figure encoded as SVG (text as <text>, stable ids) or PNG at DPI."""
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "esper"}):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI)
    return buffer.getvalue()


def inline_svg(svg: bytes) -> str:
    """An SVG document as an element to inline in HTML (its XML prolog and doctype cut)."""
    text = svg.decode("utf-8")
    return text[text.index("<svg") :]


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], css: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


RUN_HEADERS = (
    "Run",
    "Run id",
    "Task",
    "Status",
    "PPO updates",
    "Episodes",
    "Ratio explosions",
    "Damaged lines skipped",
)
EXPLOSION_HEADERS = (
    "Run",
    "Update",
    "Batch",
    "Joint ratio max",
    "Driver",
    "Every head inside clip",
    "Summary (heads that drove it)",
)


def _runs_table(runs: Sequence[Run]) -> str:
    rows = [
        (
            r.label,
            r.run_id,
            r.task or "—",
            r.status,
            len(r.updates),
            len(r.episodes),
            len(r.explosions),
            r.lines_skipped,
        )
        for r in runs
    ]
    return _table(RUN_HEADERS, rows, "runs")


def _explosions_table(runs: Sequence[Run]) -> str:
    rows = [
        (
            run.label,
            update,
            "—" if batch is None else batch,
            f"{joint:.3f}",
            driver or "—",  # None: no head moved
            "yes" if hidden else "no",
            summary,
        )
        for run in runs
        for update, batch, joint, driver, hidden, summary in zip(
            *(
                run.explosions.column(c)
                for c in (
                    "update_index",
                    "batch",
                    "joint_ratio_max",
                    "driver",
                    "hidden_by_heads",
                    "summary",
                )
            ),
            strict=True,
        )
    ]
    if not rows:
        return '<p class="none">No ratio explosions recorded.</p>'
    return _table(EXPLOSION_HEADERS, rows, "explosions")


EVAL_HEADERS = (
    "Run",
    "Policy",
    "Mean return",
    "Std",
    "Std error",
    "Episodes",
    "Host accuracy",
    "Minus the reference (paired)",
    "Greedy minus this (paired)",
)


def _spread(value: Any) -> str:
    """An eval.json number that may be null (a spread of one episode, the accuracy of an
    env without a host): undefined, shown as —."""
    return "—" if value is None else f"{float(value):.3f}"


def _paired_cell(entry: Mapping[str, Any], key: str) -> str:
    """One of eval.json's paired comparisons (`esper.rl.evaluate.paired_entries`) as the
    CLI's table shows it, naming the other row; empty where none was made (the row itself,
    or an eval.json from before they were recorded)."""
    paired = entry.get(key)
    if paired is None:
        return ""
    mean, se = float(paired["mean"]), paired["se"]
    cell = f"{mean:+.3f} ± {_spread(se)}"
    if se is not None and float(se) > 1e-12:
        cell += f" ({mean / float(se):.1f} SE)"
    return f"{cell} vs {paired['against']}" if key == "versus" else cell


def _eval_section(runs: Sequence[Run]) -> str:
    """`esper eval`'s table for each run whose directory holds an eval.json (else nothing).

    A damaged or foreign eval.json is said in one line, never fatal to the report.
    """
    rows, notes = [], []
    for run in runs:
        path = run.run_dir / "eval.json"
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            for p in doc["policies"]:
                rows.append(
                    (
                        run.label,
                        p["policy"],
                        f"{float(p['mean_return']):.3f}",
                        _spread(p["std_return"]),
                        _spread(p["stderr_return"]),
                        int(p["episodes"]),
                        _spread(p.get("host_accuracy")),  # null: an env without a host
                        _paired_cell(p, "versus"),
                        _paired_cell(p, "greedy_minus_this"),
                    )
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"{run.label}: eval.json unreadable ({type(exc).__name__})")
    if not rows and not notes:
        return ""
    body = _table(EVAL_HEADERS, rows, "eval") if rows else ""
    body += "".join(f'<p class="none">{html.escape(n)}</p>' for n in notes)
    return f"<h2>Evaluation on fixed seeds (esper eval)</h2>{body}"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 0; } figure svg { max-width: 100%; height: auto; }
"""


def render_html(runs: Sequence[Run], svg: bytes) -> str:
    """The self-contained report page: run table, inline figure, explosion table."""
    title = "esper report: " + ", ".join(r.label for r in runs)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_runs_table(runs)}"
        f"<figure>{inline_svg(svg)}</figure>"
        f"<h2>Ratio explosions</h2>{_explosions_table(runs)}{_eval_section(runs)}</body></html>\n"
    )


def write_report(runs: Sequence[Run], out: Path, fmt: Format) -> None:
    """Render `runs` to `out` as an HTML page or a PNG; AnalysisError if it can't be written."""
    fig = build_figure(runs, explosion_text=fmt == "png")
    data = (
        figure_bytes(fig, "png")
        if fmt == "png"
        else render_html(runs, figure_bytes(fig, "svg")).encode()
    )
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise AnalysisError(f"cannot write {out}: {exc.strerror or exc}") from None
