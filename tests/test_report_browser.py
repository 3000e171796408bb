"""The report page in a real browser: headless Chromium (Debian's chromium-headless-shell)
driven by Playwright for Python. No console error, every chart image loaded, a click on a
column header sorts the table, a link opens its run's details, and a screenshot (also to
$LOCBENCH_SCREENSHOT when set). Skipped, with the reason, where the browser or Playwright is
missing: scripts/install-browser.sh installs both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from page_records import write_runs

from locbench.reports.page import build_report

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (scripts/install-browser.sh)"
)
# Debian's package; LOCBENCH_CHROMIUM names another build. Playwright's own browser downloads
# are not used: the test must run offline.
BROWSERS = ("/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium-headless-shell")

pytestmark = pytest.mark.integration  # a real browser


def chromium() -> str:
    candidates = [os.environ.get("LOCBENCH_CHROMIUM", ""), *BROWSERS]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        pytest.skip("chromium-headless-shell not installed (scripts/install-browser.sh)")
    return found


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The report page of :mod:`page_records` open in Chromium, with its console errors."""
    executable = chromium()
    tmp = tmp_path_factory.mktemp("browser")
    report = build_report(write_runs(tmp / "runs"), tmp / "report")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(report.path.as_uri())
        tab.wait_for_load_state("load")
        yield tab, errors, tmp
        browser.close()


def column(tab, table: str, name: str) -> list[str]:
    """The cells of column ``name`` of the first table matching ``table``, top to bottom."""
    return tab.eval_on_selector(
        table,
        """(t, name) => {
            const col = [...t.tHead.rows[0].cells].findIndex(c => c.textContent === name);
            return [...t.tBodies[0].rows].map(r => r.cells[col].textContent);
        }""",
        name,
    )


def test_no_console_errors_and_every_image_loaded(page):
    tab, errors, _ = page
    images = tab.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
    assert len(images) >= 2 and all(width > 0 for _, width in images), images
    assert errors == []


def test_clicking_a_header_sorts_numerically_then_reverses(page):
    tab, _, _ = page
    table = "#comparison ~ .scroll table.sortable"
    before = [float(v) for v in column(tab, table, "step (ms)")]
    assert before != sorted(before)  # the click has something to do
    tab.click(f"{table} th:text-is('step (ms)')")
    assert [float(v) for v in column(tab, table, "step (ms)")] == sorted(before)
    tab.click(f"{table} th:text-is('step (ms)')")
    assert [float(v) for v in column(tab, table, "step (ms)")] == sorted(before, reverse=True)
    # "80.00 ± 1.41" sorts by its mean; text columns in text order
    tab.click(f"{table} th:text-is('test acc (%)')")
    means = [float(v.split(" ")[0]) for v in column(tab, table, "test acc (%)")]
    assert means == sorted(means)
    tab.click(f"{table} th:text-is('method')")
    assert column(tab, table, "method") == sorted(column(tab, table, "method"))


def test_a_run_link_opens_its_details(page):
    tab, _, _ = page
    link = tab.locator("section table a").first
    target = link.get_attribute("href")
    assert not tab.locator(target).evaluate("d => d.open")
    link.click()
    # The page opens the target on ``hashchange``, an event the browser fires after the click
    # returns: wait for it (up to 5 s) rather than racing it.
    tab.wait_for_function("id => document.getElementById(id).open", arg=target[1:], timeout=5000)
    assert tab.locator(target).evaluate("d => d.open")
    assert tab.locator(f"{target} h4", has_text="Training curve").is_visible()


def test_printing_shows_closed_details(page):
    tab, _, _ = page
    closed = tab.locator("details:not([open]) h4").first
    assert not closed.is_visible()
    tab.emulate_media(media="print")
    try:
        assert closed.is_visible()
    finally:
        tab.emulate_media(media="screen")


def test_screenshot(page):
    tab, _, tmp = page
    tab.evaluate("window.scrollTo(0, 0)")
    path = tmp / "report.png"
    tab.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("LOCBENCH_SCREENSHOT"):
        shutil.copyfile(path, os.environ["LOCBENCH_SCREENSHOT"])
