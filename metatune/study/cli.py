"""Study subcommands of the ``metatune`` CLI (run, resume, status, export, report, ui)."""

from __future__ import annotations

import argparse

__all__ = ["register_commands"]


def register_commands(sub: argparse._SubParsersAction) -> None:
    """Add the study subcommands to the top-level parser."""
