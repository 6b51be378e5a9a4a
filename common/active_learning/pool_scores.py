"""A scored pool of unlabelled images, as the `score` job kind stores it, and how a pool is listed.

`PoolScores` holds, per image, the model's class probabilities, the embedding its head sees and
(with MC dropout) the probabilities of each stochastic pass; it is saved as one .npz file
(SCORES_FILE in the task's artifact folder); the agent sends it to the coordinator over its
stream, and selection and drift detection read the coordinator's copy back.

A pool is a folder of images or a manifest file (`list_pool`). numpy only: the coordinator and
the SDK read scores without torch.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matrec.common.specs import IMAGE_EXTENSIONS
from matrec.common.task_files import SCORES_FILE
from numpy.typing import NDArray

#: Bumped when the file's layout changes; `load` refuses versions it does not know.
SCORES_FORMAT_VERSION = 1
MANIFEST_SUFFIXES = (".txt", ".csv", ".json")


@dataclass
class PoolScores:
    """Row i of every per-sample array belongs to sample_ids[i] (the file paths[i])."""

    sample_ids: list[str]
    paths: list[str]
    classes: list[str]
    probabilities: NDArray[np.float32]  # [N, C], rows sum to 1
    embeddings: NDArray[np.float32]  # [N, D], what the model's head sees
    mc_probabilities: NDArray[np.float32] | None  # [T, N, C] MC-dropout passes, or None
    skipped: list[tuple[str, str]]  # (path, reason) of images that could not be scored

    def __post_init__(self) -> None:
        self.sample_ids = [str(s) for s in self.sample_ids]
        self.paths = [str(p) for p in self.paths]
        self.classes = [str(c) for c in self.classes]
        self.skipped = [(str(path), str(reason)) for path, reason in self.skipped]
        self.probabilities = np.asarray(self.probabilities, dtype=np.float32)
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if self.mc_probabilities is not None:
            self.mc_probabilities = np.asarray(self.mc_probabilities, dtype=np.float32)
        self._check_shapes()

    def _check_shapes(self) -> None:
        count, classes = len(self.sample_ids), len(self.classes)
        if len(self.paths) != count:
            raise ValueError(f"paths: {len(self.paths)} paths for {count} sample_ids")
        if len(set(self.sample_ids)) != count:
            raise ValueError("sample_ids: every sample needs its own id; some are repeated")
        if self.probabilities.shape != (count, classes):
            raise ValueError(
                f"probabilities: expected shape ({count}, {classes}) (samples, classes), "
                f"got {self.probabilities.shape}"
            )
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != count:
            raise ValueError(
                f"embeddings: expected shape ({count}, D) (samples, features), "
                f"got {self.embeddings.shape}"
            )
        mc = self.mc_probabilities
        if mc is not None and (mc.ndim != 3 or mc.shape[1:] != (count, classes)):
            raise ValueError(
                f"mc_probabilities: expected shape (T, {count}, {classes}) "
                f"(passes, samples, classes), got {mc.shape}"
            )

    def save(self, path: Path) -> None:
        """Write an .npz at `path`, atomically: a reader sees the old file or the whole new one."""
        path = Path(path)
        arrays: dict[str, Any] = {
            "format_version": np.array(SCORES_FORMAT_VERSION),
            "sample_ids": np.array(self.sample_ids, dtype=np.str_),
            "paths": np.array(self.paths, dtype=np.str_),
            "classes": np.array(self.classes, dtype=np.str_),
            "probabilities": self.probabilities,
            "embeddings": self.embeddings,
            "skipped": np.array(self.skipped, dtype=np.str_).reshape(len(self.skipped), 2),
        }
        if self.mc_probabilities is not None:
            arrays["mc_probabilities"] = self.mc_probabilities
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> PoolScores:
        """Read a file written by `save`. Raises ValueError when it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise ValueError(f"{path}: no such scores file") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a scores file ({SCORES_FILE}): {exc}") from None
        required = {
            "format_version", "sample_ids", "paths", "classes", "probabilities", "embeddings",
            "skipped",
        }  # fmt: skip
        missing = sorted(required - set(arrays))
        if missing:
            raise ValueError(f"{path} is not a scores file: it lacks {', '.join(missing)}")
        version = int(arrays["format_version"])
        if version != SCORES_FORMAT_VERSION:
            raise ValueError(
                f"{path} has scores format {version}; this matrec reads {SCORES_FORMAT_VERSION}"
            )
        return cls(
            sample_ids=arrays["sample_ids"].tolist(),
            paths=arrays["paths"].tolist(),
            classes=arrays["classes"].tolist(),
            probabilities=arrays["probabilities"],
            embeddings=arrays["embeddings"],
            mc_probabilities=arrays.get("mc_probabilities"),
            skipped=[(str(p), str(r)) for p, r in arrays["skipped"].tolist()],
        )


def list_pool(pool_path: Path) -> list[tuple[str, Path]]:
    """The pool's images as (sample id, file), sorted by id.

    `pool_path` is a folder, searched recursively for images (IMAGE_EXTENSIONS; hidden files
    and folders, such as macOS's `._name.jpg` companions, are left out) whose id is the path
    relative to the folder, in POSIX form; or a manifest: a .txt with one image path per line
    (blank lines and lines starting with # are ignored), or a .csv (with a header) or .json
    (a list) with a 'path' and an optional 'id' per row (a .json row may also be a plain path
    string). A manifest row's id defaults to its path as written; relative paths are relative
    to the manifest's folder. Files are not opened here: unreadable ones are the scorer's to
    skip. Raises ValueError for a missing or empty pool, a bad manifest or a repeated id.
    """
    path = Path(pool_path).expanduser()
    if path.is_dir():
        pool = _folder_pool(path)
    elif path.is_file():
        pool = _manifest_pool(path)
    else:
        raise ValueError(
            f"pool_path {str(pool_path)!r} does not exist; give a folder of images or a "
            f"manifest ({', '.join(MANIFEST_SUFFIXES)})"
        )
    if not pool:
        raise ValueError(f"pool_path {str(pool_path)!r} holds no images")
    seen: set[str] = set()
    for sample_id, _ in pool:
        if sample_id in seen:
            raise ValueError(f"pool_path {str(pool_path)!r}: sample id {sample_id!r} is repeated")
        seen.add(sample_id)
    return sorted(pool, key=lambda item: item[0])


def _folder_pool(root: Path) -> list[tuple[str, Path]]:
    pool = []
    for file in root.rglob("*"):
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
            pool.append((relative.as_posix(), file))
    return pool


def _manifest_pool(manifest: Path) -> list[tuple[str, Path]]:
    suffix = manifest.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ValueError(
            f"pool_path {str(manifest)!r}: a manifest must be {', '.join(MANIFEST_SUFFIXES)} "
            f"(got {suffix or 'no suffix'}); or give a folder of images"
        )
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"pool_path {str(manifest)!r}: cannot read the manifest: {exc}") from None
    if suffix == ".txt":
        rows = [
            (line.strip(), line.strip())
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    elif suffix == ".csv":
        rows = _csv_rows(manifest, text)
    else:
        rows = _json_rows(manifest, text)
    return [(sample_id, _resolve(manifest, raw_path)) for sample_id, raw_path in rows]


def _csv_rows(manifest: Path, text: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise ValueError(
            f"pool_path {str(manifest)!r}: the CSV manifest needs a header with a 'path' column "
            f"(and optionally 'id'); found {reader.fieldnames or 'no header'}"
        )
    rows = []
    for line, row in enumerate(reader, start=2):
        raw_path = (row.get("path") or "").strip()
        if not raw_path:
            raise ValueError(f"pool_path {str(manifest)!r}: line {line} has an empty 'path'")
        rows.append(((row.get("id") or "").strip() or raw_path, raw_path))
    return rows


def _json_rows(manifest: Path, text: str) -> list[tuple[str, str]]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"pool_path {str(manifest)!r} is not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ValueError(
            f"pool_path {str(manifest)!r}: the JSON manifest must be a list of "
            '{"path": ..., "id": ...} objects (or path strings)'
        )
    rows = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            item = {"path": item}
        raw_path = item.get("path") if isinstance(item, dict) else None
        raw_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise ValueError(
                f"pool_path {str(manifest)!r}: item {index} needs a non-empty string 'path'"
            )
        if raw_id is not None and not isinstance(raw_id, str | int):
            raise ValueError(f"pool_path {str(manifest)!r}: item {index}'s 'id' must be a string")
        sample_id = str(raw_id).strip() if raw_id is not None else ""
        rows.append((sample_id or raw_path.strip(), raw_path.strip()))
    return rows


def _resolve(manifest: Path, raw_path: str) -> Path:
    path = Path(raw_path).expanduser()
    return path if path.is_absolute() else manifest.parent / path
