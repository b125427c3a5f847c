"""Checkpoints: written atomically, read without unpickling anything.

A run killed at any moment leaves either the previous checkpoint or the new one,
never a torn file; loading uses `weights_only=True` so a checkpoint handed over by
someone else cannot run code. torch is imported inside the functions so that the CLI
can name the checkpoint file without loading the training stack.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` via a temp file in the same directory and an atomic rename."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; never unpickles arbitrary objects."""
    import torch

    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise here:
            warnings.simplefilter("ignore", UserWarning)  # the refusal below says it all
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} holds objects other than tensors and plain data; refused, not unpickled"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not an esper checkpoint")
    return state
