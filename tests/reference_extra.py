"""Per-task references (see reference.py); registers into REFERENCES and contract SETTINGS."""

from __future__ import annotations

from reference import reference  # noqa: F401
from contract_settings import SETTINGS  # noqa: F401
