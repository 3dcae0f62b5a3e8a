"""One-page PDF report per screened film, and a zip of them for a batch (matplotlib, no streamlit).

The page holds the film, its Grad-CAM overlay, the probability, the decision, the threshold, the model
version, the date, the patient's identity when the user switched it on, and the disclaimer. Text is
written with TrueType fonts (not Type 3) so it can be searched, copied and read back by tests.
"""

from __future__ import annotations

import datetime as _dt
import io
import zipfile

import numpy as np

from cxr_core.modelling.gradcam import overlay
from cxr_core.modelling.predictor import ScreenedImage
from ui import screening_view

A4_INCHES = (8.27, 11.69)
REPORT_SIDE = 1024  # pictures in the PDF: sharp when printed at the width of half a page


LEFT, LABEL_WIDTH, RIGHT = 0.06, 0.24, 0.95  # page fractions: label column, value column up to RIGHT
BOTTOM = 0.085  # the disclaimer sits below this line; nothing else may
MAX_VALUE_LINES = 6  # a longer message is cut with an ellipsis rather than run into what follows


def film_report_pdf(
    item: ScreenedImage,
    *,
    model_version: str,
    include_identifiers: bool = False,
    created: _dt.datetime | None = None,
    alpha: float = 0.4,
    site: dict | None = None,
    fitted: bool = False,
    evidence_reference: dict | None = None,
) -> bytes:
    """The report as PDF bytes. Identity is printed only when ``include_identifiers`` is True."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = report_figure(
            item, model_version=model_version, include_identifiers=include_identifiers, created=created,
            alpha=alpha, site=site, fitted=fitted, evidence_reference=evidence_reference,
        )  # fmt: skip
        buffer = io.BytesIO()
        fig.savefig(buffer, format="pdf", metadata={"Title": f"TB screening report: {item.name}"})
    return buffer.getvalue()


_RC = {"pdf.fonttype": 42, "font.family": "DejaVu Sans", "font.size": 10}


def report_figure(
    item: ScreenedImage,
    *,
    model_version: str,
    include_identifiers: bool = False,
    created: _dt.datetime | None = None,
    alpha: float = 0.4,
    site: dict | None = None,
    fitted: bool = False,
    evidence_reference: dict | None = None,
):
    """The report page as a matplotlib Figure, laid out top to bottom by measured text heights.

    Every text is wrapped to its column by measuring it with the renderer (a file name without spaces
    included) and the next line starts below the previous one's measured box, so no two texts overlap
    whatever their length; a value longer than ``MAX_VALUE_LINES`` lines is cut with an ellipsis.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    created = created or _dt.datetime.now().astimezone()
    fig = Figure(figsize=A4_INCHES)
    renderer = FigureCanvasAgg(fig).get_renderer()  # measures text as it will be laid out
    y = 0.965

    def put(x: float, top: float, text: str, width: float, **style) -> float:
        """Write ``text`` wrapped to ``width`` (page fraction) with its top at ``top``; return its bottom."""
        artist = fig.text(x, top, "", va="top", **style)
        artist.set_text(_wrap_to(artist, text, width, renderer, fig))
        box = artist.get_window_extent(renderer).transformed(fig.transFigure.inverted())
        return box.y0

    y = put(LEFT, y, "TB chest X-ray screening report", RIGHT - LEFT, fontsize=17, weight="bold") - 0.008
    y = put(LEFT, y, f"File: {item.name}", RIGHT - LEFT, fontsize=10) - 0.004
    y = put(LEFT, y, f"Report created {created:%Y-%m-%d %H:%M %Z}".rstrip(), RIGHT - LEFT, fontsize=9,
            color="#52606d") - 0.012  # fmt: skip

    if item.ok and item.image is not None and item.prediction is not None:
        height = 0.34
        y = _pictures(fig, item, alpha, top=y, height=height) - 0.012

    lines = _result_lines(item, model_version, site, fitted, evidence_reference)
    if include_identifiers:
        found = screening_view.identity_lines(item)
        lines += [("Patient identity", "")] + (found or [("", "none recorded in this file")])
    warnings = item.warnings if item.ok else []
    lines += [("Warning", warning) for warning in warnings[:4]]
    for label, value in lines:
        if y < BOTTOM + 0.03:
            put(LEFT, y, "(more on screen: the page is full)", RIGHT - LEFT, fontsize=8, style="italic")
            break
        if label and not value:
            y = put(LEFT, y, label, RIGHT - LEFT, fontsize=11, weight="bold") - 0.006
            continue
        colour = "#8d2a00" if label in ("Warning", "Evidence warning", "Borderline") else "black"
        bottom_label = put(LEFT, y, f"{label}:" if label else "", LABEL_WIDTH - 0.01, fontsize=10, weight="bold",
                           color=colour)  # fmt: skip
        bottom_value = put(LEFT + LABEL_WIDTH, y, value, RIGHT - LEFT - LABEL_WIDTH, fontsize=10, color=colour)
        y = min(bottom_label, bottom_value) - 0.006
    put(LEFT, BOTTOM - 0.01, screening_view.DISCLAIMER, RIGHT - LEFT, fontsize=8.5, color="#3e4c59", style="italic")
    return fig


def _wrap_to(artist, text: str, width: float, renderer, fig) -> str:
    """``text`` broken into lines that fit ``width`` of the page (measured, long words broken too)."""
    import textwrap

    if not text:
        return ""
    page_width = fig.bbox.width
    chars = max(8, int(len(text) * 1.0))
    while True:
        lines = textwrap.wrap(text, width=chars, break_long_words=True, break_on_hyphens=True) or [""]
        if len(lines) > MAX_VALUE_LINES:
            lines = lines[:MAX_VALUE_LINES]
            lines[-1] = lines[-1][: max(1, len(lines[-1]) - 1)] + "…"
        artist.set_text("\n".join(lines))
        if artist.get_window_extent(renderer).width <= width * page_width or chars <= 8:
            return "\n".join(lines)
        chars = max(8, int(chars * 0.85))


def _pictures(fig, item: ScreenedImage, alpha: float, top: float, height: float) -> float:
    """The film and its Grad-CAM side by side below ``top``, with the lung outline; returns their bottom."""
    gray = item.image.pixels
    small = _fit(gray)
    heat = overlay(gray, item.prediction.heatmap, item.box, alpha, max_side=REPORT_SIDE)
    title_room = 0.025
    bottom = top - height
    film_ax = fig.add_axes((0.05, bottom, 0.44, height - title_room))
    cam_ax = fig.add_axes((0.51, bottom, 0.44, height - title_room))
    film_ax.imshow(small, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    cam_ax.imshow(heat, interpolation="antialiased")
    fig.text(0.05, top, "Film, lung fields outlined", fontsize=9, va="top")
    fig.text(0.51, top, "Grad-CAM in TB-probability units", fontsize=9, va="top")
    for ax, shape in ((film_ax, small.shape), (cam_ax, heat.shape)):
        ax.set_xticks([])
        ax.set_yticks([])
        for points in screening_view.lung_contours(item, shape[:2]) or []:
            closed = np.vstack([points, points[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color="#39d353", linewidth=1.2)
        ax.set_xlim(-0.5, shape[1] - 0.5)
        ax.set_ylim(shape[0] - 0.5, -0.5)
    return bottom


def _result_lines(
    item: ScreenedImage,
    model_version: str,
    site: dict | None = None,
    fitted: bool = False,
    evidence_reference: dict | None = None,
) -> list[tuple[str, str]]:
    if not item.ok or item.prediction is None:
        return [("Result", screening_view.DECISION_FAILED), ("Problem", str(item.error or "unknown"))]
    prediction = item.prediction
    shown, limit = screening_view.fmt_probability(prediction.probability, prediction.threshold)
    decision = screening_view.decision_text(item)
    lines = [
        ("Result", decision),
        ("Action", screening_view.ACTIONS[decision]),
        ("TB probability", shown),
        ("Threshold", f"TB suspected at {limit} or above"),
        ("Operating point", screening_view.site_text(site, prediction.threshold)),
        ("Model version", model_version),
    ]
    if screening_view.is_borderline(item):
        lines.append(("Borderline", "close to the threshold: read the film with particular care"))
    if fitted:
        lines.append(("Site profile", screening_view.FITTED_NOTE))
    evidence = screening_view.lung_evidence_text(item)
    if evidence:
        lines.append(("Evidence", evidence))
    unusual = screening_view.evidence_warning(item, evidence_reference)
    if unusual:
        lines.append(("Evidence warning", unusual))
    if item.image is not None:
        lines.append(("Image", f"{item.image.format}, {item.image.width} x {item.image.height} pixels"))
    return lines


def _fit(gray: np.ndarray) -> np.ndarray:
    from cxr_core.imaging.display import display_gray

    return display_gray(gray, REPORT_SIDE)


def report_name(item: ScreenedImage) -> str:
    return f"{screening_view.report_stem(item.name)}_tb_report.pdf"


def batch_zip(files: list[tuple[str, bytes]]) -> bytes:
    """(name, bytes) pairs as one zip; repeated names get a number so no report overwrites another."""
    buffer = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            unique, n = name, 1
            while unique in used:
                n += 1
                stem, dot, ext = name.rpartition(".")
                unique = f"{stem}_{n}.{ext}" if dot else f"{name}_{n}"
            used.add(unique)
            archive.writestr(unique, data)
    return buffer.getvalue()
