"""esper's per-head telemetry inside other people's PPO implementations."""
