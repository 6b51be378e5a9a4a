"""Packaging: a wheel built from the tree holds every module, and works without the source tree.

The product's folders (coordinator/, agent/, sdk/, common/, proto/matrec/v1) map onto `matrec.*`
through pyproject's package-dir and an explicit `packages` list, so a new subpackage that is not
added to that list would be left out of `pip install .` while editable installs keep working.
The expected contents are computed from the folders here, independently of pyproject.toml.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Source folder -> import package, as the product's layout defines it.
LAYOUT: dict[str, str] = {
    "coordinator": "matrec.coordinator",
    "agent": "matrec.agent",
    "sdk": "matrec.sdk",
    "common": "matrec.common",
    "proto/matrec/v1": "matrec.v1",
}
#: Data files that must ship beside the modules (folder-relative globs).
PACKAGE_DATA: dict[str, tuple[str, ...]] = {
    "proto/matrec/v1": ("*.proto", "*.pyi", "py.typed"),
    "coordinator/migrations": ("alembic.ini", "script.py.mako"),
    "sdk/web/static": ("*.js", "*.css", "uPlot.LICENSE"),
}
CONSOLE_SCRIPTS: dict[str, str] = {
    "matrec-ctl": "matrec.sdk.ctl.app:main",
    "matrec-coordinator": "matrec.coordinator.main:main",
    "matrec-agent": "matrec.agent.main:main",
}
#: Copied into the build tree; everything else (venv, caches, build output) is not.
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".cache", "demo-output", "*.db",
)  # fmt: skip


def expected_wheel_files() -> set[str]:
    """Paths inside the wheel of every module and data file of the source folders."""
    expected: set[str] = set()
    for folder, package in LAYOUT.items():
        source = ROOT / folder
        prefix = package.replace(".", "/")
        for path in source.rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{prefix}/{path.relative_to(source).as_posix()}")
    for folder, patterns in PACKAGE_DATA.items():
        top, _, rest = folder.partition("/")
        # proto/matrec/v1 is one package; coordinator/migrations is inside matrec.coordinator.
        if folder in LAYOUT:
            prefix = LAYOUT[folder].replace(".", "/")
        else:
            prefix = LAYOUT[top].replace(".", "/") + "/" + rest
        for pattern in patterns:
            matches = list((ROOT / folder).glob(pattern))
            assert matches, f"{folder}/{pattern} matches nothing in the source tree"
            expected.update(f"{prefix}/{path.name}" for path in matches)
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the project, built from a copy of the tree (no build/ left in the real one)."""
    try:
        setuptools_version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        pytest.fail("setuptools is not installed in this environment; run `make setup`")
    if int(setuptools_version.split(".")[0]) < 69:
        pytest.fail(f"setuptools {setuptools_version} is older than 69; run `make setup`")
    source = tmp_path_factory.mktemp("source") / "matrec"
    shutil.copytree(ROOT, source, ignore=_COPY_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    wheels = list(out.glob("matrec-*.whl"))
    assert len(wheels) == 1, f"expected one matrec wheel, got {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed (without dependencies) into a --target folder."""
    target = tmp_path_factory.mktemp("target")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
         "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, f"pip install failed:\n{install.stdout}\n{install.stderr}"
    return target


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _entry_points(wheel: Path) -> configparser.ConfigParser:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(name).decode())
    return parser


def test_expected_list_covers_the_known_packages() -> None:
    expected = expected_wheel_files()
    for required in (
        "matrec/coordinator/server.py",
        "matrec/coordinator/migrations/env.py",
        "matrec/coordinator/migrations/alembic.ini",
        "matrec/agent/main.py",
        "matrec/agent/training/finetune.py",
        "matrec/sdk/client.py",
        "matrec/sdk/ctl/app.py",
        "matrec/common/specs.py",
        "matrec/v1/jobs_pb2.py",
        "matrec/v1/jobs_pb2_grpc.py",
    ):
        assert required in expected
    assert any(name.startswith("matrec/coordinator/migrations/versions/") for name in expected)


def test_wheel_contains_every_module_and_data_file(wheel: Path) -> None:
    missing = sorted(expected_wheel_files() - _wheel_names(wheel))
    assert not missing, (
        f"the wheel lacks {len(missing)} files, e.g. {missing[:5]}; add their packages to "
        "[tool.setuptools] packages (and package-data) in pyproject.toml"
    )


def test_wheel_has_the_console_scripts(wheel: Path) -> None:
    entry_points = _entry_points(wheel)
    assert dict(entry_points["console_scripts"]) == CONSOLE_SCRIPTS


_IMPORT_CHECK = textwrap.dedent(
    """
    import importlib, json, sys
    target, *site_dirs = sys.argv[1:]
    # -I -S: no PYTHONPATH, no cwd, no site: the venv's .pth files (the editable install's
    # finder among them) are not run. Dependencies come from the venv's site-packages.
    sys.path[:0] = [target, *site_dirs]
    import matrec.coordinator.server, matrec.agent.daemon, matrec.sdk.ctl.app
    scripts = {}
    for name, value in json.loads(sys.stdin.read()).items():
        module_name, _, attr = value.partition(":")
        scripts[name] = callable(getattr(importlib.import_module(module_name), attr))
    files = {
        name: sys.modules[name].__file__
        for name in ("matrec.coordinator", "matrec.agent", "matrec.sdk", "matrec.sdk.ctl",
                     "matrec.common", "matrec.v1", "matrec.coordinator.server")
    }
    finders = [type(finder).__name__ + repr(finder) for finder in sys.meta_path]
    print(json.dumps({"files": files, "scripts": scripts, "finders": finders}))
    """
)


def test_installed_wheel_imports_without_the_source_tree(installed: Path, tmp_path: Path) -> None:
    paths = sysconfig.get_paths()
    site_dirs = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _IMPORT_CHECK, str(installed), *site_dirs],
        input=json.dumps(CONSOLE_SCRIPTS),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    assert result.returncode == 0, f"import from the installed wheel failed:\n{result.stderr}"
    report = json.loads(result.stdout)
    for module, file in report["files"].items():
        assert file.startswith(str(installed)), f"{module} came from {file}, not the wheel"
    assert not [f for f in report["finders"] if "editable" in f.lower()]
    assert report["scripts"] == dict.fromkeys(CONSOLE_SCRIPTS, True)


def _run_timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return time.perf_counter() - started, result


def _console_script(name: str) -> str:
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.fail(f"{script} is missing; install the project (`make setup`)")
    return str(script)


def test_coordinator_help_is_fast_and_does_not_import_torch() -> None:
    script = _console_script("matrec-coordinator")
    timings = []
    for _ in range(3):
        seconds, result = _run_timed([script, "--help"])
        assert result.returncode == 0, result.stderr
        assert "matrec-coordinator" in result.stdout
        timings.append(seconds)
    assert min(timings) < 1.0, f"matrec-coordinator --help took {min(timings):.2f} s (best of 3)"

    check = (
        "import sys\n"
        "import matrec.coordinator.main, matrec.coordinator.server\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "agent = sorted(m for m in sys.modules if m.startswith('matrec.agent'))\n"
        "print(heavy[:5], agent[:5])\n"
        "sys.exit(1 if heavy or agent else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (
        f"the coordinator imports torch or the agent (modules: {result.stdout.strip()}) "
        f"{result.stderr}"
    )
