"""Batch files for an external labelling tool: export a labelling batch as CSV or JSON, fill in
the label column elsewhere, and import the labels back.

>>> from matrec.sdk import Client
>>> from matrec.sdk.labelling_files import export_batch, import_labels
>>> with Client() as client:
...     export_batch(client, "alb-0a1b2c3d4e5f", "batch.csv")
...     # ... the labelling tool fills in the label column of batch.csv ...
...     result = import_labels(client, "alb-0a1b2c3d4e5f", "batch.csv")
...     print(len(result.recorded), "recorded;", result.failed)

A file has the columns of `EXPORT_COLUMNS`; importing accepts exactly these (sample_id and label
at least). `matrec-ctl active-learning export` and `import` are built on this module. It needs
neither grpc nor protobuf: the client passed in does the talking.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from matrec.sdk.errors import CoordinatorUnavailableError, InvalidSpecError, MatrecError

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.types import LabellingBatch

#: A batch file's format: CSV (an empty label cell when unlabelled) or a JSON list (label null).
BatchFileFormat = Literal["csv", "json"]
BATCH_FILE_FORMATS: tuple[BatchFileFormat, ...] = ("csv", "json")
#: The columns of an exported batch, in order; importing accepts exactly these.
EXPORT_COLUMNS = ("sample_id", "sample_uri", "predicted_class", "score", "label")


# -- the public API ------------------------------------------------------------------------------


def export_batch(
    client: Client,
    batch_id: str,
    path: Path | str,
    format: BatchFileFormat | None = None,
) -> LabellingBatch:
    """Write batch `batch_id` to `path` for an external labelling tool and return the batch.

    `format` is "csv" or "json"; None chooses by the suffix (.json: JSON, anything else: CSV).
    The file has the columns of `EXPORT_COLUMNS`; fill in the label column and bring it back
    with `import_labels`."""
    batch = client.get_batch(batch_id)
    write_batch_file(batch, path, format)
    return batch


def write_batch_file(
    batch: LabellingBatch,
    path: Path | str,
    format: BatchFileFormat | None = None,
) -> Path:
    """Write `batch` (as `Client.get_batch` returns it) to `path`; return the path. `format` as
    in `export_batch`. An unwritable path raises OSError, which names it."""
    path = Path(path)
    chosen: BatchFileFormat = format or ("json" if path.suffix.lower() == ".json" else "csv")
    path.write_text(format_batch_file(batch, chosen))
    return path


def import_labels(
    client: Client,
    batch_id: str,
    path: Path | str,
    *,
    overwrite: bool = False,
    add_class: bool = False,
) -> ImportResult:
    """Record the labels of the batch file at `path` (CSV or JSON, as `export_batch` writes it)
    on batch `batch_id`: every row with a label; rows without one are skipped.

    The whole file is checked first: it raises InvalidSpecError, naming the file, for unknown or
    missing columns, a row without a sample id or a sample twice, and then nothing is recorded.
    Then each row is recorded on its own; a row the coordinator refuses is in `failed` with the
    reason (`overwrite` replaces a different label recorded before, `add_class` accepts classes
    the model does not know yet). An unreachable coordinator raises
    CoordinatorUnavailableError."""
    rows = read_batch_file(Path(path))
    return import_rows(client, batch_id, rows, overwrite=overwrite, add_class=add_class)


# -- writing and reading batch files -------------------------------------------------------------


@dataclass(frozen=True)
class LabelRow:
    """One row of an imported batch file. `where` says where it is (line 3, item 2)."""

    where: str
    sample_id: str
    label: str  # "" when the row has no label yet


def export_rows(batch: LabellingBatch) -> list[dict[str, Any]]:
    """One dict per candidate, with the keys of `EXPORT_COLUMNS` (label None when unlabelled)."""
    return [
        {
            "sample_id": c.sample_id,
            "sample_uri": c.sample_uri,
            "predicted_class": c.predicted_class,
            "score": c.score,
            "label": c.label,
        }
        for c in batch.candidates
    ]


def format_batch_file(batch: LabellingBatch, fmt: BatchFileFormat) -> str:
    """The batch as CSV (an empty label cell when unlabelled) or a JSON list (label null)."""
    if fmt not in BATCH_FILE_FORMATS:
        raise ValueError(f"format: expected 'csv' or 'json', got {fmt!r}")
    rows = export_rows(batch)
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "score": repr(row["score"]), "label": row["label"] or ""})
    return out.getvalue()


def _check_columns(path: Path, columns: Iterable[str]) -> None:
    present = list(columns)
    unknown = [c for c in present if c not in EXPORT_COLUMNS]
    expected = ", ".join(EXPORT_COLUMNS)
    if unknown:
        names = ", ".join(repr(c) for c in unknown)
        raise InvalidSpecError(
            str(path), f"unknown columns {names}; a batch file has the columns {expected}"
        )
    for required in ("sample_id", "label"):
        if required not in present:
            raise InvalidSpecError(
                str(path),
                f"no {required} column; a batch file has the columns {expected} "
                "(as `active-learning export` writes it)",
            )


def read_batch_file(path: Path) -> list[LabelRow]:
    """The rows of a batch file as `export` writes it: CSV, or a JSON list of objects (chosen by
    the suffix; otherwise by the first character). Raises InvalidSpecError, naming the file, for
    anything that is not such a file: unknown or missing columns, a row without a sample id, a
    sample twice. Nothing has been recorded when it raises."""
    try:
        # utf-8-sig: spreadsheets put a byte-order mark in front of the header.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidSpecError(str(path), f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidSpecError(str(path), "not a UTF-8 text file (CSV or JSON)") from None
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".csv" and text.lstrip().startswith(("[", "{"))
    )
    rows = _json_rows(path, text) if is_json else _csv_rows(path, text)
    seen: dict[str, str] = {}
    for row in rows:
        if not row.sample_id:
            raise InvalidSpecError(str(path), f"{row.where}: no sample_id")
        if row.sample_id in seen:
            raise InvalidSpecError(
                str(path),
                f"{row.where}: sample {row.sample_id!r} again (first at {seen[row.sample_id]})",
            )
        seen[row.sample_id] = row.where
    return rows


def _csv_rows(path: Path, text: str) -> list[LabelRow]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InvalidSpecError(str(path), "empty; expected a CSV header line")
    _check_columns(path, (name.strip() for name in reader.fieldnames))
    rows = []
    for record in reader:
        cells = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k is not None}
        if None in record:
            raise InvalidSpecError(str(path), f"line {reader.line_num}: more cells than columns")
        rows.append(LabelRow(f"line {reader.line_num}", cells["sample_id"], cells["label"]))
    return rows


def _json_rows(path: Path, text: str) -> list[LabelRow]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(str(path), f"invalid JSON: {exc}") from None
    if not isinstance(data, list):
        raise InvalidSpecError(str(path), "expected a JSON list of rows, as `export` writes it")
    columns: set[str] = set()
    for item in data:
        if not isinstance(item, dict):
            raise InvalidSpecError(str(path), "expected a JSON list of objects (one per sample)")
        columns.update(item)
    _check_columns(path, sorted(columns) if data else EXPORT_COLUMNS)
    rows = []
    for number, item in enumerate(data, start=1):
        values = {}
        for key in ("sample_id", "label"):
            value = item.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidSpecError(str(path), f"item {number}: {key} must be a string")
            values[key] = (value or "").strip()
        rows.append(LabelRow(f"item {number}", values["sample_id"], values["label"]))
    return rows


# -- recording the labels ------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did with each row: recorded (a new label), unchanged (the same label was
    already there), unlabelled (no label in the file: skipped) and failed, with the
    coordinator's reason."""

    recorded: list[LabelRow] = field(default_factory=list)
    unchanged: list[LabelRow] = field(default_factory=list)
    unlabelled: list[LabelRow] = field(default_factory=list)
    failed: list[tuple[LabelRow, str]] = field(default_factory=list)


def import_rows(
    client: Client,
    batch_id: str,
    rows: Sequence[LabelRow],
    *,
    overwrite: bool,
    add_class: bool,
) -> ImportResult:
    """Record the label of every row that has one. A row the coordinator refuses (unknown
    sample, unknown class, a different label already there) is a failure with its reason; the
    other rows are still recorded. An unreachable coordinator stops the import."""
    result = ImportResult()
    for row in rows:
        if not row.label:
            result.unlabelled.append(row)
            continue
        try:
            _, changed = client.record_feedback(
                batch_id, row.sample_id, row.label, overwrite=overwrite, add_class=add_class
            )
        except CoordinatorUnavailableError:
            raise
        except MatrecError as exc:
            result.failed.append((row, str(exc)))
            continue
        (result.recorded if changed else result.unchanged).append(row)
    return result
