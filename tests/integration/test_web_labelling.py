"""The dashboard's labelling page in a real browser against a real coordinator and agent: a
project made from a tiny fine-tune scores a pool; its batch is labelled with the keyboard; the
labels are in the store, a repeated label changes nothing, a conflicting one is refused with a
message on the page, the feedback trigger fires as with the CLI; thumbnails come through the
coordinator, and an image outside the pool (a symbolic link out of it) is refused."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from matrec.sdk import Client
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from matrec.sdk.errors import MatrecError
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import LabellingBatch
from playwright.sync_api import Browser, expect
from support.browser import (
    Tab,
    dashboard,
    readme_screenshot,
    screenshots_on_failure,
)
from support.cluster_jobs import finetune_spec

pytestmark = pytest.mark.slow

THRESHOLD = 4
OUTSIDE = "zz-outside.png"


def truth(sample_id: str) -> str:
    """Pool images are named <class>-<file>: the label a person would give."""
    return sample_id.split("-", 1)[0]


@dataclass
class Labelling:
    cluster: LocalCluster
    base: str
    project_id: str
    classes: list[str]
    batch: LabellingBatch


@pytest.fixture(scope="module")
def labelling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labelling]:
    root = tmp_path_factory.mktemp("web-al")
    dataset: DemoDatasetInfo = make_demo_dataset(
        root / "demo", seed=0, patch_size=32, train_per_class=8, val_per_class=3
    )
    pool = root / "pool"
    pool.mkdir()
    for folder in sorted((dataset.path / "val").iterdir()):
        for image in sorted(folder.glob("*.png"))[:2]:
            shutil.copy(image, pool / f"{folder.name}-{image.name}")
    # An image the pool links to but that lies outside it: never to be served.
    outside = root / "private" / "secret.png"
    outside.parent.mkdir()
    shutil.copy(next((dataset.path / "val").rglob("*.png")), outside)
    (pool / OUTSIDE).symlink_to(outside)
    with LocalCluster(
        root / "cluster", agents=1, agent_cpus=2,
        coordinator_args=["--trigger-check-interval", "3600"],
    ) as cluster, cluster.client() as client:  # fmt: skip
        model = client.wait(client.submit_job(finetune_spec(dataset, epochs=1)).id, 240)
        assert model.state == "succeeded", model.error
        project = client.create_learning_project(
            {
                "name": "web-labelling", "dataset_path": str(dataset.path),
                "pool_path": str(pool), "model_job_id": model.id, "strategy": "margin",
                "triggers": {"feedback_threshold": THRESHOLD, "drift": False},
                "retrain": {"epochs": 1},
            }
        )  # fmt: skip
        scored = client.wait(project.pool_scoring_job_id, 180)
        assert scored.state == "succeeded", scored.error
        batch = client.select_samples(project.id, 13)
        classes = client.get_learning_project(project.id).classes
        with dashboard(cluster.address, log=root / "ui.log") as base:
            yield Labelling(cluster, base, project.id, classes, batch)


def test_thumbnails_come_through_the_coordinator_and_only_from_the_pool(
    labelling: Labelling,
) -> None:
    batch = labelling.batch
    inside = next(c for c in batch.candidates if c.sample_id != OUTSIDE)
    assert any(c.sample_id == OUTSIDE for c in batch.candidates)
    with Client(labelling.cluster.address) as client:
        png = client.sample_image(batch.id, inside.sample_id)
        assert png.startswith(b"\x89PNG")
        with pytest.raises(MatrecError) as refused:
            client.sample_image(batch.id, OUTSIDE)
        assert refused.value.code == "PERMISSION_DENIED"
        assert "pool" in str(refused.value)
    with httpx.Client(base_url=labelling.base) as http:
        image = http.get(f"/labelling/{batch.id}/images/{inside.sample_id}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert http.get(f"/labelling/{batch.id}/images/{OUTSIDE}").status_code == 403
        # A path is never a sample: there is no such candidate.
        traversal = http.get(f"/labelling/{batch.id}/images/..%2F..%2Fetc%2Fpasswd")
        assert traversal.status_code == 404


def test_a_batch_is_labelled_with_the_keyboard(
    labelling: Labelling, browser: Browser, tmp_path: Path
) -> None:
    batch = labelling.batch
    tab = Tab.open(browser)
    tabs = {"labelling": tab}
    page = tab.page
    order = [c.sample_id for c in batch.candidates]
    labelled = [s for s in order if s != OUTSIDE][:THRESHOLD]
    try:
        with screenshots_on_failure(tmp_path, tabs):
            # From the project list to the project, its batch and the labelling page.
            page.goto(f"{labelling.base}/projects")
            page.click(f"#project-links a[href='/projects/{labelling.project_id}']")
            assert page.locator("#versions tbody tr").count() == 1
            with page.expect_navigation():
                page.click(f"#batches a[href='/labelling/{batch.id}']")
            sizes = page.eval_on_selector_all(
                "#candidates img", "images => images.map(i => [i.alt, i.naturalWidth])"
            )
            assert all(width > 0 for alt, width in sizes if alt != OUTSIDE), sizes
            # The refused thumbnail is the one console error the page may show.
            tab.errors = [e for e in tab.errors if "403" not in e]

            for count, sample in enumerate(labelled, 1):
                index = order.index(sample)
                while (
                    page.evaluate("document.querySelector('.candidate.selected').dataset.sampleId")
                    != sample
                ):
                    page.keyboard.press("j" if order.index(_selected(page)) < index else "k")
                key = str(labelling.classes.index(truth(sample)) + 1)
                page.keyboard.press(key)
                expect(page.locator("#progress")).to_have_text(re.compile(rf"^{count} of "))
            with Client(labelling.cluster.address) as client:
                stored = {c.sample_id: c.label for c in client.get_batch(batch.id).candidates}
            assert {s: stored[s] for s in labelled} == {s: truth(s) for s in labelled}

            # The same label again: nothing changes.
            page.click(f".candidate[data-sample-id='{labelled[0]}'] img")
            page.keyboard.press(str(labelling.classes.index(truth(labelled[0])) + 1))
            expect(page.locator("#label-message")).to_have_text(re.compile("^unchanged"))
            # A different one without Shift: refused, with the coordinator's reason on the page.
            page.click(f".candidate[data-sample-id='{labelled[0]}'] img")
            other = next(c for c in labelling.classes if c != truth(labelled[0]))
            page.keyboard.press(str(labelling.classes.index(other) + 1))
            expect(page.locator("#label-message")).to_have_text(re.compile("^refused"))
            assert "overwrite" in page.inner_text("#label-message")
            readme_screenshot(page, "labelling")
            with Client(labelling.cluster.address) as client:
                assert client.get_batch(batch.id).labelled == THRESHOLD
                fired = client.check_triggers(labelling.project_id)
            assert [t.kind for t in fired] == ["feedback_count"]
            page.goto(f"{labelling.base}/projects/{labelling.project_id}")
            triggers = page.eval_on_selector_all(
                "#triggers tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)"
            )
            assert triggers == ["feedback_count"]
            # The refused label's 409 is the page's answer, not an error of the page.
            tab.errors = [e for e in tab.errors if "409" not in e]
    finally:
        tab.close()


def _selected(page: object) -> str:
    return str(
        page.evaluate(  # type: ignore[attr-defined]
            "document.querySelector('.candidate.selected').dataset.sampleId"
        )
    )
