"""The web dashboard in a real browser (Playwright driving Debian's Chromium) against a real
coordinator started with --auth and a real agent, the dashboard run as `matrec-ctl ui --auth`:
a fine-tune's curves grow on its page without a reload and its final numbers are `get_job`'s;
the runs list filters, sorts and pages 500 seeded jobs as computed here from the seeded records;
cancel works for an operator and is refused for a viewer; no page logs a console error; a
failing test leaves screenshots of its pages in its tmp_path. Security: nothing without a
token, cross-site POSTs refused, a job named like a script renders as text, CSP on every
response."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from matrec.sdk import Client
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from playwright.sync_api import Browser, expect
from support.browser import (
    Tab,
    dashboard,
    readme_screenshot,
    screenshots_on_failure,
)
from support.cluster_jobs import finetune_spec, wait_until
from support.seed_jobs import SeededJob, seed_jobs
from support.seed_studies import SeededStudy, seed_study

pytestmark = pytest.mark.slow

SEEDED = 500
STUDY_TRIALS = 300
SCRIPT_NAME = "<script>alert(1)</script>"


def long_diagnostic(name: str) -> dict[str, Any]:
    """A job that runs for two minutes unless cancelled."""
    return {"kind": "diagnostic", "name": name, "config": {"duration_seconds": 120, "steps": 100}}


class Site:
    def __init__(self, cluster: LocalCluster, base: str, tokens: dict[str, str]) -> None:
        self.cluster = cluster
        self.base = base
        self.tokens = tokens
        self.seeded: list[SeededJob] = []
        self.study = SeededStudy("", [])

    def client(self, role: str) -> Client:
        return Client(self.cluster.address, token=self.tokens[role])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web")
    database = f"sqlite:///{root / 'matrec.db'}"
    seeded = seed_jobs(database, SEEDED, root / "cluster" / "artifacts")
    study = seed_study(database, STUDY_TRIALS, root / "cluster" / "artifacts")
    admin_file = root / "admin.token"
    args = ["--auth", "--admin-token-file", str(admin_file)]
    with LocalCluster(
        root / "cluster", agents=0, database_url=database, coordinator_args=args
    ) as cluster:
        admin = admin_file.read_text().strip()
        tokens = {"admin": admin}
        with Client(cluster.address, token=admin) as client:
            for role in ("viewer", "operator"):
                tokens[role] = client.create_token(f"web-{role}", role)[1]
            agent_token = client.create_token(cluster.agent_name(0), "agent")[1]
        cluster.agent_args = ["--token", agent_token]
        cluster.start_agent(0)
        with Client(cluster.address, token=admin) as client:
            wait_until(
                lambda: [a.state for a in client.list_agents()] == ["connected"], 60, "the agent"
            )
        with dashboard(cluster.address, "--auth", log=root / "ui.log") as base:
            site = Site(cluster, base, tokens)
            site.seeded = seeded
            site.study = study
            yield site


@pytest.fixture
def tabs(browser: Browser) -> Iterator[dict[str, Tab]]:
    opened: dict[str, Tab] = {}
    yield opened
    for tab in opened.values():
        tab.close()


def signed_in(browser: Browser, tabs: dict[str, Tab], site: Site, role: str) -> Tab:
    tab = Tab.open(browser)
    tabs[role] = tab
    tab.sign_in(site.base, site.tokens[role])
    return tab


# ---- security -----------------------------------------------------------------------------


def test_nothing_without_a_token_and_csp_everywhere(site: Site) -> None:
    with httpx.Client(base_url=site.base) as http:
        for path in ("/runs", "/cluster", f"/runs/{site.seeded[0].id}", "/runs/x/events"):
            response = http.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/login"
            assert "default-src 'none'" in response.headers["content-security-policy"]
        login = http.get("/login")
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert http.get("/static/run.js").headers["content-security-policy"] == csp
        wrong = http.post(
            "/login",
            data={"token": "mtk_not-a-token", "csrf": http.cookies["matrec_csrf"]},
            headers={"origin": site.base},
        )
        assert wrong.status_code == 401 and "matrec_token" not in http.cookies
        assert http.get("/runs").status_code == 303
        # A token cookie forged by hand is judged by the coordinator, not trusted.
        http.cookies.set("matrec_token", "mtk_forged")
        assert http.get("/runs").headers["location"] == "/login"


def test_cross_site_posts_are_refused(site: Site) -> None:
    with site.client("operator") as operator:
        job = operator.submit_job(long_diagnostic("csrf-target"))
    with httpx.Client(base_url=site.base) as http:
        http.get("/login")
        csrf = http.cookies["matrec_csrf"]
        signed = http.post(
            "/login",
            data={"token": site.tokens["operator"], "csrf": csrf},
            headers={"origin": site.base},
        )
        assert signed.status_code == 303, signed.text
        cancel = f"/runs/{job.id}/cancel"
        foreign = http.post(cancel, data={"csrf": csrf}, headers={"origin": "http://evil.test"})
        assert foreign.status_code == 403 and "cross-site" in foreign.text
        missing = http.post(cancel, data={}, headers={"origin": site.base})
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = http.post(cancel, data={"csrf": "guess"}, headers={"origin": site.base})
        assert wrong.status_code == 403
        no_origin = http.post(cancel, data={"csrf": csrf})
        assert no_origin.status_code == 403
        with site.client("operator") as operator:
            assert operator.get_job(job.id).state in ("queued", "running")
            operator.cancel_job(job.id)


def test_a_cross_site_form_in_the_browser_cancels_nothing(
    site: Site, browser: Browser, tabs: dict[str, Tab], tmp_path: Path
) -> None:
    with site.client("operator") as operator:
        job = operator.submit_job(long_diagnostic("csrf-browser"))
    page_html = (
        f'<form method="post" action="{site.base}/runs/{job.id}/cancel">'
        '<input name="csrf" value="guess"><button id="go">go</button></form>'
    ).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args: Any) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        tab = signed_in(browser, tabs, site, "operator")
        with screenshots_on_failure(tmp_path, {}):
            tab.page.goto(f"http://127.0.0.2:{evil.server_address[1]}/")
            with tab.page.expect_navigation() as navigation:
                tab.page.click("#go")
            response = navigation.value
            assert response is not None and response.status == 403
            with site.client("operator") as operator:
                assert operator.get_job(job.id).state in ("queued", "running")
                operator.cancel_job(job.id)
    finally:
        evil.shutdown()


def test_a_job_named_like_a_script_renders_as_text(
    site: Site, browser: Browser, tabs: dict[str, Tab], tmp_path: Path
) -> None:
    with site.client("operator") as operator:
        job = operator.submit_job(
            {"kind": "diagnostic", "name": SCRIPT_NAME, "config": {"duration_seconds": 0.1}}
        )
        operator.wait(job.id, timeout=60)
    tab = signed_in(browser, tabs, site, "viewer")
    with screenshots_on_failure(tmp_path, tabs):
        tab.page.goto(f"{site.base}/runs?name=alert")
        assert tab.page.inner_text(f"tr[data-job-id='{job.id}'] td.name") == SCRIPT_NAME
        tab.page.goto(f"{site.base}/runs/{job.id}")
        assert tab.page.inner_text("#run-name") == SCRIPT_NAME
        assert SCRIPT_NAME in tab.page.inner_text("#spec")
        expect(tab.page.locator("#stream-state")).to_have_text("finished", timeout=30_000)
        tab.page.goto(f"{site.base}/cluster")
        assert tab.page.locator("script:not([src])").count() == 0
        # screenshots_on_failure also fails the test if an alert() dialog opened.


# ---- runs ---------------------------------------------------------------------------------


def _row_ids(tab: Tab) -> list[str]:
    return tab.page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.jobId)")


def test_runs_list_filters_sorts_and_pages_seeded_jobs(
    site: Site, browser: Browser, tabs: dict[str, Tab], tmp_path: Path
) -> None:
    tab = signed_in(browser, tabs, site, "viewer")
    page = tab.page
    with screenshots_on_failure(tmp_path, tabs):
        page.goto(f"{site.base}/runs?name=seed-&size=50")
        assert page.inner_text("#run-count") == f"1-50 of {SEEDED}"
        readme_screenshot(page, "runs")
        newest = sorted(site.seeded, key=lambda j: j.created_at, reverse=True)
        assert _row_ids(tab) == [j.id for j in newest[:50]]

        page.select_option("select[name=state]", "succeeded")
        page.fill("input[name=kind]", "finetune")
        with page.expect_navigation():
            page.click("#run-filters button[type=submit]")
        wanted = [j for j in site.seeded if j.state == "succeeded" and j.kind == "finetune"]
        assert page.inner_text("#run-count") == f"1-{min(50, len(wanted))} of {len(wanted)}"

        with page.expect_navigation():
            page.click("a.sort[data-sort=val_accuracy]")
        best = sorted(wanted, key=lambda j: j.val_accuracy or 0.0, reverse=True)
        assert _row_ids(tab) == [j.id for j in best[:50]]
        with page.expect_navigation():
            page.click("a.sort[data-sort=val_accuracy]")
        assert _row_ids(tab) == [j.id for j in reversed(best)][:50]
        shown = page.eval_on_selector_all(
            "#runs tbody td.val-acc", "cells => cells.map(c => parseFloat(c.textContent))"
        )
        assert shown == sorted(shown)

        with page.expect_navigation():
            page.click("#next-page")
        assert _row_ids(tab) == [j.id for j in reversed(best)][50:100]
        assert page.input_value("input[name=kind]") == "finetune"

        page.goto(
            f"{site.base}/runs?name=seed-&sort=name&order=asc&after=2026-09-10&before=2026-09-19"
        )
        window = [
            j
            for j in site.seeded
            if "2026-09-10" <= j.created_at.date().isoformat() <= "2026-09-19"
        ]
        by_name = sorted(window, key=lambda j: j.name)
        assert page.inner_text("#run-count") == f"1-50 of {len(window)}"
        assert _row_ids(tab) == [j.id for j in by_name[:50]]


def test_a_runs_page_shows_the_curves_growing_then_the_final_numbers(
    site: Site,
    browser: Browser,
    tabs: dict[str, Tab],
    tmp_path: Path,
    small_dataset: DemoDatasetInfo,
) -> None:
    with site.client("operator") as operator:
        job = operator.submit_job(finetune_spec(small_dataset, 4))
    tab = signed_in(browser, tabs, site, "viewer")
    page = tab.page
    with screenshots_on_failure(tmp_path, tabs):
        page.goto(f"{site.base}/runs/{job.id}")
        page.evaluate("window.loadedOnce = true")
        counts: list[int] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = page.inner_text("#run-state")
            count = int(page.inner_text("#point-count"))
            if state == "running" and (not counts or count > counts[-1]):
                counts.append(count)
            if state in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.3)
        assert page.inner_text("#run-state") == "succeeded"
        assert len(counts) >= 3, f"the page showed only these point counts while running: {counts}"
        assert page.evaluate("window.loadedOnce") is True, "the page was reloaded"
        expect(page.locator("#stream-state")).to_have_text("finished", timeout=30_000)

        with site.client("viewer") as viewer:
            final = viewer.get_job(job.id)
            stored = viewer.job_metrics(job.id)
        assert int(page.inner_text("#point-count")) == len(stored)
        for key in ("val_accuracy", "val_loss", "macro_f1"):
            if key in final.result:
                cell = page.locator(f"#final td[data-key={key}]")
                assert float(cell.get_attribute("data-value") or "nan") == final.result[key]
        assert page.locator("#chart-loss canvas").count() == 1
        assert page.locator("#chart-accuracy canvas").count() == 1

        page.reload()  # the evaluation and artifacts are rendered with the page
        assert page.locator("#confusion tbody tr").count() == len(small_dataset.classes)
        expect(page.locator("#stream-state")).to_have_text("finished", timeout=30_000)
        readme_screenshot(page, "run")
        link = page.locator("#artifacts a").first
        with page.expect_download() as download:
            link.click()
        assert Path(download.value.path()).stat().st_size > 0

        # The HTML report, served under a policy that allows no script at all.
        with page.expect_navigation() as opened:
            page.click("#report-link")
        report = opened.value
        assert report is not None and report.status == 200
        policy = report.headers["content-security-policy"]
        assert "script-src" not in policy and "default-src 'none'" in policy
        assert job.id in page.inner_text("body")


def test_cancel_works_for_an_operator_and_is_refused_for_a_viewer(
    site: Site, browser: Browser, tabs: dict[str, Tab], tmp_path: Path
) -> None:
    with site.client("operator") as operator:
        job = operator.submit_job(long_diagnostic("to-cancel"))
    viewer = signed_in(browser, tabs, site, "viewer")
    operator_tab = signed_in(browser, tabs, site, "operator")
    with screenshots_on_failure(tmp_path, tabs):
        viewer.page.goto(f"{site.base}/runs/{job.id}")
        with viewer.page.expect_navigation() as navigation:
            viewer.page.click("#cancel")
        assert navigation.value is not None and navigation.value.status == 403
        assert "may not cancel" in viewer.page.inner_text(".message")
        with site.client("viewer") as client:
            assert client.get_job(job.id).state in ("queued", "running")
        # The refusal is the page's answer, not a console error.
        viewer.errors = [e for e in viewer.errors if "403" not in e]

        operator_tab.page.goto(f"{site.base}/runs/{job.id}")
        operator_tab.page.click("#cancel")
        operator_tab.page.wait_for_url(f"{site.base}/runs/{job.id}")
        with site.client("operator") as client:
            wait_until(lambda: client.get_job(job.id).state == "cancelled", 30, "cancelled")
            assert client.get_job(job.id).cancelled_by == "web-operator"
        expect(operator_tab.page.locator("#run-state")).to_have_text("cancelled", timeout=30_000)


def test_cluster_page_lists_the_agent(
    site: Site, browser: Browser, tabs: dict[str, Tab], tmp_path: Path
) -> None:
    tab = signed_in(browser, tabs, site, "viewer")
    with screenshots_on_failure(tmp_path, tabs):
        tab.page.goto(f"{site.base}/cluster")
        names = tab.page.eval_on_selector_all(
            "#agents tbody tr td:first-child", "cells => cells.map(c => c.textContent)"
        )
        assert names == [site.cluster.agent_name(0)]
        readme_screenshot(tab.page, "cluster")
        with site.client("viewer") as client:
            agent = client.list_agents()[0]
        assert agent.name == names[0]


# ---- studies ------------------------------------------------------------------------------


def test_study_page_draws_every_chart_and_filters_its_trials(
    site: Site, browser: Browser, tabs: dict[str, Tab], tmp_path: Path
) -> None:
    trials = site.study.trials
    tab = signed_in(browser, tabs, site, "viewer")
    page = tab.page
    with screenshots_on_failure(tmp_path, tabs):
        page.goto(f"{site.base}/studies")
        assert page.locator(f"#studies a[href='/studies/{site.study.id}']").count() == 1
        page.goto(f"{site.base}/studies/{site.study.id}")
        page.wait_for_selector("body[data-rendered]")
        assert page.inner_text("#study-state") == "completed"
        pruned = sum(t.state == "pruned" for t in trials)
        assert f"pruned {pruned}" in page.inner_text("#study-counts")
        completed = [t for t in trials if t.state == "completed"]
        best = max(completed, key=lambda t: t.objective_value or 0.0)
        assert page.inner_text("#study-best").startswith(f"best: trial #{best.number},")
        for chart in ("#chart-history", "#chart-curves"):
            assert page.locator(f"{chart} canvas").count() == 1
        assert page.locator("#param-charts canvas").count() == 3
        # The seeded objective depends on the learning rate alone.
        assert page.inner_text("#importance .bar-row:first-child .bar-name") == "learning_rate"
        assert page.inner_text("#trial-count") == f"1-50 of {len(trials)}"
        readme_screenshot(page, "study")

        page.select_option("#trial-filters select[name=state]", "completed")
        page.select_option("#param-select", "learning_rate")
        page.fill("#trial-filters input[name=min]", "0.001")
        page.fill("#trial-filters input[name=max]", "0.02")
        page.select_option("#trial-filters select[name=sort]", "value")
        page.select_option("#trial-filters select[name=order]", "desc")
        with page.expect_navigation():
            page.click("#trial-filters button[type=submit]")
        page.wait_for_selector("body[data-rendered]")
        wanted = [
            t
            for t in completed
            if 0.001 <= float(t.params["learning_rate"]) <= 0.02  # type: ignore[arg-type]
        ]
        wanted.sort(key=lambda t: t.objective_value or 0.0, reverse=True)
        shown = page.eval_on_selector_all(
            "#trials tbody tr", "rows => rows.map(r => parseInt(r.dataset.number, 10))"
        )
        assert shown == [t.number for t in wanted[:50]]
        assert page.inner_text("#trial-count") == f"1-{min(50, len(wanted))} of {len(wanted)}"
