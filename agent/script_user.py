"""The account a `script` task's program runs as.

Without a setting the program runs as the agent's own user: the `matrec` system user of the
systemd unit in deploy/, or whoever started the agent on a workstation. An agent started as root
with `--script-user NAME` (MATREC_SCRIPT_USER) runs every user program as that account instead,
with its primary group only (root's supplementary groups dropped) and its HOME, in the task's
own working folder, which it is given; so a program cannot read the agent's token or touch other
tasks' folders. The agent and its workers keep their user: they need the GPUs, the artifact
store and the task folders; the program that came from a user does not.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SCRIPT_USER_ENV = "MATREC_SCRIPT_USER"


class ScriptUserError(ValueError):
    """The configured account does not exist, or this process cannot switch to it."""


@dataclass(frozen=True)
class ScriptUser:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> ScriptUser:
        """The account `name`, checked to be one this process can start programs as."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ScriptUserError(
                f"--script-user {name!r}: no such user on this host; create it (useradd "
                "--system matrec-jobs) or name an existing one"
            ) from None
        user = cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
        current = os.geteuid()
        if current not in (0, user.uid):
            raise ScriptUserError(
                f"--script-user {name!r}: the agent runs as {pwd.getpwuid(current).pw_name!r}, "
                "and only root can start programs as another user; run the agent as root "
                "or drop the flag (programs then run as the agent's own user)"
            )
        return user

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> ScriptUser | None:
        name = environ.get(SCRIPT_USER_ENV, "")
        return cls.lookup(name) if name else None

    def environment(self) -> dict[str, str]:
        """The account's own names, replacing root's in the program's environment."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def give(self, folder: Path) -> None:
        """Make `folder` (the task's working folder, made by the agent) the account's."""
        os.chown(folder, self.uid, self.gid)
