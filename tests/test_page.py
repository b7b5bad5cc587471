"""The demo page at `/`, in a real browser: Debian's Chromium, driven by Playwright.

The page is pre-filled with the example, ranks on a click, shows each recommendation as it
arrives with its time, the time to the first item and to the full list, the rejected count,
and the error when a request is refused or a job fails; when its gateway dies and comes back,
the browser's EventSource resumes by itself (Last-Event-ID) and the list ends whole.
Set RANKSTREAM_SCREENSHOT=FILE to keep a screenshot of the finished page (docs/ holds one).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Simulator, WorkerProcess, make_settings
from support.gateway import Gateway

from rankstream.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extras bring it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="SKIPPED: no Chromium on PATH (apt-get install chromium) or no playwright: the page is untested",
)

DONE = "#status[data-state=done]"


@pytest.fixture(scope="module")
def page_sim() -> Iterator[Simulator]:
    simulator = Simulator(ttft=0.2, tokens_per_second=40)  # the example takes ~3 s: time to interrupt it
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def page_settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture(scope="module")
def page_worker(page_settings: Settings, page_sim: Simulator) -> Iterator[WorkerProcess]:
    process = WorkerProcess(page_settings, page_sim, RANKSTREAM_MAX_ATTEMPTS="1")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def containing(text: str) -> re.Pattern[str]:
    return re.compile(re.escape(text))


def ranked(page: Page) -> list[tuple[str, str]]:
    return [
        (str(item.get_attribute("data-rank")), str(item.get_attribute("data-product-id")))
        for item in page.locator("#items li").all()
    ]


def whole_ranking(page: Page) -> None:
    expect(page.locator(DONE)).to_be_visible(timeout=30_000)
    got = ranked(page)
    assert [rank for rank, _ in got] == [str(n) for n in range(1, 11)]
    assert sorted(product for _, product in got) == sorted(str(n) for n in range(1, 11))


@dataclass
class Served:
    """The page, loaded from a gateway of its own (which a test may replace)."""

    page: Page
    gateway: Gateway


@pytest.fixture
def served(page: Page, page_settings: Settings, page_worker: WorkerProcess) -> Iterator[Served]:
    opened = Served(page, Gateway(page_settings))
    try:
        page.goto(opened.gateway.url)
        expect(page.locator("#profile")).to_have_value(containing("Customer ID: 12345"))  # pre-filled
        yield opened
    finally:
        opened.gateway.stop()


def test_the_page_ranks_the_example_and_shows_each_item_as_it_arrives(served: Served) -> None:
    page = served.page
    page.click("#rank")
    expect(page.locator("#items li").first).to_be_visible(timeout=15_000)
    assert page.locator(DONE).count() == 0, "the first item should show before the list is whole"
    whole_ranking(page)
    assert page.locator("#first-item").inner_text().endswith(" s")
    assert page.locator("#full-list").inner_text().endswith(" s")
    assert page.locator("#rejected").inner_text() == "0"
    assert page.locator("#items li .at").first.inner_text().endswith(" s")
    if os.environ.get("RANKSTREAM_SCREENSHOT"):
        page.screenshot(path=os.environ["RANKSTREAM_SCREENSHOT"], full_page=True)


def test_a_gateway_killed_and_restarted_mid_ranking_leaves_the_page_with_every_item_once(
    served: Served, page_settings: Settings
) -> None:
    page = served.page
    page.click("#rank")
    expect(page.locator("#items li").nth(1)).to_be_visible(timeout=15_000)
    served.gateway.process.kill()  # SIGKILL, mid-ranking
    served.gateway.stop()
    expect(page.locator("#status[data-state=reconnecting]")).to_be_visible(timeout=10_000)
    served.gateway = Gateway(page_settings, port=served.gateway.port)
    whole_ranking(page)


def test_a_refused_request_shows_the_field(served: Served) -> None:
    page = served.page
    page.fill("#products", "[]")
    page.click("#rank")
    expect(page.locator("#error")).to_contain_text("products")
    expect(page.locator("#status[data-state=error]")).to_be_visible()


def test_a_failed_job_shows_its_error(served: Served, page_sim: Simulator) -> None:
    page_sim.fault("server_error", 1)
    try:
        served.page.click("#rank")
        expect(served.page.locator("#error")).to_contain_text("llm_unavailable", timeout=15_000)
        expect(served.page.locator("#error")).to_contain_text("HTTP 500")
    finally:
        page_sim.fault("none")
