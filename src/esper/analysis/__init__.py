"""Post-hoc analysis of recorded runs: `esper report`, `esper query` and exporter backends.

Everything starts from `runs.load_run`, which turns a run's `events.jsonl` into tidy tables
once, so the report, the SQL views and the aggregator all read the same numbers. The
heavy libraries (matplotlib, duckdb, tensorboard, wandb) are optional extras, imported
only by the command that needs them, through `require_extra`, so a missing one costs a
one-line message naming the extra to install rather than a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class AnalysisError(Exception):
    """Input the analysis commands cannot act on; reported as one line, exit code 2."""


def require_extra(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise AnalysisError saying which `esper-ppo[extra]` provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".", 1)[0]
        raise AnalysisError(
            f"{top} is not installed; install it with: pip install 'esper-ppo[{extra}]'"
        ) from None
