"""Pure formatting for the dashboard: health colours, bars, sparklines and numbers.

Everything here maps numbers to strings or rich `Text` with no widget state, so every
threshold can be tested with known answers and every panel colours a value the same way.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

from esper.telemetry.heads import Band, RatioBands

#: Rich styles of the three health bands and of "no data yet".
HEALTHY = "green"
WARNING = "yellow"
CRITICAL = "red"
NO_DATA = "dim"
#: What every panel prints where there is no value: never a default that looks healthy.
NO_VALUE = "—"

#: The rich style of each health band. The bands themselves are the run's (`RatioBands`,
#: from its clip range), declared once in the telemetry package beside the records.
BAND_STYLES: dict[Band, str] = {
    Band.HEALTHY: HEALTHY,
    Band.WARNING: WARNING,
    Band.CRITICAL: CRITICAL,
    Band.NO_DATA: NO_DATA,
}
#: A per-head ratio bar is full at a factor-of-2 shift either way (|ln r| = ln 2).
RATIO_BAR_FULL = 2.0

BAR_CELLS = 5
BAR_FULL_CELL = "█"
BAR_EMPTY_CELL = "░"
SPARK_LEVELS = "▁▂▃▄▅▆▇█"

#: Glyphs of a head's state row.
GLYPH_HEALTHY = "✓"
GLYPH_WARNING = "▲"
GLYPH_CRITICAL = "✖"
GLYPH_LATCHED = "☢"


def is_finite(v: float | None) -> bool:
    """A real, finite number (None, NaN and infinities are not)."""
    return v is not None and math.isfinite(v)


def ratio_color(v: float | None, bands: RatioBands) -> str:
    """Colour of one head's ratio in the run's bands: green inside the clip range, yellow in
    the warning band, red beyond (NaN and infinities too); None means no data and is dim.

    At eps 0.2: green in [0.8, 1.2], yellow in [0.5, 1.5].
    """
    return BAND_STYLES[bands.band(v)]


def joint_ratio_color(v: float | None, bands: RatioBands) -> str:
    """Colour of the joint ratio in the run's joint bands (x1.5 and x3 of 1 at eps 0.2).

    Per-head bands would be wrong here: clipping bounds each head, so a joint of 1.3 is
    what two healthy heads produce. See `RatioBands` for the reasoning.
    """
    return BAND_STYLES[bands.joint_band(v)]


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (Python's round() rounds halves to even)."""
    return math.floor(x + 0.5)


def log_deviation(v: float, full_at: float) -> float:
    """|ln v| as a fraction of |ln full_at|, clipped to [0, 1]; non-finite or <= 0 is 1.

    A ratio of 2 and a ratio of 0.5 are the same size of shift, so deviation is measured
    in log space and reads the same on both sides of 1.
    """
    if not math.isfinite(v) or v <= 0.0:
        return 1.0
    return min(1.0, abs(math.log(v)) / math.log(full_at))


def bar(fill: int, cells: int = BAR_CELLS) -> str:
    """A bar of `cells` cells, the first `fill` of them full."""
    fill = max(0, min(cells, fill))
    return BAR_FULL_CELL * fill + BAR_EMPTY_CELL * (cells - fill)


def ratio_fill(v: float, full_at: float = RATIO_BAR_FULL, cells: int = BAR_CELLS) -> int:
    """Full cells of a ratio bar: round_half_up(cells * min(1, |ln v| / ln full_at)).

    0 at v = 1, all cells at v = full_at or 1 / full_at and beyond, and for NaN/inf.
    """
    return round_half_up(cells * log_deviation(v, full_at))


def ratio_bar(v: float, full_at: float = RATIO_BAR_FULL) -> str:
    """The 5-cell deviation bar of a ratio: empty at 1.0, full at 0.5 or 2.0 (and NaN)."""
    return bar(ratio_fill(v, full_at))


def fraction_bar(x: float) -> str:
    """5-cell bar of a fraction in [0, 1] (clamped, nearest cell, halves up); NaN is full."""
    if math.isnan(x):
        return bar(BAR_CELLS)
    return bar(round_half_up(BAR_CELLS * min(1.0, max(0.0, x))))


def entropy_bar(entropy: float) -> str:
    """Bar of a head's normalised entropy: full = uniform policy, empty = collapsed."""
    return fraction_bar(entropy)


def fmt_ratio(v: float) -> str:
    """A ratio with three decimals, spelling non-finite values the way operators search for."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.3f}"


def fmt_number(v: float, digits: int = 3) -> str:
    """A loss-like value: fixed decimals when moderate, scientific when tiny or huge."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0.0 and not 1e-3 <= abs(v) < 1e5:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}f}"


def fmt_percent(v: float) -> str:
    """A fraction in [0, 1] as a percentage with one decimal."""
    return "NaN" if math.isnan(v) else f"{100.0 * v:.1f}%"


def fmt_duration(seconds: float) -> str:
    """Seconds as H:MM:SS (hours unbounded), for elapsed time and event offsets."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def no_value() -> Text:
    """The dim dash shown wherever there is no data yet."""
    return Text(NO_VALUE, style=NO_DATA)


def ratio_text(v: float | None, bands: RatioBands) -> Text:
    """`{:.3f}` value and its 5-cell bar, both in the value's health colour; None is a dash."""
    if v is None:
        return no_value()
    return Text(f"{fmt_ratio(v)} {ratio_bar(v)}", style=ratio_color(v, bands))


def joint_ratio_text(v: float | None, bands: RatioBands) -> Text:
    """Joint ratio value and bar, coloured by the joint bands; the bar is full at the
    joint's warning edge (x3 at eps 0.2)."""
    if v is None:
        return no_value()
    return Text(
        f"{fmt_ratio(v)} {ratio_bar(v, bands.joint_warning)}", style=joint_ratio_color(v, bands)
    )


def spark_level(v: float, full_at: float) -> int:
    """Sparkline level 0..7 of a ratio, by log deviation like the bars (NaN is top)."""
    return round_half_up((len(SPARK_LEVELS) - 1) * log_deviation(v, full_at))


def sparkline(values: Sequence[float], full_at: float = RATIO_BAR_FULL) -> str:
    """One block character per value, taller for a larger shift away from 1."""
    return "".join(SPARK_LEVELS[spark_level(v, full_at)] for v in values)


def ratio_sparkline(
    values: Sequence[float], full_at: float, color: Callable[[float | None], str]
) -> Text:
    """A sparkline whose every cell carries its own value's health colour.

    Neighbouring cells of one colour share a span (the picture is the same): a history is
    mostly one colour, and Rich and Textual pay per span on every redraw of nine rows.
    """
    cells = [_spark_cell(v, full_at, color) for v in values]
    text = Text("".join([char for char, _ in cells]))
    start = 0
    for style, run in itertools.groupby([style for _, style in cells]):
        end = start + sum(1 for _ in run)
        text.stylize(style, start, end)
        start = end
    return text


@functools.lru_cache(maxsize=1 << 14)
def _spark_cell(v: float, full_at: float, color: Callable[[float | None], str]) -> tuple[str, str]:
    """One sparkline cell's character and colour, remembered: a history shifts by one value
    per update, so a redraw meets almost only values it has drawn before."""
    return SPARK_LEVELS[spark_level(v, full_at)], color(v)


class TailText:
    """Rich renderable showing the right-most cells of a one-line Text (the newest values).

    Cropping a Table cell keeps the oldest values; history must keep the newest, so this
    trims from the left to whatever width the layout grants.
    """

    def __init__(self, text: Text) -> None:
        self.text = text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(1, len(self.text)), max(1, len(self.text)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        tail = self.text[-width:] if len(self.text) > width else self.text
        yield tail.copy()


class TailSparkline:
    """`TailText(ratio_sparkline(values, ...))`, with only the visible cells ever built.

    A history usually holds more values than the panel is wide; colouring all of them and
    then slicing the Text (a split at every span) cost most of a frame.
    """

    def __init__(
        self, values: Sequence[float], full_at: float, color: Callable[[float | None], str]
    ) -> None:
        self.values, self.full_at, self.color = values, full_at, color

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(1, len(self.values)), max(1, len(self.values)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        shown = self.values[-width:] if len(self.values) > width else self.values
        yield ratio_sparkline(shown, self.full_at, self.color)
