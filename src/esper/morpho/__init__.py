"""The morphogenetic environment: a host network that trains while Tamiyo grows, blends and
kills seeds in its slots.

Its action heads and their meaning (`actions`), the bundled tasks (`tasks`), the seed
lifecycle (`lifecycle`), the host with its slots (`host`) and the gymnasium environment
(`environment`). Importing this package registers `esper/Morphogenetic-v0` with gymnasium
by entry-point string, so the registration costs no torch import.

The algorithm (`esper.rl`) never imports this package: the environment describes its
heads through `esper.common.spaces`, and the command line wires the two together.
"""

from __future__ import annotations

import gymnasium

ENV_ID = "esper/Morphogenetic-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="esper.morpho.environment:MorphogeneticEnv")
