"""Paths given by a person (command line, environment, configuration) made absolute where read.

A relative path means "relative to where I am" (or to the file that names it), but processes
hand paths on to others that run elsewhere: an agent starts its worker inside the task's folder,
a coordinator sends artifact folders to agents. So each component makes every path it reads
absolute once, with this function, and passes on only absolute paths.
"""

from __future__ import annotations

import os
from pathlib import Path


def absolute_path(path: str | Path, base: Path | None = None) -> Path:
    """`path` with ``~`` expanded, made absolute against `base` (default: the current working
    directory), ``..`` folded. Symbolic links are kept: a virtual environment's interpreter is a
    link whose target would run outside that environment."""
    expanded = Path(path).expanduser()
    if base is not None:
        expanded = base / expanded
    return Path(os.path.abspath(expanded))


def optional_absolute_path(path: str | Path | None, base: Path | None = None) -> Path | None:
    """`absolute_path` of `path`, or None where none was given."""
    return None if path is None else absolute_path(path, base)
