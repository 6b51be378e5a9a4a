"""Batch files without a cluster: export → fill in → read back, the checks that refuse a bad file
(naming it), and how an import sorts its rows. The client is a small stand-in that records
feedback the way the coordinator answers it."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from matrec.sdk.errors import CoordinatorUnavailableError, InvalidSpecError, MatrecError
from matrec.sdk.labelling_files import (
    EXPORT_COLUMNS,
    LabelRow,
    export_batch,
    export_rows,
    format_batch_file,
    import_labels,
    read_batch_file,
    write_batch_file,
)
from matrec.sdk.types import Candidate, LabellingBatch

if TYPE_CHECKING:
    from matrec.sdk.client import Client

LABELLED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _candidate(sample_id: str, predicted: str, score: float, label: str | None) -> Candidate:
    return Candidate(
        sample_id=sample_id,
        sample_uri=f"/pool/{sample_id}",
        score=score,
        scores={"entropy": score, "margin": 1 - score},
        predicted_class=predicted,
        label=label,
        labelled_at=LABELLED_AT if label else None,
    )


@pytest.fixture
def batch() -> LabellingBatch:
    candidates = [
        _candidate("oak/img_1.png", "wood", 0.912345678901, None),
        _candidate("steel, brushed/img 2.png", "metal", 0.5, "metal"),
        _candidate('quote"d.png', "fur", 1e-7, None),
    ]
    return LabellingBatch(
        id="alb-0a1b2c3d4e5f",
        project_id="alp-5d1e2f3a4b6c",
        strategy="entropy",
        state="partially_labelled",
        scoring_job_id="job-1",
        created_at=LABELLED_AT,
        closed_at=None,
        candidates=candidates,
        labelled=1,
        size=len(candidates),
    )


def _expected_rows(batch: LabellingBatch, where: str) -> list[LabelRow]:
    return [
        LabelRow(f"{where} {number}", c.sample_id, c.label or "")
        for number, c in enumerate(batch.candidates, start=2 if where == "line" else 1)
    ]


def test_csv_round_trip(tmp_path: Path, batch: LabellingBatch) -> None:
    path = tmp_path / "batch.csv"
    path.write_text(format_batch_file(batch, "csv"))

    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [list(r) for r in records] == [list(EXPORT_COLUMNS)] * len(batch.candidates)
    # The score survives to the last digit; an unlabelled sample has an empty label cell.
    assert [float(r["score"]) for r in records] == [c.score for c in batch.candidates]
    assert [r["label"] for r in records] == [c.label or "" for c in batch.candidates]

    assert read_batch_file(path) == _expected_rows(batch, "line")


def test_json_round_trip(tmp_path: Path, batch: LabellingBatch) -> None:
    path = tmp_path / "batch.json"
    path.write_text(format_batch_file(batch, "json"))

    items = json.loads(path.read_text())
    assert items == export_rows(batch)
    assert [item["label"] for item in items] == [None, "metal", None]

    assert read_batch_file(path) == _expected_rows(batch, "item")


def test_labels_filled_in_elsewhere_are_read(tmp_path: Path, batch: LabellingBatch) -> None:
    path = tmp_path / "batch.csv"
    path.write_text(format_batch_file(batch, "csv"))
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    records[0]["label"] = "  wood "
    # A spreadsheet saves with a byte-order mark and CRLF line ends.
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(records)

    rows = read_batch_file(path)
    assert [(r.sample_id, r.label) for r in rows] == [
        ("oak/img_1.png", "wood"),
        ("steel, brushed/img 2.png", "metal"),
        ('quote"d.png', ""),
    ]


def test_write_batch_file_chooses_the_format_by_suffix(
    tmp_path: Path, batch: LabellingBatch
) -> None:
    as_json = write_batch_file(batch, str(tmp_path / "batch.JSON"))
    as_csv = write_batch_file(batch, tmp_path / "batch.txt")
    forced = write_batch_file(batch, tmp_path / "forced.txt", "json")

    assert json.loads(as_json.read_text()) == export_rows(batch)
    assert as_csv.read_text().splitlines()[0] == ",".join(EXPORT_COLUMNS)
    assert json.loads(forced.read_text()) == export_rows(batch)
    # Without a .csv/.json suffix, reading goes by the first character.
    assert read_batch_file(forced) == _expected_rows(batch, "item")
    assert read_batch_file(as_csv) == _expected_rows(batch, "line")


def test_an_unknown_format_is_refused(batch: LabellingBatch) -> None:
    with pytest.raises(ValueError, match="format: expected 'csv' or 'json', got 'xlsx'"):
        format_batch_file(batch, cast(Any, "xlsx"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "extra.csv",
            "sample_id,label,colour\na.png,wood,red\n",
            "unknown columns 'colour'; a batch file has the columns sample_id, sample_uri",
        ),
        ("no_label.csv", "sample_id,score\na.png,0.5\n", "no label column"),
        ("no_id.csv", "sample_uri,label\n/pool/a.png,wood\n", "no sample_id column"),
        ("empty.csv", "", "empty; expected a CSV header line"),
        ("blank_id.csv", "sample_id,label\na.png,wood\n ,fur\n", "line 3: no sample_id"),
        (
            "twice.csv",
            "sample_id,label\na.png,wood\nb.png,\na.png,fur\n",
            "line 4: sample 'a.png' again (first at line 2)",
        ),
        ("ragged.csv", "sample_id,label\na.png,wood,extra\n", "line 2: more cells than columns"),
        ("object.json", '{"sample_id": "a.png", "label": "wood"}', "expected a JSON list of rows"),
        ("scalars.json", '["a.png"]', "expected a JSON list of objects"),
        ("broken.json", '[{"sample_id": "a.png",', "invalid JSON"),
        (
            "extra.json",
            '[{"sample_id": "a.png", "label": "wood", "colour": "red"}]',
            "unknown columns 'colour'",
        ),
        ("no_id.json", '[{"label": "wood"}]', "no sample_id column"),
        ("number.json", '[{"sample_id": "a.png", "label": 3}]', "item 1: label must be a string"),
        (
            "twice.json",
            '[{"sample_id": "a.png", "label": null}, {"sample_id": "a.png", "label": "x"}]',
            "item 2: sample 'a.png' again (first at item 1)",
        ),
        (
            "no_id_value.json",
            '[{"sample_id": "a.png", "label": "x"}, {"sample_id": null, "label": "y"}]',
            "item 2: no sample_id",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_it(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(InvalidSpecError) as raised:
        read_batch_file(path)
    assert raised.value.field == str(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_unreadable_files_are_refused_naming_them(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    with pytest.raises(InvalidSpecError, match="cannot read it") as raised:
        read_batch_file(missing)
    assert raised.value.field == str(missing)

    binary = tmp_path / "batch.csv"
    binary.write_bytes(b"sample_id,label\n\xff\xfe,wood\n")
    with pytest.raises(InvalidSpecError, match="not a UTF-8 text file") as raised:
        read_batch_file(binary)
    assert raised.value.field == str(binary)


class FakeClient:
    """Records feedback as the coordinator does: the same label again is unchanged, a different
    one needs overwrite, an unknown class needs add_class, an unknown sample is refused."""

    def __init__(self, batch: LabellingBatch, classes: set[str]) -> None:
        self.batch = batch
        self.classes = classes
        self.labels = {c.sample_id: c.label for c in batch.candidates}
        self.calls: list[tuple[str, str, str]] = []
        self.unavailable = False

    def as_client(self) -> Client:
        """This stand-in, typed as what the functions take (it has the two methods they use)."""
        return cast("Client", self)

    def get_batch(self, batch_id: str) -> LabellingBatch:
        assert batch_id == self.batch.id
        return self.batch

    def record_feedback(
        self, batch_id: str, sample_id: str, label: str, *, overwrite: bool, add_class: bool
    ) -> tuple[None, bool]:
        self.calls.append((batch_id, sample_id, label))
        if self.unavailable:
            raise CoordinatorUnavailableError("no coordinator at 127.0.0.1:1")
        if sample_id not in self.labels:
            raise MatrecError(f"sample {sample_id!r} is not in batch {batch_id}")
        if label not in self.classes and not add_class:
            raise InvalidSpecError("label", f"unknown class {label!r}; pass add_class to add it")
        recorded = self.labels[sample_id]
        if recorded == label:
            return None, False
        if recorded is not None and not overwrite:
            raise MatrecError(f"already labelled {recorded!r}; pass overwrite to replace it")
        self.labels[sample_id] = label
        return None, True


def test_export_then_import_sorts_every_row(tmp_path: Path, batch: LabellingBatch) -> None:
    client = FakeClient(batch, classes={"wood", "metal", "fur"})
    path = tmp_path / "batch.csv"
    exported = export_batch(client.as_client(), batch.id, path)
    assert exported is batch

    lines = path.read_text().splitlines()
    # oak: labelled now; steel: the same label again; quote"d: still unlabelled; one unknown.
    lines[1] = lines[1].removesuffix(",") + ",wood"
    lines.append("ghost.png,,,,fur")
    path.write_text("\n".join(lines) + "\n")

    result = import_labels(client.as_client(), batch.id, path)

    assert [r.sample_id for r in result.recorded] == ["oak/img_1.png"]
    assert [r.sample_id for r in result.unchanged] == ["steel, brushed/img 2.png"]
    assert [r.sample_id for r in result.unlabelled] == ['quote"d.png']
    assert [(r.sample_id, reason) for r, reason in result.failed] == [
        ("ghost.png", f"sample 'ghost.png' is not in batch {batch.id}")
    ]
    # Rows without a label are never sent.
    assert [call[1] for call in client.calls] == [
        "oak/img_1.png",
        "steel, brushed/img 2.png",
        "ghost.png",
    ]
    assert client.labels["oak/img_1.png"] == "wood"


def test_import_passes_overwrite_and_add_class(tmp_path: Path, batch: LabellingBatch) -> None:
    path = _write(
        tmp_path / "labels.json",
        json.dumps(
            [
                {"sample_id": "steel, brushed/img 2.png", "label": "wood"},
                {"sample_id": "oak/img_1.png", "label": "cork"},
            ]
        ),
    )
    refused = import_labels(FakeClient(batch, {"wood", "metal"}).as_client(), batch.id, path)
    assert [reason for _, reason in refused.failed] == [
        "already labelled 'metal'; pass overwrite to replace it",
        "label: unknown class 'cork'; pass add_class to add it",
    ]

    client = FakeClient(batch, {"wood", "metal"})
    accepted = import_labels(client.as_client(), batch.id, path, overwrite=True, add_class=True)
    assert len(accepted.recorded) == 2 and not accepted.failed
    assert client.labels["steel, brushed/img 2.png"] == "wood"
    assert client.labels["oak/img_1.png"] == "cork"


def test_a_bad_file_records_nothing(tmp_path: Path, batch: LabellingBatch) -> None:
    path = _write(tmp_path / "batch.csv", "sample_id,label\noak/img_1.png,wood\noak/img_1.png,\n")
    client = FakeClient(batch, {"wood"})
    with pytest.raises(InvalidSpecError, match="again"):
        import_labels(client.as_client(), batch.id, path)
    assert client.calls == []


def test_an_unreachable_coordinator_stops_the_import(tmp_path: Path, batch: LabellingBatch) -> None:
    path = _write(tmp_path / "batch.csv", "sample_id,label\noak/img_1.png,wood\na.png,fur\n")
    client = FakeClient(batch, {"wood", "fur"})
    client.unavailable = True
    with pytest.raises(CoordinatorUnavailableError):
        import_labels(client.as_client(), batch.id, path)
    assert len(client.calls) == 1
