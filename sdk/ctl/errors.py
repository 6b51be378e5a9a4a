"""How `matrec-ctl` reports failures: one red line on stderr and an exit code, no traceback.

Expected failures are the SDK's errors, timeouts and OS errors (a path that cannot be written,
say); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from matrec.sdk.errors import InvalidSpecError, MatrecError
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

#: Exit codes: 1 for a failure (including a job that ended failed), 2 for invalid input.
EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2
EXIT_INTERRUPTED = 130

stderr = Console(stderr=True)


def print_error(message: str) -> None:
    # soft_wrap keeps a long message on one line instead of folding it at the terminal width.
    stderr.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, InvalidSpecError):
        return EXIT_INVALID_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


class ReportingGroup(TyperGroup):
    """The root command group: turns the SDK's errors into an error line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (MatrecError, TimeoutError, OSError) as exc:
            print_error(str(exc))
            raise typer.Exit(exit_code_for(exc)) from None
        except KeyboardInterrupt as exc:
            print_error("interrupted")
            raise typer.Exit(exit_code_for(exc)) from None
