"""The guard on the system tools the tests need: each one is in the list in sdk/ctl/doctor.py,
`make setup` depends on a target for each, and `matrec-ctl doctor` reports them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from matrec.sdk.ctl.doctor import BASE_COMMANDS, SYSTEM_TOOLS
from support.tools import make

ROOT = Path(__file__).resolve().parents[2]
CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]

# What a test runs as a program: shutil.which("X"), a subprocess call whose argument list starts
# with a literal name, a job's "command" list, an absolute /usr path, or require_tool("X").
USAGES = (
    re.compile(r"""shutil\.which\(\s*["']([\w.+-]+)["']"""),
    re.compile(r"""subprocess\.\w+\(\s*\[\s*["']([\w.+-]+)["']"""),
    re.compile(r"""["']command["']\s*:\s*\[\s*["']([\w.+-]+)["']"""),
    re.compile(r"""["']/usr/(?:local/)?s?bin/([\w.+-]+)["']"""),
)
REQUIRE = re.compile(r"""require_tool\(\s*["']([\w.+-]+)["']""")


def programs_used(source: str) -> set[str]:
    return {name for pattern in USAGES for name in pattern.findall(source)}


def setup_prerequisites() -> list[str]:
    """`setup`'s prerequisites as make sees them, variables expanded."""
    database = make("-p", "-n", "help")
    lines = [line for line in database.splitlines() if line.startswith("setup:")]
    assert len(lines) == 1, f"no single `setup:` rule in make's database: {lines}"
    return lines[0].removeprefix("setup:").split()


def test_setup_depends_on_a_target_for_every_tool() -> None:
    prerequisites = setup_prerequisites()
    missing = [t.name for t in SYSTEM_TOOLS if t.name not in prerequisites]
    assert not missing, (
        f"`make setup` does not install {missing}: add their targets to setup's prerequisites "
        f"in the Makefile (setup: {' '.join(prerequisites)})"
    )


def test_each_tool_target_installs_that_tool() -> None:
    for entry in SYSTEM_TOOLS:
        dry_run = make("-n", entry.name)
        assert f"sdk/ctl/doctor.py install {entry.name}" in dry_run, dry_run


def test_every_program_a_test_runs_is_in_the_list() -> None:
    known = {command for entry in SYSTEM_TOOLS for command in entry.commands} | BASE_COMMANDS
    names = {entry.name for entry in SYSTEM_TOOLS}
    unknown: list[str] = []
    # This file is left out: its examples of usages are not programs it runs.
    for path in sorted(set((ROOT / "tests").rglob("*.py")) - {Path(__file__).resolve()}):
        source = path.read_text()
        where = path.relative_to(ROOT)
        unknown += [f"{where}: runs {name}" for name in programs_used(source) - known]
        unknown += [f"{where}: require_tool({n!r})" for n in set(REQUIRE.findall(source)) - names]
    assert not unknown, (
        "tests run programs that `make setup` does not install; add each to SYSTEM_TOOLS in "
        "sdk/ctl/doctor.py (the Makefile then installs it): " + "; ".join(unknown)
    )


def test_the_scan_finds_each_kind_of_usage() -> None:
    source = """
        shutil.which("grpcurl")
        subprocess.run(["psql", "-c", "select 1"])
        run_job(cluster, {"command": ["nvidia-smi"]})
        CHROME = "/usr/bin/google-chrome"
        subprocess.run([sys.executable, "-m", "x"])
    """
    assert programs_used(source) == {"grpcurl", "psql", "nvidia-smi", "google-chrome"}


def test_doctor_names_a_missing_tool_and_how_to_install_it(tmp_path: Path) -> None:
    # A PATH holding only python: tmux, chromium and curl cannot be found.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    done = subprocess.run([*CTL, "doctor"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    tmux = next(i for i, line in enumerate(lines) if line.split()[:2] == ["tmux", "missing"])
    assert "apt-get install --no-install-recommends tmux" in lines[tmux + 1]
    assert "`make tmux`" in lines[tmux + 1]
    assert any(line.split()[:2] == ["torch", "found"] for line in lines), done.stdout


@pytest.mark.parametrize("name", ["tmux", "chromium", "curl"])
def test_require_tool_fails_with_the_doctors_message(name: str, tmp_path: Path) -> None:
    script = tmp_path / "test_needs_tool.py"
    script.write_text(
        f"from support.tools import require_tool\n\ndef test_it():\n    require_tool({name!r})\n"
    )
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(ROOT / "tests")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout
    assert f"{name} is missing:" in done.stdout
    assert f"`make {name}`" in done.stdout
