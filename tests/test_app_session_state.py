"""No page breaks (and no traceback is logged) when the session holds keys or values it did not put there.

A crafted websocket message, a stale browser tab after an upgrade, or a bug elsewhere can leave odd values
in ``st.session_state``; each page must treat them as absent, not crash on them.
"""

import logging

import pytest
import test_app_screen as shared
from streamlit.testing.v1 import AppTest
from test_app_screen import APP

pytestmark = pytest.mark.slow
seed, dashboard = shared.seed, shared.dashboard

GARBAGE = {
    "screen_memo": "not a memo",
    "film_choice": ["a", "list"],
    "worklist_films": 42,
    "site_validation": "oops",
    "started_job": {"x": 1},
    "admin_notice": 7,
    "eval_version": 3.5,
    "some_key_nobody_set": object(),
}


@pytest.mark.parametrize("page", ["pages/screen.py", "pages/evaluation.py", "pages/site.py", "pages/retrain.py",
                                  "pages/model.py"])  # fmt: skip
def test_unexpected_session_state_is_ignored_without_a_traceback(dashboard, page, caplog):
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in GARBAGE.items():
        at.session_state[key] = value
    with caplog.at_level(logging.ERROR):
        at.run()
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Traceback" not in caplog.text and "KeyError" not in caplog.text


def test_a_garbage_screening_memo_is_replaced_by_a_fresh_result(dashboard):
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in GARBAGE.items():
        at.session_state[key] = value
    at.run()
    at.file_uploader(key="uploads").set_value(
        [(shared.TB_XRAY.name, shared.TB_XRAY.read_bytes(), "image/png")]
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.label for m in at.metric].count("TB probability") == 1
