"""Which received films the node must not screen, decided from the header before anything is kept.

The model was trained on frontal chest radiographs shown for reading. A lateral view, a For Processing
(raw detector) image, a mammogram or a CT slice would still get a probability, and a confident-looking
number on a film it cannot judge is worse than none. Reasons name the kind of film, never the patient.
Films that pass here can still be refused by the screening itself (unreadable pixels, no plausible
pair of lung fields).
"""

from __future__ import annotations

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SCREENED_CLASSES = {CR, DX_FOR_PRESENTATION}
LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LLO", "RLO"}
CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LUNG"}


def _text(ds, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional element: treat it as absent
        return ""
    return str(value or "").strip().upper()


def refusal_reason(ds) -> str | None:
    """Why this film is not to be screened, or None when it is a frontal chest CR/DX film for reading."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = _text(ds, "Modality")
    if sop_class == DX_FOR_PROCESSING or _text(ds, "PresentationIntentType") == "FOR PROCESSING":
        return "For Processing image (raw detector data, not meant for reading)"
    if sop_class not in SCREENED_CLASSES:
        return f"not a CR/DX radiograph (modality {modality or 'unknown'})"
    if modality and modality not in ("CR", "DX"):
        return f"not a CR/DX radiograph (modality {modality})"
    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part not in CHEST_PARTS:
        return f"body part {body_part}, not chest"
    view = _text(ds, "ViewPosition")
    if view in LATERAL_VIEWS:
        return "lateral view (only frontal PA/AP chest films are screened)"
    return None
