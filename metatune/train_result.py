"""What one training run returns (and ``result.json`` holds), and strict JSON for it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from metatune import __version__
from metatune.evaluate import EvalResult

__all__ = ["TrainResult", "to_json"]


@dataclass
class TrainResult:
    status: str  # "completed" | "diverged"
    iterations: int
    config: dict[str, Any]
    seed: int
    wall_time_s: float
    diverged_at: int | None = None
    last_finite_loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    evaluation: EvalResult | None = None
    #: Whether the run compiled, and what it compiled: graphs, cache hits, seconds.
    compile: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metatune_version": __version__,
            "status": self.status,
            "iterations": self.iterations,
            "seed": self.seed,
            "wall_time_s": self.wall_time_s,
            "diverged_at": self.diverged_at,
            "last_finite_loss": self.last_finite_loss,
            "config": self.config,
            "history": self.history,
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "compile": self.compile,
        }


def to_json(data: Any) -> str:
    """JSON with non-finite floats written as null (strict JSON has no inf/NaN)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    return json.dumps(clean(data), indent=2, allow_nan=False)
