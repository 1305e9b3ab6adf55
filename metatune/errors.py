"""Errors metatune raises on purpose, each with a message fit for a user."""

from __future__ import annotations

__all__ = ["ConfigError", "CheckpointError"]


class ConfigError(ValueError):
    """A configuration value is wrong: names the file, the field and what was expected."""

    def __init__(self, field: str, message: str, *, source: str | None = None) -> None:
        self.field = field
        self.source = source
        self.detail = message
        where = f"{source}: " if source else ""
        super().__init__(f"{where}field '{field}': {message}")

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.field, self.detail, source=source)


class CheckpointError(RuntimeError):
    """A checkpoint or results file is unreadable, truncated or of the wrong kind."""
