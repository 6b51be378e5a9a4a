"""The agent's path confinement: what lies under an allowed root, after links and `..`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from matrec.agent.path_policy import ALLOWED_PATHS_ENV, PathNotAllowed, PathPolicy
from matrec.agent.settings import parse_settings


def test_paths_under_a_root_pass_and_escapes_do_not(tmp_path: Path) -> None:
    data, other = tmp_path / "data", tmp_path / "data2"
    (data / "wood").mkdir(parents=True)
    other.mkdir()
    (data / "escape").symlink_to(other)
    policy = PathPolicy((data,))
    assert policy.allows(data) and policy.allows(data / "wood" / "a.png")
    assert not policy.allows(other)  # a shared prefix is not a parent
    assert not policy.allows(data / ".." / "data2")
    assert not policy.allows(data / "escape")  # a link out of the root
    assert PathPolicy(()).allows("/etc/passwd")  # no roots: a workstation, anything goes


def test_a_task_outside_the_roots_is_refused_naming_the_field(tmp_path: Path) -> None:
    policy = PathPolicy((tmp_path / "data",))
    policy.check_task("finetune", {"dataset_path": str(tmp_path / "data" / "set")})
    with pytest.raises(PathNotAllowed) as caught:
        policy.check_task(
            "finetune",
            {"dataset_path": str(tmp_path / "data" / "set"), "pretrained_path": "/etc/shadow"},
        )
    message = str(caught.value)
    assert "config.pretrained_path" in message and "/etc/shadow" in message
    assert str(tmp_path / "data") in message and "--allowed-path" in message
    with pytest.raises(PathNotAllowed, match=r"config\.pool_path"):
        policy.check_task(
            "score", {"model_path": str(tmp_path / "data" / "m.pt"), "pool_path": "/"}
        )
    policy.check_task("diagnostic", {"steps": 1})  # kinds without paths


def test_roots_come_from_flags_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        ALLOWED_PATHS_ENV, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    )
    assert parse_settings([]).allowed_paths == (tmp_path / "a", tmp_path / "b")
    flagged = parse_settings(["--allowed-path", str(tmp_path / "c")])
    assert flagged.allowed_paths == (tmp_path / "c",)  # a flag wins
    monkeypatch.setenv(ALLOWED_PATHS_ENV, str(tmp_path / "a"))
    assert PathPolicy.from_env().roots == (tmp_path / "a",)
