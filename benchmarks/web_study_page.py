"""The dashboard's study page at 10,000 trials, measured in a real browser.

    python benchmarks/web_study_page.py [--trials 10000] [--runs 5] [--workdir DIR]

1. Seeds a finished study of --trials trials straight into a fresh SQLite database (one job per
   trial with its objective per epoch, 40 % of them pruned by ASHA; tests/support/seed_studies),
   then starts a coordinator on it (no agents) and `matrec-ctl ui` against it.
2. Opens /studies/ID in headless Chromium (Playwright, Debian's /usr/bin/chromium) --runs times,
   each in a fresh browser context (no cache), and takes from the browser itself: the time from
   navigation start until the page's script has drawn every chart and the trial table
   (`performance.now()` when it sets body[data-rendered]), and the bytes transferred (the
   navigation's and every resource's transferSize: HTML, scripts, styles and the JSON summary).
3. Prints each run, the median and the slowest; exit code 1 if the median exceeds 2000 ms or the
   payload exceeds --max-bytes (default 1 MB).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from matrec.sdk.local_cluster import LocalCluster  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from support.browser import Tab, dashboard, launch_chromium  # noqa: E402
from support.seed_studies import seed_study  # noqa: E402

PAYLOAD_JS = """() => {
  const entries = [...performance.getEntriesByType('navigation'),
                   ...performance.getEntriesByType('resource')];
  return entries.map(e => [e.name, e.transferSize || e.encodedBodySize || 0]);
}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-ms", type=float, default=2000.0)
    parser.add_argument("--max-bytes", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="matrec-web-bench-"))
    url = f"sqlite:///{root / 'matrec.db'}"
    started = time.monotonic()
    study = seed_study(url, args.trials, root / "artifacts")
    print(f"seeded {args.trials} trials in {time.monotonic() - started:.1f} s")
    with (
        LocalCluster(root / "cluster", agents=0, database_url=url) as cluster,
        dashboard(cluster.address, log=root / "ui.log") as base,
        sync_playwright() as playwright,
    ):
        browser = launch_chromium(playwright)
        times: list[float] = []
        payload: list[int] = []
        for run in range(args.runs):
            tab = Tab.open(browser)
            tab.page.goto(f"{base}/studies/{study.id}")
            tab.page.wait_for_selector("body[data-rendered]", timeout=60_000)
            rendered = float(tab.page.get_attribute("body", "data-rendered") or "nan")
            entries = tab.page.evaluate(PAYLOAD_JS)
            total = sum(int(size) for _, size in entries)
            summary = sum(int(size) for name, size in entries if "summary.json" in name)
            rows = tab.page.locator("#trials tbody tr").count()
            print(
                f"run {run + 1}: all charts drawn {rendered:.0f} ms after navigation start, "
                f"{total:,} bytes transferred (summary JSON {summary:,}), table rows {rows}, "
                f"console errors {len(tab.errors)}"
            )
            times.append(rendered)
            payload.append(total)
            tab.close()
        browser.close()
    median = statistics.median(times)
    print(
        f"{args.trials} trials: median {median:.0f} ms, slowest {max(times):.0f} ms; "
        f"payload {max(payload):,} bytes"
    )
    return 0 if median <= args.max_ms and max(payload) <= args.max_bytes else 1


if __name__ == "__main__":
    sys.exit(main())
