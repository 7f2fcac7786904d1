"""report.html in a real headless Chromium: images load and decode, filter buttons work by click.

Needs Debian's ``chromium`` package (``.ci/run`` installs it); skips with the reason otherwise.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from chestxr.explain import ReportEntry, overlay_figure, write_report_html
from tests.helpers.chromium import Page, find_browser

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium on PATH (Debian: apt-get install chromium)"
)

# scan -> (probability, decision, label): one of each outcome
SCANS = {
    "scan-tp": (0.95, True, 1.0),
    "scan-fp": (0.70, True, 0.0),
    "scan-un": (0.50, True, None),
    "scan-fn": (0.30, False, 1.0),
    "scan-tn": (0.05, False, 0.0),
}
OUTCOME = {
    "scan-tp": "TP",
    "scan-fp": "FP",
    "scan-fn": "FN",
    "scan-tn": "TN",
    "scan-un": "unlabelled",
}
BADGE_RGB = {"TP": (0xC8, 0xE6, 0xC9), "FP": (0xFF, 0xE0, 0xB2), "FN": (0xFF, 0xCD, 0xD2)}


def _grey_png(image: np.ndarray, path):
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    entries = []
    for i, (sid, (p, decision, label)) in enumerate(SCANS.items()):
        image = rng.random((120, 90)).astype(np.float32)  # portrait: the aspect must survive
        cam = np.zeros_like(image)
        cam[20 + 10 * i : 50 + 10 * i, 20:60] = 1.0
        entries.append(
            ReportEntry(
                scan_id=sid,
                image_png=_grey_png(image, folder / f"{sid}.png"),
                overlays={"gradcam": overlay_figure(image, cam, folder / f"{sid}-gc.png",
                                                    title=f"{sid} Grad-CAM")},
                probabilities={"pneumonia": p},
                decisions={"pneumonia": decision},
                labels={"pneumonia": label},
            )
        )  # fmt: skip
    return write_report_html(
        folder / "report.html", entries, title="Browser test", output_names=["pneumonia"]
    )


@pytest.fixture(scope="module")
def page(report):
    with Page(BROWSER) as p:
        p.open(report.as_uri())
        yield p


def _load_images(page: Page) -> list[list[float]]:
    """Scroll to each card image as a reader would (they are lazy), wait until it is decoded, and
    return (complete, natural width, natural height, width and height on the page) for each."""
    return page.js(
        """(async () => {
          const out = [];
          for (const img of document.querySelectorAll("div.card img")) {
            if (img.offsetParent === null) continue;  // hidden by a filter
            img.scrollIntoView(); await img.decode();
            const r = img.getBoundingClientRect();
            out.push([img.complete, img.naturalWidth, img.naturalHeight, r.width, r.height]);
          }
          window.scrollTo(0, 0);
          return out;
        })()"""
    )


def _visible(page: Page, selector: str, attribute: str) -> list[str]:
    return page.js(
        f"[...document.querySelectorAll({json.dumps(selector)})]"
        f".filter(e => e.offsetParent !== null).map(e => e.{attribute})"
    )


def test_every_image_loads_and_decodes_at_its_aspect(page):
    sizes = _load_images(page)
    assert len(sizes) == 2 * len(SCANS)  # image + Grad-CAM per scan
    for complete, width, height, shown_w, shown_h in sizes:
        assert complete and width >= 90
        assert height > width  # the portrait radiograph stays portrait (colour bar included)
        assert shown_h / shown_w == pytest.approx(height / width, rel=0.02)  # drawn undistorted


def test_filter_buttons_show_only_their_outcome(page):
    cards = {sid: OUTCOME[sid] for sid in SCANS}
    for wanted in ("TP", "FP", "FN", "TN", "unlabelled", "all"):
        page.click(f"button.filter[data-outcome='{wanted}']")
        shown = _visible(page, "div.card h3", "textContent")
        rows = _visible(page, "table.index tr.row", "dataset.outcome")
        expected = [s for s, o in cards.items() if wanted in ("all", o)]
        assert sorted(shown) == sorted(expected), wanted
        assert sorted(rows) == sorted(cards[s] for s in expected), wanted
        assert page.js("document.querySelector('button.filter.active').dataset.outcome") == wanted


def test_screenshot_shows_the_filtered_cards_and_their_images(page):
    def shot() -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)

    def colour_pixels(img: np.ndarray, rgb: tuple[int, int, int]) -> int:
        return int((np.abs(img - np.asarray(rgb)).sum(axis=-1) <= 3).sum())

    page.click("button.filter[data-outcome='FN']")
    assert len(_load_images(page)) == 2  # the FN card's image and overlay
    page.js("document.querySelector('div.card:not(.hidden)').scrollIntoView()")
    img = shot()
    if os.environ.get("CHESTXR_SCREENSHOT"):  # to look at it: CHESTXR_SCREENSHOT=out.png pytest
        Image.fromarray(img.astype(np.uint8)).save(os.environ["CHESTXR_SCREENSHOT"])
    # the FN card's badge is painted; no TP or FP badge is anywhere on screen
    assert colour_pixels(img, BADGE_RGB["FN"]) > 50
    assert colour_pixels(img, BADGE_RGB["TP"]) == 0 and colour_pixels(img, BADGE_RGB["FP"]) == 0
    # the radiograph itself is drawn: its box on screen holds varied grey levels, not a blank
    x, y, w, h = page.js(
        "(() => { const r = document.querySelector('div.card:not(.hidden) img')"
        ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()"
    )
    box = img[int(y + h / 4) : int(y + 3 * h / 4), int(x + w / 4) : int(x + 3 * w / 4)]
    assert box.size and box.std() > 20
    page.click("button.filter[data-outcome='all']")
