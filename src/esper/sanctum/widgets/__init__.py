"""Sanctum's panels: each one draws its reactive `snapshot`, which the app binds to its own."""

from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.events import EventLogPanel
from esper.sanctum.widgets.footer import StatusFooter
from esper.sanctum.widgets.header import HeaderView, SanctumHeader
from esper.sanctum.widgets.heads import ActionHeadsPanel
from esper.sanctum.widgets.history import RatioHistoryPanel
from esper.sanctum.widgets.ppo import PPOHealthPanel
from esper.sanctum.widgets.slots import SlotsPanel
from esper.sanctum.widgets.style import (
    entropy_bar,
    joint_ratio_color,
    ratio_bar,
    ratio_color,
    sparkline,
)

__all__ = [
    "ActionHeadsPanel",
    "EventLogPanel",
    "HeaderView",
    "PPOHealthPanel",
    "RatioHistoryPanel",
    "SanctumHeader",
    "SlotsPanel",
    "SnapshotPanel",
    "StatusFooter",
    "entropy_bar",
    "joint_ratio_color",
    "ratio_bar",
    "ratio_color",
    "sparkline",
]
