"""The report page in a real headless Chromium (Debian's, driven by Playwright): one table row per method,
every image decodes, no console errors, no network; a screenshot is kept in ``test-artifacts/report.png``."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_store import EXPERIMENT, cli_report, report_store

from fluxbench.reports import build

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> tuple[Path, object]:
    folder, _ = cli_report(tmp_path_factory)  # what `fluxbench report` wrote
    return folder / "index.html", build(report_store(tmp_path_factory).uri, EXPERIMENT)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def test_page_renders_offline_with_every_image_and_no_errors(browser, page_file):
    path, report = page_file
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: requests.append(req.url))
    page.goto(path.as_uri(), wait_until="load")

    tables = page.locator("table.leaderboard")
    groups = list(report.board.groupby(["benchmark", "protocol"], sort=True))
    assert tables.count() == len(groups) == 4
    for i, (_, group) in enumerate(groups):
        methods = tables.nth(i).locator("tbody tr td.method").all_inner_texts()
        assert sorted(m.strip() for m in methods) == sorted(group["method"])  # one row per method
    assert page.locator("table.two-phase tbody tr").count() == len(report.two_phase) == 2

    cpt = page.locator("#fomo-digits-continual-pretraining")
    assert cpt.locator("table.pretraining tbody tr").count() == len(report.pretraining) == 3
    assert "A_KA (%)" in cpt.locator("table.pretraining thead").inner_text()
    path = cpt.locator("img[alt^='Update paths']")
    assert path.count() == 1 and path.evaluate("i => i.complete && i.naturalWidth > 300 && i.naturalHeight > 300")
    assert path.bounding_box()["width"] > 300  # laid out on the page, not collapsed

    images = page.locator("img")
    assert images.count() >= 8
    widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 0 for w in widths), widths
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()
