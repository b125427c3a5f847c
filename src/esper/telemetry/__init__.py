"""Telemetry: typed event contracts, the emitter, the hub and its backends, the reader.

Nothing here imports torch: payloads carry plain numbers, so the recorder, the reader and
the dashboard work without the training stack.
"""
