"""Reading the sample trace a fine-tune's ranks write (MATREC_SAMPLE_TRACE_DIR), and the check
that N ranks split every global batch between them: shared by the distributed tests."""

from __future__ import annotations

import json
from pathlib import Path

from matrec.agent.training.sample_trace import SAMPLE_TRACE_DIR_ENV

__all__ = ["SAMPLE_TRACE_DIR_ENV", "assert_ranks_split_each_batch", "read_trace"]


def read_trace(folder: Path) -> dict[int, dict[int, list[int]]]:
    """rank -> step -> the dataset indices that rank trained on at that step."""
    ranks: dict[int, dict[int, list[int]]] = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps = ranks.setdefault(record["rank"], {})
            assert record["step"] not in steps, f"rank {record['rank']} trained step twice"
            steps[record["step"]] = record["indices"]
    return ranks


def assert_ranks_split_each_batch(
    ranks: dict[int, dict[int, list[int]]],
    single: dict[int, list[int]],
    *,
    size: int,
    train_size: int,
    batch_size: int,
) -> None:
    """Each of `size` ranks trained on its own batch_size / size images at every step, the
    ranks' sets are disjoint and together are the batch the one process (`single`, its
    rank 0's trace) trained on at that step, and one epoch covers every training image once."""
    assert sorted(ranks) == list(range(size)), f"traces from ranks {sorted(ranks)}"
    steps = train_size // batch_size
    seen: list[int] = []
    for step in range(1, steps + 1):
        shares = [ranks[rank].get(step) for rank in range(size)]
        assert all(s is not None for s in shares), f"a rank has no record of step {step}"
        for rank, share in enumerate(shares):
            assert share is not None and len(share) == batch_size // size, (
                f"rank {rank} trained on {len(share or [])} images at step {step}, "
                f"not {batch_size // size}"
            )
        union = [i for share in shares if share for i in share]
        assert len(set(union)) == batch_size, f"the ranks' images overlap at step {step}"
        assert set(union) == set(single[step]), f"step {step}: not the one process's batch"
        seen += union
    assert sorted(seen) == list(range(train_size)), "an epoch did not cover every image once"
    assert all(set(r) == set(range(1, steps + 1)) for r in ranks.values()), "extra steps"
