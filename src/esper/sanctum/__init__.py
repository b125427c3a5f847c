"""Sanctum: the terminal dashboard that shows a run's telemetry, live or recorded.

Nothing here imports torch; it reads telemetry events only.
"""
