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
    from matplotlib.figure import Figure

    created = created or _dt.datetime.now().astimezone()
    with matplotlib.rc_context({"pdf.fonttype": 42, "font.family": "DejaVu Sans", "font.size": 10}):
        fig = Figure(figsize=A4_INCHES)
        fig.text(0.06, 0.955, "TB chest X-ray screening report", fontsize=17, weight="bold")
        fig.text(0.06, 0.93, f"File: {item.name}", fontsize=10)
        fig.text(
            0.06, 0.912, f"Report created {created:%Y-%m-%d %H:%M %Z}".rstrip(), fontsize=9, color="#52606d"
        )

        if item.ok and item.image is not None and item.prediction is not None:
            gray = item.image.pixels
            film_ax = fig.add_axes((0.05, 0.50, 0.44, 0.39))
            cam_ax = fig.add_axes((0.51, 0.50, 0.44, 0.39))
            small = _fit(gray)
            film_ax.imshow(small, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
            film_ax.set_title("Film", fontsize=10)
            heat = overlay(gray, item.prediction.heatmap, item.box, alpha, max_side=REPORT_SIDE)
            cam_ax.imshow(heat, interpolation="antialiased")
            cam_ax.set_title(
                "Grad-CAM in probability units: red only near 1; a low score stays clear", fontsize=9
            )
            for ax in (film_ax, cam_ax):
                ax.set_xticks([])
                ax.set_yticks([])

        lines = _result_lines(item, model_version, site, fitted, evidence_reference)
        if include_identifiers:
            found = screening_view.identity_lines(item)
            lines += [("Patient identity", "")] + (found or [("", "none recorded in this file")])
        y = 0.46
        for label, value in lines:
            if label and not value:
                fig.text(0.06, y, label, fontsize=11, weight="bold")
            else:
                fig.text(0.06, y, f"{label}:" if label else "", fontsize=10, weight="bold")
                fig.text(0.30, y, value, fontsize=10, wrap=True)
            y -= 0.024
        warnings = item.warnings if item.ok else []
        for warning in warnings[:4]:
            fig.text(0.06, y, f"Warning: {warning}", fontsize=9, color="#8d2a00", wrap=True)
            y -= 0.022
        fig.text(
            0.06, 0.05, screening_view.DISCLAIMER, fontsize=8.5, color="#3e4c59", wrap=True, style="italic"
        )
        buffer = io.BytesIO()
        fig.savefig(buffer, format="pdf", metadata={"Title": f"TB screening report: {item.name}"})
    return buffer.getvalue()


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
