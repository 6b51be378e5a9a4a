"""A file a task sends to the coordinator (a score job's scores) travels in chunks over the
agent's stream: what the agent emits, stored by the coordinator, is the same file; a replay
after a reconnect is harmless; a damaged or gapped file is never published; the stored result
names the coordinator's copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from matrec.agent import task_runner
from matrec.agent.task_runner import TaskEnvironment, TaskRun
from matrec.coordinator.task_files import ReceivedFiles, TaskFileError
from matrec.v1 import agents_pb2


def sent_chunks(
    path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int, kind: str = "score"
) -> list[agents_pb2.TaskFileChunk]:
    """What the agent emits for a task whose result names `path` as its scores."""
    monkeypatch.setattr(task_runner, "TASK_FILE_CHUNK_BYTES", chunk_bytes)
    assignment = agents_pb2.Assignment(
        task=agents_pb2.TaskRef(task_id="job-1-t0", attempt=2), job_id="job-1", kind=kind
    )
    emitted: list[agents_pb2.AgentMessage] = []
    run = TaskRun(assignment, TaskEnvironment("python", path.parent, 1.0, ()), emitted.append)
    run._result = {"scores_path": str(path), "samples": 3}
    run._send_result_files()
    assert all(m.WhichOneof("body") == "task_file" for m in emitted)
    return [m.task_file for m in emitted]


def test_a_file_sent_in_chunks_arrives_whole_and_replays_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tmp_path / "agent" / "scores.npz"
    original.parent.mkdir()
    original.write_bytes(os.urandom(10_000))
    chunks = sent_chunks(original, monkeypatch, 4096)
    assert [(c.offset, len(c.data), c.last) for c in chunks] == [
        (0, 4096, False), (4096, 4096, False), (8192, 1808, True),
    ]  # fmt: skip
    received = ReceivedFiles(tmp_path / "coordinator")
    # The first two chunks, then a reconnect replays everything unacknowledged.
    assert [received.store_chunk("job-1", c) for c in chunks[:2]] == [None, None]
    copy = received.folder("job-1", "job-1-t0", 2) / "scores.npz"
    assert not copy.exists(), "published before the last chunk"
    stored = [received.store_chunk("job-1", c) for c in chunks[1:] + chunks]
    assert stored[1] == copy == stored[-1]
    assert copy.read_bytes() == original.read_bytes()
    assert [p.name for p in copy.parent.iterdir()] == ["scores.npz"]

    result = {"scores_path": str(original), "samples": 3}
    assert received.substitute("job-1", "job-1-t0", 2, result) == {
        "scores_path": str(copy), "samples": 3,
    }  # fmt: skip
    # Another attempt's file did not arrive: its result names no file the coordinator lacks.
    assert received.substitute("job-1", "job-1-t0", 3, result) == {"samples": 3}


def test_a_damaged_or_gapped_file_is_refused_and_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tmp_path / "scores.npz"
    original.write_bytes(b"x" * 300)
    chunks = sent_chunks(original, monkeypatch, 100)
    received = ReceivedFiles(tmp_path / "coordinator")
    with pytest.raises(TaskFileError, match="a chunk at 200 after only 0 bytes"):
        received.store_chunk("job-1", chunks[2])
    received.store_chunk("job-1", chunks[0])
    damaged = agents_pb2.TaskFileChunk()
    damaged.CopyFrom(chunks[1])
    damaged.data = b"y" * 100
    received.store_chunk("job-1", damaged)
    with pytest.raises(TaskFileError, match="arrived damaged"):
        received.store_chunk("job-1", chunks[2])
    folder = received.folder("job-1", "job-1-t0", 2)
    assert list(folder.iterdir()) == []
    for bad_name in ("../../escape.npz", "model.pt"):
        named = agents_pb2.TaskFileChunk()
        named.CopyFrom(chunks[0])
        named.name = bad_name
        with pytest.raises(TaskFileError, match="is not a file a task sends"):
            received.store_chunk("job-1", named)


def test_a_script_result_cannot_make_the_agent_send_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the coordinator")
    assert sent_chunks(secret, monkeypatch, 4096, kind="script") == []
