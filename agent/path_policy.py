"""Which files a task may read on this host. An agent started with `--allowed-path ROOT` (any
number of times, or MATREC_ALLOWED_PATHS) runs only tasks whose datasets, models, pools and
working folders lie under one of those roots, after following symbolic links and `..`; without
one every path is allowed, as on a single-user workstation. A refused task fails at once with
a message naming the field and the roots, before anything is read."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrec.agent.worker_protocol import InvalidTaskInput

#: The agent passes its roots to its workers in this variable (os.pathsep-separated).
ALLOWED_PATHS_ENV = "MATREC_ALLOWED_PATHS"

#: The config fields of each job kind that name files or folders on the agent.
PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "finetune": ("dataset_path", "pretrained_path"),
    "score": ("model_path", "pool_path"),
    "script": ("working_dir",),
}


class PathNotAllowed(InvalidTaskInput):
    """A task names a path outside the agent's allowed roots."""


def parse_roots(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip())


@dataclass(frozen=True)
class PathPolicy:
    roots: tuple[Path, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> PathPolicy:
        return cls(parse_roots(environ.get(ALLOWED_PATHS_ENV, "")))

    @property
    def confined(self) -> bool:
        return bool(self.roots)

    def allows(self, path: str | Path) -> bool:
        if not self.roots:
            return True
        resolved = Path(path).expanduser().resolve()
        return any(resolved.is_relative_to(root.resolve()) for root in self.roots)

    def require(self, path: str | Path, what: str) -> None:
        if not self.allows(path):
            roots = ", ".join(str(r) for r in self.roots)
            raise PathNotAllowed(
                f"{what} {str(path)!r} is outside this agent's allowed paths ({roots}); move "
                "the data under one of them, or start the agent with another --allowed-path"
            )

    def check_task(self, kind: str, config: Mapping[str, Any]) -> None:
        for field in PATH_FIELDS.get(kind, ()):
            value = config.get(field)
            if isinstance(value, str) and value:
                self.require(value, f"config.{field}")

    def check_files(self, paths: Sequence[Path], what: str) -> None:
        for path in paths:
            self.require(path, what)
