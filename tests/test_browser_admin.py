"""The Evaluation headline, a site profile's activation and the Retrain form in a real browser (Debian's
chromium, driven by Playwright), on a copy of a really trained registry."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_app_screen as shared
from gatekeeping import ADMIN, PASSWORD
from servers import CHROMIUM_ARGS, running_dashboard
from tools import need_chromium

from cxr_core.registry import audit
from cxr_core.registry.card import LOSO_FILE
from cxr_core.registry.sites import OperatingRule, SiteProfiles, build_profile

pytestmark = [pytest.mark.slow, pytest.mark.browser]
seed = shared.seed  # fixture: a registry trained once per test session
SHIPPED = shared.PROJECT_ROOT / "models" / "v20261130-052333"


@pytest.fixture
def registry_copy(seed, tmp_path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(seed, models)
    return models


def serve(models: Path, tmp_path: Path):
    from cxr_core import auth

    users = tmp_path / "admin_users.toml"  # a named administrator of this test's own
    env = {
        **{k: v for k, v in os.environ.items() if k != auth.ENV_PASSWORD},
        "CXR_MODELS_DIR": str(models),
        "CXR_JOBS_DIR": str(tmp_path / "jobs"),
        "CXR_SECRETS_FILE": str(tmp_path / "no-secrets.toml"),
        auth.ENV_USERS_FILE: str(users),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    with pytest.MonkeyPatch.context() as patch:  # the account (and its audit line) land in this test's copy
        patch.setenv(auth.ENV_USERS_FILE, str(users))
        patch.setenv("CXR_MODELS_DIR", str(models))
        auth.add_user(ADMIN, PASSWORD)
    return running_dashboard(tmp_path / "streamlit.log", env)


@pytest.fixture
def page():
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shared_chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1600})
        finally:
            browser.close()


def shared_chromium() -> str:
    from tools import CHROMIUM

    return CHROMIUM


def open_page(page, url: str, link: str, title: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=120_000)
    page.locator("[data-testid=stSidebar] a").filter(has_text=link).click()
    expect(page.get_by_text(title)).to_be_visible(timeout=120_000)


def unlock(page) -> None:
    from playwright.sync_api import expect

    page.get_by_label("Admin user name").fill(ADMIN)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Unlock").click()
    expect(page.get_by_text("Admin actions unlocked")).to_be_visible(timeout=60_000)


def test_the_evaluation_page_leads_with_the_new_clinic_estimate(registry_copy, tmp_path, page):
    from playwright.sync_api import expect

    current = json.loads((registry_copy / "current.json").read_text())["version"]
    shutil.copy(SHIPPED / LOSO_FILE, registry_copy / current / LOSO_FILE)
    with serve(registry_copy, tmp_path) as url:
        open_page(page, url, "Evaluation", "How well does the model work?")
        first = page.get_by_test_id("stMetricLabel").first
        expect(first).to_have_text("Sensitivity at a new clinic", timeout=60_000)
        new_clinic = page.get_by_text("At a new clinic (leave-one-source-out estimate)").bounding_box()
        pooled = page.get_by_text("On the pooled test split (upper bound)").bounding_box()
        assert new_clinic["y"] < pooled["y"]  # the honest figure first, the upper bound second
        expect(page.get_by_text("It is not a confidence interval", exact=False)).to_be_visible()
        verdict = page.get_by_test_id("stMetric").filter(has_text="WHO minimum at a new clinic")
        expect(verdict).to_contain_text("not met")


def test_a_profile_below_its_floor_is_refused_and_a_confirmed_one_switched_on(registry_copy, tmp_path, page):
    from playwright.sync_api import expect

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(60, int)]
    scores = np.r_[rng.beta(2, 5, 60), rng.beta(5, 2, 60)]
    version = json.loads((registry_copy / "current.json").read_text())["version"]
    sites = SiteProfiles(registry_copy)
    for name, sensitivity in (("below-floor", 0.867), ("fine", 0.95)):
        profile = build_profile(name, version, labels, scores, OperatingRule(0.9), n_boot=50)
        profile["evidence"]["cross_validated"]["sensitivity"] = sensitivity  # the floor check reads this
        sites.save(profile, actor="test")
    with serve(registry_copy, tmp_path) as url:
        open_page(page, url, "Local validation", "Set up at this clinic")
        unlock(page)
        choose = page.get_by_test_id("stSelectbox").filter(has_text="Profile in use")
        choose.click()
        page.get_by_role("option", name="below-floor").click()
        page.get_by_role("button", name="Apply").click()
        expect(page.get_by_text("Refused:", exact=False)).to_be_visible(timeout=60_000)
        expect(page.get_by_text("86.7%", exact=False).first).to_be_visible()
        assert page.get_by_role("button", name="Confirm: switch on below-floor").count() == 0
        page.get_by_role("button", name="Switch on below the floor (audited override)").click()
        expect(page.get_by_text("needs a written reason", exact=False)).to_be_visible(timeout=60_000)
        assert sites.active() is None
        page.get_by_role("button", name="Cancel").click()

        choose.click()
        page.get_by_role("option", name="fine").click()
        page.get_by_role("button", name="Apply").click()
        page.get_by_role("button", name="Confirm: switch on fine").click()
        expect(page.get_by_text("Site profile fine is in use.")).to_be_visible(timeout=60_000)
        assert sites.active_name() == "fine"
        outcomes = [(e["site"], e["outcome"]) for e in audit.read(registry_copy) if e["action"] == "site_activate"]
        assert outcomes[0] == ("fine", "ok")
        # the decision's operating point is named in the sidebar on every page
        expect(page.locator("[data-testid=stSidebar]")).to_contain_text("site profile fine")


def test_the_retrain_form_refuses_an_out_of_range_value_with_a_message(registry_copy, tmp_path, page):
    from playwright.sync_api import expect

    with serve(registry_copy, tmp_path) as url:
        open_page(page, url, "Retrain", "Retrain and manage models")
        unlock(page)
        patience = page.get_by_label("Early-stopping patience (1–100)")
        patience.fill("300")
        patience.press("Tab")
        page.get_by_role("button", name="Start retraining").click()
        expect(page.get_by_text("Early-stopping patience: 300 is outside 1–100", exact=False)).to_be_visible(
            timeout=60_000
        )
        assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
