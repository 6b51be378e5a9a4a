"""A real browser for the dashboard tests: Playwright driving Debian's Chromium (Playwright's own
browser download cannot work here), and `matrec-ctl ui` run as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

from support.network import free_port
from support.tools import require_tool

#: With MATREC_README_SCREENSHOTS=1 the browser tests save their pages for the README here.
README_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
#: As root, Chromium needs --no-sandbox; without the background-networking flags the closed
#: network here refuses its connections by the dozen.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@contextmanager
def dashboard(coordinator: str, *args: str, log: Path) -> Iterator[str]:
    """`matrec-ctl -c COORDINATOR ui ARGS` on a free loopback port; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MATREC_TOKEN"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [*CTL, "-c", coordinator, "ui", "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"matrec-ctl ui exited: {log.read_text()}")
            try:
                httpx.get(f"{base}/login", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"dashboard not up in 30 s: {log.read_text()}") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(
        executable_path=str(require_tool("chromium")), headless=True, args=CHROMIUM_ARGS
    )


@dataclass
class Tab:
    """A browser page that records console errors, uncaught exceptions and dialogs."""

    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser) -> Tab:
        page = browser.new_context().new_page()
        tab = cls(page)

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                tab.errors.append(f"console: {message.text} at {message.location}")

        page.on("console", console)
        page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))

        def dialog(d: object) -> None:
            tab.dialogs.append(getattr(d, "message", ""))
            d.dismiss()  # type: ignore[attr-defined]

        page.on("dialog", dialog)
        return tab

    def sign_in(self, base: str, token: str) -> None:
        self.page.goto(f"{base}/login")
        self.page.fill("input[name=token]", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{base}/runs")

    def close(self) -> None:
        self.page.context.close()


@contextmanager
def screenshots_on_failure(folder: Path, tabs: dict[str, Tab]) -> Iterator[None]:
    """Run the block; if it fails, save a full-page screenshot of every tab into `folder` (the
    test's tmp_path, kept for failed tests) and name them in the error."""
    try:
        yield
        for name, tab in tabs.items():
            assert not tab.errors, f"console errors on {name}: {tab.errors}"
            assert not tab.dialogs, f"dialogs opened on {name}: {tab.dialogs}"
    except BaseException:
        folder.mkdir(parents=True, exist_ok=True)
        for name, tab in tabs.items():
            try:
                tab.page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
            except Exception as exc:  # the page may be gone; keep the original failure
                print(f"no screenshot of {name}: {exc}")
        print(f"screenshots of the failed test: {folder}")
        raise


def readme_screenshot(page: Page, name: str) -> None:
    """Save the page as docs/images/dashboard-NAME.png when MATREC_README_SCREENSHOTS=1 (how
    the README's pictures are made: `MATREC_README_SCREENSHOTS=1 pytest tests/integration/
    test_web_ui.py tests/integration/test_web_labelling.py`)."""
    if os.environ.get("MATREC_README_SCREENSHOTS") == "1":
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(README_IMAGES / f"dashboard-{name}.png"))
