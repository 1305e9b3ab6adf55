"""metatune: hyperparameter studies of gradient-based meta-learners."""

from __future__ import annotations

__version__ = "0.1.0"
