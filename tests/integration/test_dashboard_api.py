"""DashboardService.QueryJobs through the SDK against a real coordinator, on SQLite and
PostgreSQL: filters, orders and pages 500 seeded jobs as computed here from the seeded records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from matrec.sdk import Client
from matrec.sdk.errors import InvalidSpecError
from matrec.sdk.job_pages import JobPageQuery
from matrec.sdk.local_cluster import LocalCluster
from support.seed_jobs import FIRST_DAY, SEED_PREFIX, SeededJob, seed_jobs

COUNT = 500


@pytest.fixture
def seeded(database_url: str, tmp_path: Path) -> Iterator[tuple[Client, list[SeededJob]]]:
    jobs = seed_jobs(database_url, COUNT, tmp_path / "artifacts")
    with (
        LocalCluster(tmp_path / "cluster", agents=0, database_url=database_url) as cluster,
        cluster.client() as client,
    ):
        yield client, jobs


def _ids(client: Client, query: JobPageQuery) -> list[str]:
    return [job.id for job in client.query_jobs(query).jobs]


def test_query_jobs_filters_sorts_and_pages(seeded: tuple[Client, list[SeededJob]]) -> None:
    client, jobs = seeded
    everything = client.query_jobs(JobPageQuery(page_size=1))
    assert everything.total == COUNT

    failed = [j for j in jobs if j.state == "failed" and j.kind == "finetune"]
    page = client.query_jobs(JobPageQuery(states=("failed",), kind="finetune", page_size=500))
    assert page.total == len(failed)
    assert {j.id for j in page.jobs} == {j.id for j in failed}

    by_name = sorted(jobs, key=lambda j: j.name)
    query = JobPageQuery(sort="name", descending=False, offset=100, page_size=50)
    assert _ids(client, query) == [j.id for j in by_name[100:150]]

    scored = sorted((j for j in jobs if j.val_accuracy is not None), key=lambda j: -j.val_accuracy)
    best = _ids(client, JobPageQuery(sort="val_accuracy", descending=True, page_size=20))
    assert best == [j.id for j in scored[:20]]
    # Jobs without an accuracy come after every scored one, ascending too.
    query = JobPageQuery(sort="val_accuracy", descending=False, page_size=500)
    ascending = client.query_jobs(query)
    values = [j.result.get("val_accuracy") for j in ascending.jobs]
    assert values[: len(scored)] == sorted(j.val_accuracy for j in scored)
    assert all(v is None for v in values[len(scored) :])

    start, end = FIRST_DAY + timedelta(days=10), FIRST_DAY + timedelta(days=20)
    window = [j for j in jobs if start <= j.created_at < end]
    query = JobPageQuery(created_after=start, created_before=end, page_size=500)
    assert set(_ids(client, query)) == {j.id for j in window}
    newest = sorted(window, key=lambda j: j.created_at, reverse=True)[:5]
    assert _ids(client, JobPageQuery(created_after=start, created_before=end, page_size=5)) == [
        j.id for j in newest
    ]

    named = [j for j in jobs if "0042" in j.name]
    assert _ids(client, JobPageQuery(name_contains="0042")) == [j.id for j in named]
    assert client.query_jobs(JobPageQuery(name_contains="SEED-00")).total == 100
    # LIKE's wildcards are literal characters in a name filter.
    assert client.query_jobs(JobPageQuery(name_contains="_")).total == 0
    assert client.query_jobs(JobPageQuery(name_contains="%")).total == 0
    assert client.query_jobs(JobPageQuery(labels={"seeded": "yes"})).total == COUNT
    assert client.query_jobs(JobPageQuery(labels={"seeded": "no"})).total == 0
    assert all(j.name.startswith(SEED_PREFIX) for j in everything.jobs)


def test_query_jobs_refuses_bad_requests(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, agents=0) as cluster, cluster.client() as client:
        _refuses_bad_requests(client)


def _refuses_bad_requests(client: Client) -> None:
    with pytest.raises(InvalidSpecError) as too_big:
        client.query_jobs(JobPageQuery(page_size=501))
    assert too_big.value.field == "page_size"
    with pytest.raises(InvalidSpecError) as negative:
        client.query_jobs(JobPageQuery(offset=-1))
    assert negative.value.field == "offset"
    with pytest.raises(InvalidSpecError) as sort:
        client.query_jobs(JobPageQuery(sort="owner"))
    assert sort.value.field == "sort"
