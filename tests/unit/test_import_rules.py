"""The layering of the four packages, read from their source (every `import`, also those inside
functions, which a run-time check of sys.modules would miss until the code path runs).

- coordinator/ never imports the agent, the SDK or an ML framework;
- agent/ never imports the coordinator or the SDK;
- common/ imports none of the three, and no ML framework;
- sdk/ imports no agent and no coordinator module, except the documented entry points in
  SDK_ENTRY_POINTS (docs/architecture.md says why each exists).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ML_FRAMEWORKS = ("torch", "torchvision", "tensorflow", "keras", "horovod")

#: package folder -> module prefixes it must not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "coordinator": ("matrec.agent", "matrec.sdk", *ML_FRAMEWORKS),
    "agent": ("matrec.coordinator", "matrec.sdk"),
    "common": ("matrec.agent", "matrec.coordinator", "matrec.sdk", *ML_FRAMEWORKS),
    "sdk": ("matrec.agent", "matrec.coordinator"),
}

#: The only agent/coordinator modules the SDK imports, and where: the launchers behind
#: `matrec-ctl server` and `matrec-ctl agent`, and transfer_learn's in-process training.
SDK_ENTRY_POINTS: frozenset[tuple[str, str]] = frozenset(
    {
        ("sdk/ctl/app.py", "matrec.coordinator.main"),
        ("sdk/ctl/app.py", "matrec.agent.main"),
        ("sdk/transfer.py", "matrec.agent.in_process"),
    }
)


def _module_of(path: Path, root: Path) -> str:
    """The dotted name of a source file under its package folder (coordinator/x.py ->
    matrec.coordinator.x), so that relative imports can be resolved."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["matrec", *parts])


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a source file imports, absolute, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_of(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from matrec import agent` imports a package too.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(package: str, root: Path = ROOT) -> list[str]:
    broken: list[str] = []
    for path in sorted((root / package).rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        allowed = [module for where, module in SDK_ENTRY_POINTS if where == relative]
        for module in sorted(imported_modules(path, root)):
            # `from matrec.agent.main import main` reports matrec.agent.main and
            # matrec.agent.main.main; `from matrec.agent import main` also matrec.agent.
            if any(_matches(module, ok) or _matches(ok, module) for ok in allowed):
                continue
            broken.extend(
                f"{relative} imports {module}"
                for prefix in FORBIDDEN[package]
                if _matches(module, prefix)
            )
    return broken


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_keeps_its_import_rules(package: str) -> None:
    broken = violations(package)
    assert not broken, (
        f"{package}/ breaks the import rules of docs/architecture.md:\n  " + "\n  ".join(broken)
    )


def test_the_scan_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and a relative one are found."""
    (tmp_path / "sdk").mkdir()
    source = tmp_path / "sdk" / "probe.py"
    source.write_text(
        "def f():\n    import matrec.agent.training.finetune\nfrom ..coordinator import store\n"
    )
    found = imported_modules(source, tmp_path)
    assert {"matrec.agent.training.finetune", "matrec.coordinator.store"} <= found
    assert violations("sdk", tmp_path) == [
        "sdk/probe.py imports matrec.agent.training.finetune",
        "sdk/probe.py imports matrec.coordinator",
        "sdk/probe.py imports matrec.coordinator.store",
    ]


def test_every_entry_point_exists_and_is_used() -> None:
    """An allowed import that is gone should leave the list too (no silent permissions)."""
    for where, module in SDK_ENTRY_POINTS:
        assert module in imported_modules(ROOT / where), f"{where} no longer imports {module}"
