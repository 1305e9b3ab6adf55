"""Errors metatune raises on purpose, each with a message fit for a user."""

from __future__ import annotations

__all__ = ["ConfigError", "CheckpointError", "DivergedError"]


class ConfigError(ValueError):
    """A configuration value is wrong: names the file, the field and what was expected."""

    def __init__(self, field: str, message: str, *, source: str | None = None) -> None:
        self.field = field
        self.source = source
        self.detail = message
        where = f"{source}: " if source else ""
        super().__init__(f"{where}field '{field}': {message}")

    def with_source(self, source: str) -> "ConfigError":
        return ConfigError(self.field, self.detail, source=source)


class CheckpointError(RuntimeError):
    """A checkpoint or results file is unreadable, truncated or of the wrong kind."""


class DivergedError(ArithmeticError):
    """Raised inside the training loop when the meta-loss stops being finite."""

    def __init__(self, iteration: int, last_finite_loss: float | None) -> None:
        self.iteration = iteration
        self.last_finite_loss = last_finite_loss
        super().__init__(
            f"meta-loss became non-finite at iteration {iteration} "
            f"(last finite loss {last_finite_loss})"
        )
