"""PPO health: the joint ratio (TELE-150) and the update-wide statistics."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from esper.sanctum.schema import SanctumSnapshot, TamiyoState
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import (
    CRITICAL,
    WARNING,
    fmt_number,
    fmt_percent,
    joint_ratio_text,
    no_value,
)


def _count_text(count: int) -> Text:
    """A count that should be zero: red when it is not."""
    return Text(str(count), style=CRITICAL if count else "")


def ppo_rows(t: TamiyoState) -> list[tuple[str, Text]]:
    """Label and value of each line; every value a dash before the first update."""
    labels = (
        "joint ratio max",
        "approx KL",
        "clip fraction",
        "policy loss",
        "value loss",
        "entropy",
        "explained var",
        "epochs run",
        "skipped minibatches",
    )
    u = t.update
    if u is None:
        return [(label, no_value()) for label in labels]
    epochs = Text(str(u.epochs_run))
    if u.early_stopped:
        epochs.append(" (early stop)", style=WARNING)
    values = (
        joint_ratio_text(u.joint_ratio_max, t.bands),
        Text(fmt_number(u.approx_kl, 4)),
        Text(fmt_percent(u.clip_fraction)),
        Text(fmt_number(u.policy_loss)),
        Text(fmt_number(u.value_loss)),
        Text(fmt_number(u.entropy)),
        Text(fmt_number(u.explained_variance)),
        epochs,
        _count_text(u.minibatches_skipped),
    )
    return list(zip(labels, values, strict=True))


def render_ppo_health(snapshot: SanctumSnapshot) -> RenderableType:
    """A two-column grid of the update-wide PPO statistics."""
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    for label, value in ppo_rows(snapshot.tamiyo):
        grid.add_row(label, value)
    return grid


class PPOHealthPanel(SnapshotPanel):
    """Joint ratio max with its own bands, KL, clip fraction, losses and update bookkeeping."""

    BORDER_TITLE = "PPO health"
    WIDTH_ONLY = True

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.tamiyo

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_ppo_health(snapshot)
