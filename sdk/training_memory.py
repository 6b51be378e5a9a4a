"""What an EnhancedTrainingAPI remembers in its base_dir between sessions: the latest model it
trained and the active-learning project of that model, per coordinator (one JSON file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matrec.sdk.errors import MatrecError


class ApiMemory:
    """The values kept under `where` (a coordinator's address, or "embedded") in `path`."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self.where = where

    def read(self) -> dict[str, Any]:
        try:
            everything = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise MatrecError(f"{self.path} is not a training-API state file; remove it") from None
        state = everything.get(self.where, {}) if isinstance(everything, dict) else {}
        return dict(state) if isinstance(state, dict) else {}

    def remember(self, **values: Any) -> None:
        """Add `values` to what is kept (written whole, through a temporary file)."""
        try:
            everything = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            everything = {}
        if not isinstance(everything, dict):
            everything = {}
        everything[self.where] = {**self.read(), **values}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(everything, indent=2) + "\n")
        temporary.replace(self.path)
