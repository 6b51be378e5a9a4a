"""Thumbnails of labelling-batch candidates for the dashboard. The image is found from the
batch's own record (a request names a batch and a sample, never a path) and must lie inside
the project's pool folder (a manifest's folder for a manifest pool), symbolic links resolved;
anything else is refused. Pillow only: the coordinator stays free of any ML framework."""

from __future__ import annotations

import io
from pathlib import Path

from matrec.coordinator.active_learning.store import ActiveLearningStore

DEFAULT_SIDE = 160
MAX_SIDE = 512


class SampleImageError(Exception):
    """`kind`: not_found | outside_pool | unreadable."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def pool_root(pool_path: str) -> Path:
    """The folder a pool's images must lie in: the pool folder, or a manifest's folder."""
    path = Path(pool_path).expanduser()
    return (path if path.is_dir() else path.parent).resolve()


def sample_image_path(store: ActiveLearningStore, batch_id: str, sample_id: str) -> Path:
    batch = store.get_batch(batch_id)
    if batch is None:
        raise SampleImageError("not_found", f"batch {batch_id!r} not found")
    candidate = next((c for c in batch.candidates if c.sample_id == sample_id), None)
    if candidate is None:
        raise SampleImageError("not_found", f"batch {batch_id} has no sample {sample_id!r}")
    project = store.get_project(batch.project_id)
    if project is None:
        raise SampleImageError("not_found", f"project {batch.project_id!r} not found")
    root = pool_root(project.spec.pool_path)
    path = Path(candidate.sample_uri).expanduser().resolve()
    if not path.is_relative_to(root):
        raise SampleImageError(
            "outside_pool",
            f"sample {sample_id!r} is not inside the project's pool folder {root}; "
            "only pool images are served",
        )
    return path


def thumbnail_png(path: Path, max_side: int) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.thumbnail((max_side, max_side))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
            return out.getvalue()
    except FileNotFoundError:
        raise SampleImageError(
            "unreadable",
            f"the coordinator cannot see {path}: the pool is on another host (the dashboard "
            "shows thumbnails only where the coordinator can read the pool)",
        ) from None
    except (OSError, UnidentifiedImageError) as exc:
        raise SampleImageError("unreadable", f"{path} is not a readable image: {exc}") from None
