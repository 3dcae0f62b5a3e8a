"""README screenshots of the Screen page: the worklist and the viewer, taken in Debian's chromium.

    .venv/bin/python scripts/screenshots.py [--models models] [--out docs/screenshots]

Starts ``streamlit run app.py`` on a free local port over a copy of the registry (the real one is not
touched), drops the bundled sample films (one of them twice, plus a file that is not an X-ray), and
saves ``worklist.png``, ``viewer.png`` and ``evaluation.png`` (the Evaluation page's headline). Nothing is
fetched from outside.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import CHROMIUM, CHROMIUM_ARGS, running_dashboard  # noqa: E402


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--models", type=Path, default=ROOT / "models")
    args.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    options = args.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"Debian chromium is needed at {CHROMIUM} (apt install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import expect, sync_playwright

    films = sorted(str(p) for p in (ROOT / "data" / "sample").rglob("*.png"))[:8]
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        shutil.copytree(
            options.models, scratch / "models", ignore=shutil.ignore_patterns(".lock", "candidates")
        )
        letter = scratch / "referral-letter.jpg"
        letter.write_bytes(b"%PDF-1.4\n% not an X-ray\n")
        env = {
            **os.environ,
            "CXR_MODELS_DIR": str(scratch / "models"),
            "CXR_JOBS_DIR": str(scratch / "jobs"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        with running_dashboard(scratch / "streamlit.log", env) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 2200}, device_scale_factor=1)
                page.goto(url)
                expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
                page.locator("input[type=file]").set_input_files([*films, films[0], str(letter)])
                label = page.get_by_test_id("stMetricLabel").get_by_text("TB probability", exact=True)
                expect(label).to_have_count(1, timeout=120_000)
                page.wait_for_function("() => document.querySelector('.js-plotly-plot')?.data?.[0]?.source")
                page.wait_for_timeout(1500)
                main_area = page.get_by_test_id("stMainBlockContainer")
                top = main_area.bounding_box()
                worklist_end = page.get_by_text("Download results (CSV)").bounding_box()
                page.screenshot(
                    path=str(options.out / "worklist.png"),
                    clip={
                        "x": top["x"],
                        "y": top["y"],
                        "width": top["width"],
                        "height": worklist_end["y"] + worklist_end["height"] + 24 - top["y"],
                    },
                )
                chooser = page.locator("h4").first.bounding_box()  # the film card opened by the ticked row
                plot = page.locator(".js-plotly-plot").first.bounding_box()
                page.screenshot(
                    path=str(options.out / "viewer.png"),
                    clip={
                        "x": top["x"],
                        "y": chooser["y"] - 8,
                        "width": top["width"],
                        "height": plot["y"] + plot["height"] + 48 - chooser["y"],
                    },
                )
                page.locator("[data-testid=stSidebar] a").filter(has_text="Evaluation").click()
                expect(page.get_by_text("How well does the model work?")).to_be_visible(timeout=60_000)
                page.wait_for_timeout(2500)
                main_area = page.get_by_test_id("stMainBlockContainer").bounding_box()
                pooled = page.get_by_text("On the pooled test split (upper bound)").bounding_box()
                page.screenshot(
                    path=str(options.out / "evaluation.png"),
                    clip={"x": main_area["x"], "y": main_area["y"], "width": main_area["width"],
                          "height": pooled["y"] + 220 - main_area["y"]},
                )  # fmt: skip
            finally:
                browser.close()
    for name in ("worklist.png", "viewer.png", "evaluation.png"):
        print(options.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
