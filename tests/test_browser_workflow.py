"""The clinician's workflow in a real browser (Debian's chromium, driven by Playwright).

The worklist's order and a row opening its film, the viewer's zoom and window/level, the PDF report
downloaded and read back, and the offline promise: every request the page makes goes to the
dashboard's own host, and a cold load never shows raw page names.
"""

import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import test_app_screen as shared
from servers import CHROMIUM, CHROMIUM_ARGS, running_dashboard
from test_app_screen import SAMPLE
from tools import under_ci

from ui import screening_view

pytestmark = [pytest.mark.slow, pytest.mark.browser]
seed = shared.seed  # fixture: a registry trained once per test session

ROW_HEIGHT = 35  # st.dataframe's default row (and header) height in pixels
RAW_PAGE_NAMES = {"screen", "evaluation", "retrain", "model"}  # the pages/ file stems


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        message = f"Debian chromium is not installed at {CHROMIUM} (apt install chromium)"
        if under_ci():
            pytest.fail(message)  # in CI a missing browser must fail, never pass as a skip
        pytest.skip(message)
    return CHROMIUM


def dashboard(seed, folder: Path):
    """A dashboard on a copy of the session's registry, with no admin and no secrets."""
    models = folder / "models"
    shutil.copytree(seed, models)
    env = {
        **os.environ,
        "CXR_MODELS_DIR": str(models),
        "CXR_JOBS_DIR": str(folder / "jobs"),
        "CXR_SECRETS_FILE": str(folder / "no-secrets.toml"),
        "CXR_USERS_FILE": str(folder / "no-admin-users.toml"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("CXR_ADMIN_PASSWORD", None)
    return running_dashboard(folder / "streamlit.log", env)


@pytest.fixture(scope="module")
def server(seed, tmp_path_factory):
    """One dashboard for the file's tests, as a clinic runs one for all its readers: each test opens
    its own browser page, so its own Streamlit session (worklist, choices); none changes the registry.
    Starting one per test cost about 7 s each (start, first script run, stop)."""
    with dashboard(seed, tmp_path_factory.mktemp("dashboard")) as url:
        yield url


@pytest.fixture
def fresh_server(seed, tmp_path):
    """A dashboard that has served nothing yet: for what a cold start must get right."""
    with dashboard(seed, tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(autouse=True)
def pages_closed_after_each_test(browser):
    """Each test's pages and their websockets are closed after it: the shared dashboard then serves only
    the next test's page (Streamlit drops a closed page's session later, on its own clock)."""
    yield
    for context in browser.contexts:
        context.close()


def films() -> list[str]:
    return [str(p) for p in sorted(SAMPLE.rglob("*.png"))[:6]]


def upload_and_wait(page, paths: list[str]) -> None:
    from playwright.sync_api import expect

    page.locator("input[type=file]").set_input_files(paths)
    metric = page.get_by_test_id("stMetricLabel").get_by_text("TB probability", exact=True)
    expect(metric).to_have_count(1, timeout=120_000)
    page.wait_for_function(
        "() => document.querySelector('.js-plotly-plot')?.data?.[0]?.source", timeout=60_000
    )


def wait_for_rows(page, count: int) -> None:
    """The data grid draws its accessible table a moment after the rest of the page: wait for the rows."""
    page.wait_for_function(
        "(count) => document.querySelectorAll('[data-testid=stDataFrame] table tbody tr').length >= count",
        arg=count,
        timeout=60_000,
    )


def grid_column(page, column: int) -> list[str]:
    """A column of the worklist as the data grid's accessible table holds it (visible rows)."""
    return page.evaluate(
        """(column) => [...document.querySelectorAll('[data-testid=stDataFrame] table tbody tr')]
            .map(row => row.querySelector(`td[aria-colindex="${column}"]`)?.textContent ?? '')""",
        column,
    )


def viewer(page, expression: str):
    return page.evaluate(
        f"() => {{ const g = document.querySelector('.js-plotly-plot'); return {expression}; }}"
    )


def test_worklist_is_in_risk_order_and_a_row_opens_its_film(server, browser, tmp_path):
    from playwright.sync_api import expect

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    upload_and_wait(page, [str(broken), *films(), films()[0]])  # the first film twice
    expect(page.get_by_text("was dropped twice").or_(page.get_by_text("is the same file as"))).to_be_visible()
    wait_for_rows(page, 7)

    files, groups = grid_column(page, 1), grid_column(page, 2)
    probabilities = [float(p) if p else None for p in grid_column(page, 3)]
    assert len(files) == 7 and files[-1] == "film-01"  # 6 films once each, unreadable last; named by position
    assert set(groups) <= set(screening_view.RESULTS)  # the one result vocabulary
    ranks = [screening_view.RISK_ORDER.index(g.split(" (")[0]) for g in groups]  # Borderline (which side)
    assert ranks == sorted(ranks), groups
    by_group: dict[str, list[float]] = {}
    for group, probability in zip(groups[:-1], probabilities[:-1], strict=True):  # the unreadable one last
        by_group.setdefault(group.split(" (")[0], []).append(probability)  # Borderline (above/below) is one group
    assert max(len(values) for values in by_group.values()) >= 2  # 6 films, 3 groups: an order to check
    for group, values in by_group.items():
        assert values == sorted(values, reverse=True), (group, values)  # within a group, highest first

    # the highest-risk film is open; choosing the third row opens that one
    header = page.locator("h4").filter(has_text=files[0])
    expect(header).to_be_visible()
    canvas = page.get_by_test_id("data-grid-canvas").first.bounding_box()
    row = 2
    page.mouse.click(canvas["x"] + 18, canvas["y"] + ROW_HEIGHT * (row + 1) + ROW_HEIGHT / 2)
    expect(page.locator("h4").filter(has_text=files[row])).to_be_visible(timeout=30_000)

    # filtering to one result group keeps only its rows
    only = screening_view.GROUP_FAILED
    for group in screening_view.RISK_ORDER:
        if group != only:
            page.get_by_test_id("stButtonGroup").get_by_text(group, exact=True).click()
            page.wait_for_timeout(300)
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=stDataFrame] table tbody tr').length === 1",
        timeout=30_000,
    )
    assert grid_column(page, 1) == ["film-01"]


def test_viewer_zooms_and_changes_window_level(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    upload_and_wait(page, films()[:1])
    full = viewer(page, "g._fullLayout.xaxis.range.slice()")
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 120, cy - 120)
    page.mouse.down()
    page.mouse.move(cx, cy, steps=8)
    page.mouse.move(cx + 60, cy + 60, steps=8)
    page.mouse.up()
    page.wait_for_function(
        f"() => {{ const r = document.querySelector('.js-plotly-plot')._fullLayout.xaxis.range;"
        f" return r[1] - r[0] < {(full[1] - full[0]) * 0.6}; }}",
        timeout=15_000,
    )
    zoomed = viewer(page, "g._fullLayout.xaxis.range.slice()")
    assert zoomed[1] - zoomed[0] < (full[1] - full[0]) * 0.6

    def state() -> str:
        """What the controls set in the browser: the window filter, the layers' style, the picture sent."""
        return viewer(
            page,
            "[document.getElementById('cxr-window')?.innerHTML, [...document.querySelectorAll('style')]"
            ".map(s => s.textContent).filter(t => t.includes('cxr-window')).join(), g.data[0].source.length].join('|')",
        )

    def redrawn_keeping_zoom(change) -> None:
        """Change a control, wait until the browser applies it, and check the zoom is still the reader's."""
        before = state()
        source = viewer(page, "g.data[0].source")
        change()
        page.wait_for_function(
            """(before) => { const g = document.querySelector('.js-plotly-plot');
                const now = [document.getElementById('cxr-window')?.innerHTML, [...document.querySelectorAll('style')]
                  .map(s => s.textContent).filter(t => t.includes('cxr-window')).join(), g.data[0].source.length]
                  .join('|');
                return now !== before; }""",
            arg=before,
            timeout=60_000,
        )
        page.wait_for_timeout(500)
        kept = viewer(page, "g._fullLayout.xaxis.range.slice()")
        assert kept == pytest.approx(zoomed, abs=1.0), (kept, zoomed)
        assert viewer(page, "g.data[0].source") == source  # the same film layer: only its style changed

    def press(label: str, key: str) -> None:
        slider = page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider")
        slider.focus()
        for _ in range(5):
            slider.press(key)

    redrawn_keeping_zoom(lambda: press("Window (contrast)", "PageDown"))
    # the window is applied to the film layer by an SVG filter with apply_window's slope
    slope = float(viewer(page, "document.querySelector('#cxr-window feFuncR').getAttribute('slope')"))
    assert slope > 1.05  # a narrower window than the film's own 256 greys: more contrast
    assert viewer(page, "getComputedStyle(g.querySelector('g.imagelayer > g image')).filter") == 'url("#cxr-window")'
    redrawn_keeping_zoom(lambda: press("Level (brightness)", "PageUp"))
    redrawn_keeping_zoom(lambda: press("Heatmap opacity", "PageUp"))
    redrawn_keeping_zoom(lambda: page.get_by_text("Heatmap", exact=True).click())


def test_the_worklist_survives_a_page_change_and_can_be_cleared(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    upload_and_wait(page, films()[:3])
    wait_for_rows(page, 3)
    before = grid_column(page, 1)
    page.locator("[data-testid=stSidebar] a").filter(has_text="Evaluation").click()
    expect(page.get_by_text("How well does the model work?")).to_be_visible(timeout=60_000)
    page.locator("[data-testid=stSidebar] a").filter(has_text="Screen X-rays").click()
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    wait_for_rows(page, 3)
    assert grid_column(page, 1) == before  # the same films, in the same order, without dropping them again
    expect(page.get_by_test_id("stMetricLabel").get_by_text("TB probability", exact=True)).to_have_count(1)

    page.get_by_role("button", name="Clear the worklist").click()
    expect(page.get_by_test_id("stDataFrame")).to_have_count(0, timeout=30_000)
    expect(page.get_by_text("Results use model")).to_be_visible()


def test_the_ticked_row_is_the_film_shown(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    upload_and_wait(page, films()[:4])
    wait_for_rows(page, 4)
    files = grid_column(page, 1)

    def ticked() -> list[int]:
        return page.evaluate(
            """() => [...document.querySelectorAll('[data-testid=stDataFrame] table tbody tr')]
                .map((row, i) => row.getAttribute('aria-selected') === 'true' ? i : -1).filter(i => i >= 0)"""
        )

    expect(page.locator("h4").filter(has_text=files[0])).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stDataFrame] table tbody tr')]"
        ".some(r => r.getAttribute('aria-selected') === 'true')",
        timeout=30_000,
    )
    assert ticked() == [0]
    canvas = page.get_by_test_id("data-grid-canvas").first.bounding_box()
    page.mouse.click(canvas["x"] + 18, canvas["y"] + ROW_HEIGHT * 3 + ROW_HEIGHT / 2)  # the third row
    expect(page.locator("h4").filter(has_text=files[2])).to_be_visible(timeout=30_000)
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=stDataFrame] table tbody tr')[2]"
        "?.getAttribute('aria-selected') === 'true'",
        timeout=30_000,
    )
    assert ticked() == [2]


def test_the_viewer_fits_a_1366x768_laptop_screen(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(server)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    upload_and_wait(page, films()[:1])
    controls = page.get_by_test_id("stSlider").filter(has_text="Window (contrast)")
    controls.evaluate("e => e.scrollIntoView({block: 'start'})")  # the controls at the top of the screen
    page.wait_for_timeout(500)
    plot = page.locator(".js-plotly-plot").first.bounding_box()
    slider = controls.bounding_box()
    assert slider["y"] >= -1 and plot["y"] + plot["height"] <= 768, (slider, plot)
    assert plot["x"] >= 0 and plot["x"] + plot["width"] <= 1366, plot


def test_pdf_report_downloads_and_reads_back(server, browser):
    from playwright.sync_api import expect
    from pypdf import PdfReader

    page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
    page.goto(server)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    film = films()[0]
    upload_and_wait(page, [film])
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Report (PDF)").click()
    data = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename == "film-01_tb_report.pdf"  # identity off: named by position
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert "film-01" in text and "TB probability" in text and "Model version" in text
    assert any(result in text for result in screening_view.RESULTS)
    assert "Not a medical device" in text

    with page.expect_download(timeout=120_000) as batch:
        page.get_by_role("button", name="Download all reports (PDF, zip)").click()
    with zipfile.ZipFile(Path(batch.value.path())) as archive:
        names = archive.namelist()
        assert names == ["film-01_tb_report.pdf", "tb_screening_results.csv"]
        zipped = PdfReader(io.BytesIO(archive.read(names[0]))).pages[0].extract_text()
        assert "film-01" in zipped and "Not a medical device" in zipped
        assert "film-01" in archive.read(names[1]).decode("utf-8-sig")


def test_nothing_leaves_the_server_and_no_raw_page_names_show(fresh_server, browser):
    server = fresh_server
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))

    def only_local(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            route.abort()  # recorded above; an offline clinic would not get an answer either

    context.route("**/*", only_local)
    page = context.new_page()
    page.goto(server, wait_until="commit")
    seen: set[str] = set()
    title = page.get_by_text("Screen chest X-rays for tuberculosis")
    for _ in range(600):  # sample the sidebar from the first paint until the page is drawn
        sidebar = page.locator("[data-testid=stSidebar]")
        if sidebar.count():
            seen.update(line.strip() for line in sidebar.first.inner_text().splitlines())
        if title.count() and page.locator("[data-testid=stSidebar] a").count() >= 4:
            break
        page.wait_for_timeout(50)
    expect(title).to_be_visible(timeout=60_000)
    assert not (seen & RAW_PAGE_NAMES), f"raw page names shown on a cold load: {seen & RAW_PAGE_NAMES}"
    assert "Evaluation" in page.locator("[data-testid=stSidebar]").inner_text()

    upload_and_wait(page, films()[:2])
    page.locator("[data-testid=stSidebar] a").filter(has_text="Evaluation").click()
    expect(page.get_by_text("How well does the model work?")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(1500)

    icons = page.evaluate("() => [...document.querySelectorAll('link[rel*=icon]')].map(l => l.href)")
    assert icons and all(href.startswith(server) or href.startswith("data:") for href in icons), icons
    outside = sorted({u for u in requests if not u.startswith((server, "data:", "blob:"))})
    assert not outside, f"requests left the server: {outside}"
    assert len(requests) > 10  # the log really recorded the page's traffic
    context.close()


def test_the_lung_outline_is_drawn_over_the_film_and_can_be_hidden(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
    upload_and_wait(page, films()[:1])
    outline = "g.data.filter(t => t.type === 'scatter' && t.mode === 'lines').map(t => t.x.length)"
    page.wait_for_function(
        "() => !!document.querySelector('.js-plotly-plot')?.data?.some(t => t.type === 'scatter')", timeout=60_000
    )
    lungs = viewer(page, outline)
    assert 1 <= len(lungs) <= 2 and min(lungs) >= 10, lungs  # one closed line per lung field
    page.get_by_test_id("stCheckbox").filter(has_text="Lung outline").or_(
        page.locator("label").filter(has_text="Lung outline")
    ).first.click()
    # hidden by the browser (the figure, and so the zoom, stays): the outline's layer is not displayed
    page.wait_for_function(
        "() => { const l = document.querySelector('.js-plotly-plot g.scatterlayer');"
        " return !!l && getComputedStyle(l).display === 'none'; }",
        timeout=60_000,
    )
    assert viewer(page, outline) == lungs
