"""`open_session`, the one answer to "where does this SDK call run": a configured coordinator,
or an embedded cluster that the session stops, held exclusively when asked."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from matrec.sdk.errors import MatrecError
from matrec.sdk.local_cluster import ClusterStartError
from matrec.sdk.session import coordinator_address, open_session


@pytest.fixture(autouse=True)
def no_configured_coordinator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "config.toml"
    empty.write_text("")
    monkeypatch.setenv("MATREC_CONFIG", str(empty))
    monkeypatch.delenv("MATREC_COORDINATOR", raising=False)


def test_a_configured_coordinator_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    assert coordinator_address(None) is None
    monkeypatch.setenv("MATREC_COORDINATOR", "127.0.0.1:7001")
    assert coordinator_address(None) == "127.0.0.1:7001"
    assert coordinator_address("127.0.0.1:7002") == "127.0.0.1:7002"
    with open_session(None, Path("/nonexistent/never-created")) as session:
        # No cluster started, no folder made: the client's channel connects on first use.
        assert not session.embedded and session.cluster is None
        assert session.address == session.client.address == "127.0.0.1:7001"
    assert not Path("/nonexistent/never-created").exists()


def test_an_embedded_cluster_that_fails_to_start_is_stopped_and_frees_its_folder(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "cluster"
    # An option the coordinator refuses: it exits at once, and open_session must clean up.
    with pytest.raises(ClusterStartError, match="exited"):
        open_session(
            None, workdir, agents=1, exclusive="the test", coordinator_args=["--no-such-option"]
        )
    lock = tmp_path / "cluster.lock"
    assert lock.is_file()
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_an_exclusive_workdir_is_refused_while_held(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    with (tmp_path / "cluster.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(MatrecError, match=f"another the test is using .* in {tmp_path}"):
            open_session(None, workdir, exclusive="the test")
    assert not workdir.exists(), "nothing was started"
