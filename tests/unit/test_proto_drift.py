"""The committed protocol code in proto/matrec/v1 is exactly what the .proto files generate.

Fails when someone edits a .proto without running `make proto` (or hand-edits generated code).
The generated code also names the grpcio-tools version, which the `dev` extra pins.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
GENERATED_DIR = PROTO_ROOT / "matrec" / "v1"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def _load_gen_proto() -> ModuleType:
    """A fresh copy of scripts/gen_proto.py (not importable as a package)."""
    spec = importlib.util.spec_from_file_location("_gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generate(proto_root: Path, out_dir: Path) -> Path:
    """Run gen_proto.generate() on the .proto files under `proto_root`; return the v1 output dir."""
    gen_proto = _load_gen_proto()
    # generate() reads its sources from the module global PROTO_ROOT.
    setattr(gen_proto, "PROTO_ROOT", proto_root)  # noqa: B010
    out_dir.mkdir(parents=True, exist_ok=True)
    gen_proto.generate(out_dir)
    return out_dir / "matrec" / "v1"


def _generated_files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for pattern in GENERATED_PATTERNS
        for path in directory.glob(pattern)
    }


def _drift(committed_dir: Path, regenerated_dir: Path) -> list[str]:
    """Generated files that differ, are missing from the commit, or have no .proto any more."""
    committed = _generated_files(committed_dir)
    regenerated = _generated_files(regenerated_dir)
    return sorted(
        name
        for name in committed.keys() | regenerated.keys()
        if committed.get(name) != regenerated.get(name)
    )


def test_committed_protocol_code_is_what_the_proto_files_generate(tmp_path: Path) -> None:
    regenerated = _generate(PROTO_ROOT, tmp_path / "out")
    assert _generated_files(regenerated), "gen_proto.generate() wrote no files"
    drift = _drift(GENERATED_DIR, regenerated)
    assert not drift, (
        f"proto/matrec/v1 is out of date with its .proto files: {', '.join(drift)}; "
        "run `make proto` and commit the result (with the dev extra's grpcio-tools version)"
    )


def test_the_drift_check_notices_an_edited_proto(tmp_path: Path) -> None:
    """Guard for the test above: a new field in a scratch copy of jobs.proto is detected."""
    scratch = tmp_path / "proto"
    (scratch / "matrec" / "v1").mkdir(parents=True)
    for source in GENERATED_DIR.glob("*.proto"):
        shutil.copy2(source, scratch / "matrec" / "v1" / source.name)
    jobs_proto = scratch / "matrec" / "v1" / "jobs.proto"
    text = jobs_proto.read_text()
    anchor = "message GetJobRequest {\n"
    assert anchor in text, "the probe edit needs another anchor in jobs.proto"
    jobs_proto.write_text(text.replace(anchor, anchor + "  string drift_probe = 99;\n", 1))

    regenerated = _generate(scratch, tmp_path / "out")

    drift = _drift(GENERATED_DIR, regenerated)
    assert "jobs_pb2.py" in drift
    assert "jobs_pb2.pyi" in drift
    assert "common_pb2.py" not in drift
