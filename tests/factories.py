"""Payload builders shared by the tests: an update of any heads, a run's start event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from esper.morpho.actions import HEAD_NAMES
from esper.telemetry.contracts import TrainingStarted
from esper.telemetry.heads import HeadStats, UpdateStats


def update_stats(
    heads: Mapping[str, HeadStats] | None = None,
    names: Sequence[str] = HEAD_NAMES,
    **scalars: Any,
) -> UpdateStats:
    """An applied update (one minibatch run) of `names`; heads not given are unmeasured."""
    records = {name: (heads or {}).get(name, HeadStats()) for name in names}
    return UpdateStats(heads=records, **({"minibatches_run": 1} | scalars))


def started(names: Sequence[str] = HEAD_NAMES, **changes: Any) -> TrainingStarted:
    """A TRAINING_STARTED payload declaring `names` (size 3 each)."""
    fields: dict[str, Any] = {
        "config": {"lr": 3e-4},
        "task": "spirals",
        "head_names": list(names),
        "head_sizes": dict.fromkeys(names, 3),
        "episodes_total": 2,
        "n_envs": 1,
        "device": "cpu",
        "esper_version": "0",
    }
    return TrainingStarted(**(fields | changes))
