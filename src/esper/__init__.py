"""esper: factored-action PPO for morphogenetic networks, with per-head ratio telemetry.

Importing esper registers the environment with gymnasium by entry-point string, so the
import stays free of torch: the Sanctum dashboard imports this package too.
"""

from __future__ import annotations

import gymnasium

__version__ = "0.1.0"
ENV_ID = "esper/Morphogenetic-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="esper.environment:MorphogeneticEnv")
