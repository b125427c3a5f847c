"""esper: factored-action PPO for morphogenetic networks, with per-head ratio telemetry.

The package is laid out by room, and each room imports only the ones below it:

- `esper.common`: what several rooms share (the factored-action declaration, Adam).
- `esper.telemetry`: event contracts, emitter, hub, run recorder and run directories.
- `esper.rl`: the algorithm: factored policy, PPO, ratio statistics, rollouts, trainer.
- `esper.morpho`: the morphogenetic environment (host, seeds, tasks).
- `esper.integrations`: esper's telemetry in other people's PPO (SB3, hand-written loops)
  and gymnasium environments as factored envs.
- `esper.sanctum`, `esper.analysis`: the dashboard and the post-hoc commands (no torch).
- `esper.cli`: the `esper` and `sanctum` commands, which wire the rooms together.

The import contracts in `pyproject.toml` (checked by `lint-imports` in `make test`) hold
the layout to this.
"""

from __future__ import annotations

__version__ = "0.1.0"
