"""The RL algorithm: a factored actor-critic, PPO with per-head ratio statistics, rollouts
over any factored environment, the trainer and policy evaluation.

It knows environments only through `esper.common.spaces` (heads, sizes, masks and
relevance), never the morphogenetic environment itself: the contract in `pyproject.toml`
fails the build if it imports `esper.morpho`. Importing this package imports no torch
(`esper.rl.config` is read before the training stack loads).
"""
