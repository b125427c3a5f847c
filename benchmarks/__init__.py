"""Benchmarks of esper: telemetry cost, Stable-Baselines3 side by side, Sanctum, memory.

Not part of the test suite (timings are not assertions); run `python -m benchmarks`
(`make bench`), which prints one table and writes `benchmarks/results/latest.json`.
See BENCHMARKS.md for the figures and where the time goes.
"""
