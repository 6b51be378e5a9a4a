"""A record of which training images each rank trained on at each step, for tests and for
debugging a distributed run's sharding: set MATREC_SAMPLE_TRACE_DIR and every rank appends one
JSON line per optimizer step, `{"rank": r, "size": n, "step": s, "indices": [...]}` (dataset
indices), to `rank<r>.jsonl` in that folder. Unset (the default) it records nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

SAMPLE_TRACE_DIR_ENV = "MATREC_SAMPLE_TRACE_DIR"


class SampleTrace:
    def __init__(self, rank: int, size: int) -> None:
        folder = os.environ.get(SAMPLE_TRACE_DIR_ENV)
        self.rank, self.size = rank, size
        self.path = Path(folder) / f"rank{rank}.jsonl" if folder else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, step: int, indices: Sequence[int]) -> None:
        if self.path is None:
            return
        line = {"rank": self.rank, "size": self.size, "step": step, "indices": list(indices)}
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
