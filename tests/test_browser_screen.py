"""A real browser (Debian's chromium, driven by Playwright) uploads a real X-ray to the running dashboard.

The screenshot is kept in test-artifacts/ so a person can look at what a clinician would have seen.
"""

import os
import re
import shutil
import time

import pytest
import test_app_screen as shared
from servers import CHROMIUM_ARGS, running_dashboard
from test_app_screen import NORMAL_XRAY, PROJECT_ROOT, TB_XRAY
from tools import need_chromium

from ui import screening_view

pytestmark = [pytest.mark.slow, pytest.mark.browser]
seed = shared.seed  # fixture: a registry trained once per test session

ARTIFACTS = PROJECT_ROOT / "test-artifacts"


@pytest.fixture
def server(seed, tmp_path):
    """``streamlit run app.py`` in its own process group on a free local port, on a copy of the registry."""
    models = tmp_path / "models"
    shutil.copytree(seed, models)
    env = {
        **os.environ,
        "CXR_MODELS_DIR": str(models),
        "CXR_JOBS_DIR": str(tmp_path / "jobs"),
        "CXR_SECRETS_FILE": str(tmp_path / "no-secrets.toml"),
        "CXR_USERS_FILE": str(tmp_path / "no-admin-users.toml"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("CXR_ADMIN_PASSWORD", None)
    with running_dashboard(tmp_path / "streamlit.log", env) as url:
        yield url


@pytest.fixture(scope="module")
def chromium() -> str:
    return need_chromium()


def test_upload_in_a_real_browser(server, chromium):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
            page.locator("input[type=file]").set_input_files(str(TB_XRAY))
            # The metric label of each result (the summary table's header says "TB probability" too).
            results = page.get_by_test_id("stMetricLabel").get_by_text("TB probability", exact=True)
            expect(results).to_have_count(1, timeout=90_000)
            # the result box of the film card, in the one result vocabulary
            decision = page.get_by_test_id("stAlert").filter(
                has_text=re.compile("(" + "|".join(re.escape(r) for r in screening_view.RESULTS) + ")")
            )
            expect(decision.first).to_be_visible()
            page.wait_for_function(  # the film with its Grad-CAM overlay, drawn in the viewer
                "() => document.querySelector('.js-plotly-plot')?.data?.[0]?.source?.length > 1000",
                timeout=30_000,
            )
            expect(
                page.get_by_text(
                    "Heatmap: Grad-CAM (the network's evidence for TB", exact=False
                )
            ).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "browser-screen.png"), full_page=True)

            # With the model now loaded, a further upload is answered quickly.
            started = time.perf_counter()
            page.locator("input[type=file]").set_input_files(str(NORMAL_XRAY))
            rows = page.locator("[data-testid=stDataFrame] table tbody tr")
            expect(rows).to_have_count(2, timeout=30_000)  # both films on the worklist, one card open
            warm = time.perf_counter() - started
            print(f"warm upload to result in the browser: {warm:.2f} s (measured by bench/page.py)")
        finally:
            browser.close()
    assert (ARTIFACTS / "browser-screen.png").stat().st_size > 10_000
