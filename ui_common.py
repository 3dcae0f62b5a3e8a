"""Widgets shared by the dashboard pages: the cached model, the sidebar, the admin gate, the charts.

Only layout lives here; what is shown is computed in the view-models of :mod:`ui`.
"""

from __future__ import annotations

import sys
import time
import uuid

import altair as alt
import pandas as pd
import streamlit as st

from cxr_core import auth
from cxr_core.errors import CxrError
from cxr_core.registry.store import Registry
from ui import screening_view

ADMIN_KEY = "admin_unlocked"  # the logged-in administrator's user name, or None
ADMIN_SEEN_KEY = "admin_last_seen"  # monotonic time of the last page run with the admin unlocked


def _keep_tensorflow_state_between_runs() -> None:
    """Stop Streamlit from clearing the Keras session after every script run.

    Streamlit does that for apps that build Keras models inside the script. Here the models are loaded
    once per process (``st.cache_resource``) and no script run builds a layer, so the clearing only
    threw away TensorFlow's kernel cache and ran a full garbage collection over TensorFlow's half a
    million objects: measured 0.24 s for the clearing and 0.13 s more on the next scoring, after every
    click (see docs/performance.md). The other half of that clean-up (closing pyplot figures) is kept.
    """
    from streamlit.runtime.scriptrunner import script_runner

    if not hasattr(script_runner, "_clean_problem_modules"):  # a Streamlit without it: nothing to undo
        return

    def close_pyplot_figures() -> None:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")

    script_runner._clean_problem_modules = close_pyplot_figures


_keep_tensorflow_state_between_runs()


@st.cache_resource(max_entries=3, show_spinner="Loading the model (first use only)…")
def load_predictor(model_dir: str, sha256: str, tflite_sha256: str | None = None):
    """One Predictor per model file (and serving twin) per server process; a promotion or a conversion
    changes the key, not the server."""
    from cxr_core.modelling.predictor import Predictor

    return Predictor(model_dir)


def predictor_for(serving: screening_view.ServingModel):
    predictor = load_predictor(str(serving.model_dir), serving.sha256, serving.tflite_sha256)
    predictor.use_site(serving.site)  # the server-wide site profile; cheap, and follows a switch at once
    return predictor


def registry() -> Registry:
    return Registry()


def serving_model_or_none() -> tuple[screening_view.ServingModel | None, str | None]:
    """The model in use, or None and the reason (shown in place of results)."""
    try:
        return screening_view.serving_model(registry()), None
    except CxrError as error:
        return None, str(error)


def sidebar(pages=()) -> None:
    serving, problem = serving_model_or_none()
    with st.sidebar:
        for page in pages:
            st.page_link(page)
        if pages:
            st.divider()
        st.markdown("### Model in use")
        if serving is None:
            st.error(problem)
        else:
            st.markdown(f"**Version** `{serving.version}`  \n**Operating threshold** {serving.threshold:.4g}")
            st.caption("Decided at the " + screening_view.site_text(serving.site, serving.threshold) + ".")
            if serving.warning:
                st.warning(serving.warning)
        st.caption(screening_view.DISCLAIMER)


_MARKDOWN_SPECIALS = set("\\`*_{}[]()#+-.!|<>~$:")


def md(text: object) -> str:
    """User-controlled text (file names, DICOM fields) shown literally inside markdown."""
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in str(text))


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------- admin


def client_address() -> str | None:
    """The browser's address: the configured trusted proxy header, else Streamlit's peer address."""
    peer = getattr(st.context, "ip_address", None)
    try:
        headers = dict(st.context.headers or {})
    except Exception:  # no request context (AppTest, a bare script run)
        headers = {}
    return auth.client_address(peer if isinstance(peer, str) and peer else None, headers)


def client_keys() -> tuple[str, ...]:
    """Who is asking, for per-client throttling: this browser session and, when known, its address."""
    token = st.session_state.setdefault("_client_token", uuid.uuid4().hex)
    keys = [f"session:{token}"]
    address = client_address()
    if address:
        keys.append(f"address:{address}")
    return tuple(keys)


def admin_user() -> str | None:
    """The administrator logged in on this browser session, or None (never logged in, locked, or idle too long)."""
    user = st.session_state.get(ADMIN_KEY)
    if not user:
        return None
    now = time.monotonic()
    if auth.session_expired(st.session_state.get(ADMIN_SEEN_KEY), now):
        st.session_state[ADMIN_KEY] = None
        st.session_state["admin_expired"] = True
        return None
    st.session_state[ADMIN_SEEN_KEY] = now
    return user


def actor() -> str:
    """How the audit trail names an action taken from this browser session: the administrator, by name."""
    user = st.session_state.get(ADMIN_KEY)
    address = client_address()
    return f"dashboard:{user or 'anonymous'}" + (f"@{address}" if address else "")


def admin_gate(purpose: str) -> bool:
    """True while a named administrator is logged in on this browser session; otherwise the login form."""
    if admin_user():
        col_text, col_button = st.columns([4, 1])
        col_text.caption(
            f"Admin actions unlocked for **{md(st.session_state[ADMIN_KEY])}** in this browser session "
            f"(locks after {auth.idle_timeout_s() / 60:.0f} minutes without use)."
        )
        if col_button.button("Lock", key="admin_lock"):
            st.session_state[ADMIN_KEY] = None
            st.rerun()
        return True
    problems = auth.startup_problems()
    for problem in problems:
        st.error(problem)
    if not auth.usable_users():
        st.info(f"{purpose} needs an administrator. {auth.how_to_configure()}")
        return False
    if st.session_state.pop("admin_expired", False):
        st.warning("The admin session was locked after a period without use. Log in again.")
    with st.form("admin_login", clear_on_submit=True):
        st.markdown(f"**{purpose} needs an administrator.** Screening and evaluation do not.")
        user = st.text_input("Admin user name", key="admin_user")
        password = st.text_input("Password", type="password", key="admin_password")
        submitted = st.form_submit_button("Unlock")
    if submitted:
        result = auth.check_login(user, password, client=client_keys())
        if result.ok:
            st.session_state[ADMIN_KEY] = result.user
            st.session_state[ADMIN_SEEN_KEY] = time.monotonic()
            st.rerun()
        st.error(result.message)
    return False


# ------------------------------------------------------------------------------------------ charts


def _ordered(rows: list[dict]) -> pd.DataFrame:
    """Keep the curve's own point order (Vega-Lite would otherwise sort by x and scramble ties)."""
    data = pd.DataFrame(rows)
    if "order" not in data:
        data["order"] = range(len(data))
    return data


def _chance_line() -> alt.Chart:
    """The dashed y = x line: a chance-level ROC curve, or perfect calibration."""
    return (
        alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]}))
        .mark_line(strokeDash=[4, 4], color="#9aa5b1")
        .encode(x="x", y="y")
    )


def _unit_lines(data: pd.DataFrame, x: str, x_title: str, y: str, y_title: str, **mark) -> alt.Chart:
    """A line chart on the unit square (probabilities, rates): both axes fixed to 0..1 so charts compare."""
    return (
        alt.Chart(data)
        .mark_line(**mark)
        .encode(
            x=alt.X(x, title=x_title, scale=alt.Scale(domain=[0, 1])),
            y=alt.Y(y, title=y_title, scale=alt.Scale(domain=[0, 1])),
        )
    )


def _bottom_legend(field: str, **scale) -> alt.Color:
    return alt.Color(field, scale=alt.Scale(**scale), legend=alt.Legend(orient="bottom", title=None))


def roc_chart(rows: list[dict], operating: tuple[float, float] | None = None) -> alt.Chart:
    curve = _unit_lines(
        _ordered(rows),
        "fpr", "1 − specificity (false-positive rate)", "tpr", "Sensitivity (true-positive rate)",
        color="#1f6f8b",
    ).encode(
        order="order",
        tooltip=[alt.Tooltip("threshold", format=".3f"), alt.Tooltip("tpr", format=".3f"), "fpr"],
    )  # fmt: skip
    layers = [_chance_line(), curve]
    if operating is not None:
        layers.append(_point(1 - operating[1], operating[0], "fpr", "tpr"))
    return alt.layer(*layers).properties(height=320)


def pr_chart(rows: list[dict]) -> alt.Chart:
    return (
        _unit_lines(
            _ordered(rows),
            "recall",
            "Sensitivity (recall)",
            "precision",
            "PPV (precision)",
            interpolate="step-after",
            color="#1f6f8b",
        )  # fmt: skip
        .encode(order="order")
        .properties(height=320)
    )


def calibration_chart(rows: list[dict]) -> alt.Chart:
    points = _unit_lines(
        pd.DataFrame(rows),
        "mean_predicted", "Predicted TB probability", "fraction_positive", "Observed fraction with TB",
        point=True, color="#1f6f8b",
    ).encode(
        tooltip=[
            "count",
            alt.Tooltip("mean_predicted", format=".2f"),
            alt.Tooltip("fraction_positive", format=".2f"),
        ]
    )  # fmt: skip
    return alt.layer(_chance_line(), points).properties(height=320)


def threshold_chart(rows: list[dict], threshold: float) -> alt.Chart:
    lines = _unit_lines(pd.DataFrame(rows), "threshold", "Threshold on TB probability", "value", "").encode(
        color=_bottom_legend("measure", range=["#1f6f8b", "#c26d1b"])
    )
    labels = ["WHO minimum sensitivity 90%", "WHO minimum specificity 70%"]
    who = pd.DataFrame({"value": [0.9, 0.7], "label": labels})
    rules = alt.Chart(who).mark_rule(strokeDash=[3, 3], color="#7b8794").encode(y="value", tooltip=["label"])
    here = pd.DataFrame({"threshold": [threshold]})
    marker = alt.Chart(here).mark_rule(color="#323f4b", strokeWidth=2).encode(x="threshold")
    return alt.layer(lines, rules, marker).properties(height=260)


def _point(x: float, y: float, xname: str, yname: str) -> alt.Chart:
    return (
        alt.Chart(pd.DataFrame({xname: [x], yname: [y], "label": ["operating point"]}))
        .mark_point(size=120, filled=True, color="#c26d1b")
        .encode(x=xname, y=yname, tooltip=["label"])
    )


def roc_compare_chart(rows: list[dict], versions: list[str]) -> alt.Chart:
    curves = _unit_lines(_ordered(rows), "fpr", "1 − specificity", "tpr", "Sensitivity").encode(
        order="order", color=_bottom_legend("version", domain=versions, range=["#1f6f8b", "#c26d1b"])
    )
    return alt.layer(_chance_line(), curves).properties(height=360)


# ------------------------------------------------------------------------------------------ viewer


VIEWER_HEIGHT = 560  # the viewer with its controls fits a 1366x768 laptop screen
VIEWER_BOX = "film_viewer"  # the container key: the viewer's style rules are scoped to it


COLORBAR_MARGIN = 180  # px right of the film: the colour bar with its ticks and its title above it


def film_figure(film, heat=None, contours=None, height: int = VIEWER_HEIGHT, film_key: str = "film"):
    """A zoomable, pannable view of one film: the film (gray), the Grad-CAM layer (RGBA) and the lung outline.

    The figure depends on the film alone. Window/level, heatmap opacity and the on/off switches are applied
    by the browser (:func:`viewer_style`), so changing them sends no new figure: Streamlit would mount a
    new chart for a new figure and the reader's zoom would be lost. Plotly's own tools do the rest: scroll
    or drag to zoom, the pan tool to move, double-click to reset. Each layer is one lossless PNG
    (:func:`screening_view.png_source`), so a 2048-px film stays light. The colour bar reads the heatmap's
    hues as TB probability (its units, see ``cxr_core.modelling.gradcam``).

    The right margin already holds the colour bar: with a narrower one Plotly measured the bar, widened
    the margin and drew the whole figure a second time, on every film shown (``autoexpand`` still widens
    it where a font is wider). Its tick labels cannot overflow that margin, so they are not measured
    label by label to be hidden (``ticklabeloverflow``).
    """
    import plotly.graph_objects as go

    axes = {"anchor": "y", "domain": [0.0, 1.0]}, {"anchor": "x", "domain": [0.0, 1.0]}  # as px.imshow set them
    figure = go.Figure(layout={"xaxis": axes[0], "yaxis": axes[1]})
    hover = "x %{x}, y %{y}<extra></extra>"
    figure.add_trace(go.Image(source=screening_view.png_source(film), name="0", hovertemplate=hover))
    if heat is not None:
        figure.add_trace(go.Image(source=screening_view.png_source(heat), name="0", hoverinfo="skip"))
    for points in contours or []:
        closed = list(points) + [points[0]]
        figure.add_trace(
            go.Scatter(
                x=[p[0] for p in closed],
                y=[p[1] for p in closed],
                mode="lines",
                line={"color": "#39d353", "width": 2},
                hoverinfo="skip",
                showlegend=False,
            )
        )
    if heat is not None:  # an empty heatmap trace that carries the colour bar of the overlay's jet colours
        figure.add_trace(
            go.Heatmap(
                z=[[0.0, 1.0]], zmin=0.0, zmax=1.0, opacity=0.0, colorscale="Jet", hoverinfo="skip", showscale=True,
                colorbar={"title": {"text": "Grad-CAM, TB probability"}, "thickness": 12, "len": 0.5,
                          "tickvals": [0, 0.25, 0.5, 0.75, 1], "ticklabeloverflow": "allow"},
            )
        )  # fmt: skip
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor="x")
    figure.update_layout(
        height=height, margin={"l": 0, "r": COLORBAR_MARGIN if heat is not None else 0, "t": 0, "b": 0},
        dragmode="zoom", uirevision=film_key,
    )  # fmt: skip
    return figure


def viewer_style(level: float, width: float, alpha: float, show_heatmap: bool, show_lungs: bool) -> str:
    """The viewer's controls as a style for the browser: an SVG filter doing window/level on the film layer
    (the same linear map as ``apply_window``), the heat layer's opacity, and what is switched off."""
    slope, intercept = screening_view.window_transfer(level, width)
    func = f'type="linear" slope="{slope:.6f}" intercept="{intercept:.6f}"'
    plot = f".st-key-{VIEWER_BOX} .js-plotly-plot"
    rules = [
        f"{plot} g.imagelayer > g:nth-child(1) image {{ filter: url(#cxr-window); }}",
        f"{plot} g.imagelayer > g:nth-child(2) image {{ opacity: {float(alpha):.3f}; }}",
    ]
    if not show_heatmap:
        rules += [f"{plot} g.imagelayer > g:nth-child(2) {{ display: none; }}", f"{plot} g.colorbar {{ display: none; }}"]
    if not show_lungs:
        rules.append(f"{plot} g.scatterlayer {{ display: none; }}")
    return (
        '<svg width="0" height="0" style="position:absolute" aria-hidden="true"><filter id="cxr-window" '
        f'color-interpolation-filters="sRGB"><feComponentTransfer><feFuncR {func}/><feFuncG {func}/>'
        f"<feFuncB {func}/></feComponentTransfer></filter></svg><style>{' '.join(rules)}</style>"
    )


VIEWER_CONFIG = {
    "scrollZoom": True,
    "displaylogo": False,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "toImage"],
    "modeBarButtonsToAdd": [],
}
