"""Size and opening time of ``report.html`` for 100 and 2,000 scans (synthetic entries).

Each scan gets a radiograph-like 512 x 420 image (smooth anatomy-like shapes plus fine noise) and
a CAM blob, encoded exactly as :func:`chestxr.explain.report_builder.report_model` does (JPEG image,
one JPEG overlay per method, a gallery thumbnail). With the default selection (every error plus
``sample_correct`` others) 15 % of the scans are errors. The page is opened in headless Chromium
(``tests/helpers/chromium.py``): time to first contentful paint and to the load event, median of 3.
For reference, the same figures are given for the old format's per-scan images (matplotlib PNGs).

Run: ``python benchmarks/bench_report.py [--quick]`` (writes ``benchmarks/results/report.json``).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import write_result  # benchmarks/results_file.py, beside this script
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' browser driver

from chestxr.explain.overlay import overlay_figure
from chestxr.explain.report_builder import _jpeg, _overlay_rgb
from chestxr.explain.report_page import ReportEntry, write_report_html
from tests.helpers.chromium import Page, find_browser

METHODS = ("gradcam", "gradcam++")


def radiograph(rng: np.random.Generator, shape=(512, 420)) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]] / np.asarray(shape).reshape(2, 1, 1)
    img = 0.55 + 0.25 * np.exp(-((x - 0.5) ** 2) / 0.02)  # mediastinum
    for cx in (0.3, 0.7):  # lungs
        img -= 0.3 * np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img += gaussian_filter(rng.normal(0, 0.4, shape), 12) + rng.normal(0, 0.03, shape)
    return np.clip(img, 0, 1).astype(np.float32)


def cam(rng: np.random.Generator, shape=(512, 420)) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    cy, cx = rng.uniform(0.2, 0.8, 2) * shape
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 60.0**2)).astype(np.float32)


def build(folder: Path, n: int, sample_correct: int | None, rng: np.random.Generator) -> Path:
    entries, errors = [], rng.random(n) < 0.15
    correct = np.flatnonzero(~errors)
    shown = set(np.flatnonzero(errors)) | set(
        correct if sample_correct is None else rng.permutation(correct)[:sample_correct]
    )
    for i in range(n):
        label = float(rng.random() < 0.4)
        decision = bool(label) != bool(errors[i])
        e = ReportEntry(
            scan_id=f"scan-{i:010d}",
            image_png=None,
            probabilities={
                "opacity": float(rng.uniform(0.5, 1) if decision else rng.uniform(0, 0.5))
            },
            decisions={"opacity": decision},
            labels={"opacity": label},
        )
        if i in shown:
            img = radiograph(rng)
            e.image_png = folder / f"{i}.jpg"
            e.image_png.write_bytes(_jpeg(np.round(img * 255).astype(np.uint8), 85))
            for m in METHODS:
                rgb = _overlay_rgb(img, cam(rng), [])
                p = folder / f"{i}_{m}.jpg"
                p.write_bytes(_jpeg(rgb, 85))
                e.overlays[m] = p
                if m == METHODS[0]:
                    t = folder / f"{i}_thumb.jpg"
                    t.write_bytes(_jpeg(rgb, 75, side=128))
                    e.thumbnails["opacity"] = t
        entries.append(e)
    return write_report_html(
        folder / "report.html", entries, title="bench", output_names=["opacity"]
    )


def open_times(browser: str, path: Path, repeats: int = 3) -> dict[str, float]:
    fcp, load, wall = [], [], []
    for _ in range(repeats):
        with Page(browser) as page:
            t0 = time.perf_counter()
            page.open(path.as_uri(), timeout=300)
            wall.append(time.perf_counter() - t0)
            fcp.append(page.js(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1"
            ) / 1000)  # fmt: skip
            load.append(page.js(
                "(() => { const t = performance.getEntriesByType('navigation')[0];"
                " return t.loadEventEnd - t.startTime; })()"
            ) / 1000)  # fmt: skip
    return {
        "first_paint_s": statistics.median(fcp),
        "load_event_s": statistics.median(load),
        "open_wall_s": statistics.median(wall),
    }


def old_format_bytes_per_scan(folder: Path, rng: np.random.Generator, n: int = 5) -> float:
    """The old report's per-scan images: a matplotlib grey PNG and one overlay figure per method."""
    from matplotlib.image import imsave

    total = 0
    for i in range(n):
        img = radiograph(rng)
        imsave(folder / f"old{i}.png", img, cmap="gray", vmin=0, vmax=1)
        total += (folder / f"old{i}.png").stat().st_size
        for m in METHODS:
            total += (
                overlay_figure(img, cam(rng), folder / f"old{i}_{m}.png", title=m).stat().st_size
            )
    return total * 4 / 3 / n  # base64 inflates by 4/3


def _hold_low_fds() -> None:
    """The driver hands the browser its pipes on fds 3 and 4 (``pass_fds=(3, 4)``), which must be
    open in this process: under pytest they are; in a bare script they may not be."""
    import os

    while (fd := os.open(os.devnull, os.O_RDONLY)) < 5:
        pass
    os.close(fd)


def main(quick: bool = False) -> dict:
    _hold_low_fds()
    browser = find_browser()
    rng = np.random.default_rng(0)
    sizes = [20, 100] if quick else [100, 2000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = old_format_bytes_per_scan(Path(tmp), rng, 2 if quick else 5)
        for n in sizes:
            for label, sample in (("default (errors + 100 others)", 100), ("every scan", None)):
                if sample is None and n > 100:
                    continue
                folder = Path(tmp) / f"{n}-{sample}"
                folder.mkdir()
                t0 = time.perf_counter()
                path = build(folder, n, sample, rng)
                built = time.perf_counter() - t0
                size = path.stat().st_size
                html = path.read_text()
                row = {
                    "scans": n,
                    "cards": html.count("<div class='card'"),
                    "selection": label,
                    "file_MB": round(size / 1e6, 2),
                    "KB_per_scan": round(size / n / 1e3, 1),
                    "KB_per_card": round(size / max(html.count("<div class='card'"), 1) / 1e3, 1),
                    "build_s": round(built, 1),
                }
                if browser:
                    row.update({k: round(v, 2) for k, v in open_times(browser, path).items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"old_format_KB_per_card": round(old / 1e3, 1), "rows": rows, "browser": browser}
    write_result("report", out)
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
