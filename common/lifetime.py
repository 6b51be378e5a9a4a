"""Child processes that end with the process that started them.

Two mechanisms, both needed:

- **A pipe** (`watch_parent_pipe`): the parent keeps the write end, the child inherits only the
  read end, and nobody ever writes. The read returns end-of-file once every copy of the write end
  is closed, which the kernel does when the parent exits, however it exits (SIGKILL included),
  and also when it died before the child even started watching.
- **PR_SET_PDEATHSIG** (`die_with_parent`), Linux only: the kernel signals the child when the
  *thread* that started it ends. It still fires where the pipe cannot, when a process forked
  from the parent (without exec) keeps a copy of the write end; but it must only be armed when
  the starting thread lives as long as the parent (the main thread).

The agent's workers use the second alone (they die with SIGKILL); the coordinator and agents of
an embedded cluster (`matrec.sdk.local_cluster`) use both, with `PARENT_GONE_SIGNAL`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1

#: What a coordinator or agent of an embedded cluster gets when its starter's thread ends.
PARENT_GONE_SIGNAL = signal.SIGHUP


def add_parent_flags(parser: argparse.ArgumentParser) -> None:
    """`--exit-with-parent-fd` and `--exit-with-parent-pid`, set by the embedded cluster."""
    parser.add_argument(
        "--exit-with-parent-fd",
        dest="parent_fd",
        type=int,
        default=None,
        metavar="FD",
        help="stop once this inherited pipe's write end closes: the process that started this "
        "one has ended (set by the SDK's embedded cluster)",
    )
    parser.add_argument(
        "--exit-with-parent-pid",
        dest="parent_pid",
        type=int,
        default=None,
        metavar="PID",
        help="stop when this parent process ends, by a death signal from the kernel (Linux; set "
        "by the SDK's embedded cluster)",
    )


def die_with_parent(parent_pid: int, signum: int) -> bool:
    """Have the kernel send `signum` to this process when the thread that started it ends; False
    when the parent (which should be `parent_pid`) is gone already, so no signal will come.
    Elsewhere than on Linux nothing is armed and the answer is True."""
    if not sys.platform.startswith("linux"):
        return True
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    # Checked after arming: a parent that died in between has left us to another parent.
    return os.getppid() == parent_pid


def watch_parent_pipe(fd: int, on_gone: Callable[[], None]) -> threading.Thread:
    """Call `on_gone` (on a daemon thread) once the pipe whose read end is `fd` reaches
    end-of-file: the parent, the only holder of the write end, has ended."""

    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 64):
                pass  # nobody writes; data would not mean anything
        on_gone()

    thread = threading.Thread(target=wait, name="parent-watch", daemon=True)
    thread.start()
    return thread


def stop_with_parent(
    loop: asyncio.AbstractEventLoop,
    on_gone: Callable[[], None],
    *,
    parent_fd: int | None,
    parent_pid: int | None,
) -> None:
    """Run `on_gone` in `loop` once the parent is gone: when the pipe `parent_fd` closes, and
    (with `parent_pid`) on PARENT_GONE_SIGNAL, armed with `die_with_parent`. `on_gone` may run
    more than once."""
    if parent_pid is not None:
        loop.add_signal_handler(PARENT_GONE_SIGNAL, on_gone)
        if not die_with_parent(parent_pid, PARENT_GONE_SIGNAL):
            loop.call_soon(on_gone)
    if parent_fd is not None:

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has ended: nothing left to stop
                loop.call_soon_threadsafe(on_gone)

        watch_parent_pipe(parent_fd, notify)
