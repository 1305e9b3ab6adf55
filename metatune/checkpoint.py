"""The checkpoint file of a training run: its name, its format tag, and a loader that refuses
anything that is not an intact metatune checkpoint (the trainer writes it, see ``Trainer.save``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metatune.errors import CheckpointError

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "load_checkpoint"]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "metatune-checkpoint-1"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (a pickle that would build Python objects is
    refused, never run); a corrupt, truncated, bit-flipped or foreign file raises CheckpointError
    naming it, with a one-line reason."""
    import pickle
    import warnings
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # torch.save writes a CRC32 per archive member but torch.load never checks them: a
        # flipped bit in a tensor would load silently.
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                raise zipfile.BadZipFile(f"CRC mismatch in {damaged}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of foreign files
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message is a page of advice to load with weights_only=False: never that.
        raise CheckpointError(
            f"{path}: unreadable checkpoint: corrupt, or it holds Python objects that loading would "
            "execute (refused by torch.load(weights_only=True))"
        ) from None
    except Exception as exc:  # torch and zipfile raise several types for bad archives
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0].split(". ")[0][:200] if lines else "file cut short"
        raise CheckpointError(
            f"{path}: unreadable or truncated checkpoint ({type(exc).__name__}: {reason})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a metatune checkpoint")
    # The right tag over a damaged body: say so here, naming the file, rather than with a
    # KeyError or AttributeError inside Trainer.load_state_dict.
    parts = ("config", "iteration", "status", "diverged_at", "last_finite_loss", "wall_time_s",
             "meta", "optimizer", "generator", "history")  # fmt: skip
    missing = [k for k in parts if k not in state]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint (missing {', '.join(missing)})")
    meta, config = state["meta"], state["config"]
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: damaged checkpoint ('config' and 'meta' must be mappings)")
    if not all(isinstance(v, torch.Tensor) for v in meta.values()):
        raise CheckpointError(f"{path}: damaged checkpoint ('meta' holds values that are not tensors)")
    return state
