"""The check at a hospital in no data here: the model in use on that hospital's labelled films, judged
against its own experts' lung masks and lesion boxes by the targets of issue "See the disease".

Leave-one-source-out says how a recipe does at a hospital it never saw, but only among the hospitals of
the development data; a TB programme needs the same questions asked of the next hospital's films before
it trusts the tool there: does the model still separate TB from normal, and does its evidence still lie
in the lungs and on the lesions its radiologists marked? Every film goes through the serving path
(:meth:`Predictor.screen`), so what is measured is what that hospital's clinicians would see.

The lung fields come from the hospital's experts where a mask is given (a CSV of ``image,mask`` pairs,
as ``lungs/manifest.csv``), and from the lung model too, so the two can be compared: the product's own
evidence figures rest on the lung model. Lesion boxes come from ``lesions.csv`` beside the films (the
format of the development data). Nothing here trains or changes what the product decides.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from cxr_core import metrics
from cxr_core.errors import CxrError, DatasetError

# (what, where it is measured, figure, at least): the targets that one hospital's films can answer.
# Not here: the LOSO mean over hospitals, within-source AUC (a split of the development data), strips and
# markers (`evaluate` measures those on any ingest).
TARGETS = (
    ("ROC-AUC, all films of this set (the per-hospital LOSO target)", "roc_auc", "auc", 0.85),
    ("TB films: peak of evidence inside the experts' lung fields (grown 5 %)", "experts' lungs", "peak_in_lungs", 0.90),
    ("TB films: share of the map inside the experts' lung fields", "experts' lungs", "lung_share", 0.80),
    ("TB films: peak inside the lung model's fields (what the product reports)", "lung model", "peak_in_lungs", 0.90),
    ("TB films: share of the map inside the lung model's fields", "lung model", "lung_share", 0.80),
    ("lesion films: peak on a radiologist's box (pointing game)", "lesions", "pointing", 0.60),
    ("lesion films: mass on the boxes against an evenly spread map", "lesions", "lesion_vs_uniform", 2.0),
)  # fmt: skip

# per film: the served lung model's mask against the hospital's experts' mask, both at the film's size
EXPERTS_DICE = "lung model's dice with the experts"


def read_mask_manifest(path: str | Path) -> dict[str, str]:
    """Experts' lung masks: a CSV with ``image`` and ``mask`` columns, both relative to the CSV's folder
    (as ``lungs/manifest.csv``). Keyed by the image's real path, so a film is matched to its mask however
    the dataset names it. Films inside .zip archives are not matched (their masks are not looked for).
    """
    path = Path(path)
    folder = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns, rows = set(reader.fieldnames or ()), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"the mask list {path.name} cannot be read ({error})") from error
    if not {"image", "mask"} <= columns:
        raise DatasetError(f"the mask list {path.name} needs the columns image and mask (one row per film)")
    pairs = {}
    for line, row in enumerate(rows, start=2):
        if not row.get("image") or not row.get("mask"):
            raise DatasetError(f"the mask list {path.name}, line {line}: an image and a mask are both needed")
        pairs[os.path.realpath(folder / row["image"])] = str(folder / row["mask"])
    if not pairs:
        raise DatasetError(f"the mask list {path.name} names no masks")
    return pairs


def _expert_lungs(mask_file: str, item, roots: list[Path]) -> tuple[np.ndarray | None, str | None]:
    """The expert's mask (0/255) on the film's own pixel grid, or why it cannot be used.

    Only inside the dataset roots: a mask list must not make the server read, or reveal the existence
    of, any file it can reach.
    """
    import cv2

    from cxr_core.imaging.decode import read_image
    from cxr_core.pipeline.dataset_roots import real_path_inside

    if not real_path_inside(mask_file, roots):
        return None, "mask outside the configured dataset folders: not read"
    try:
        mask = read_image(mask_file).pixels  # the product's decoder: its size limits apply
    except (CxrError, OSError) as error:
        return None, f"mask unreadable ({error})"
    mask = np.where(mask > 0, 255, 0).astype(np.uint8)  # 0/1 and 0/255 masks alike
    if not mask.any():
        return None, "mask is empty"
    height, width = item.image.pixels.shape
    if mask.shape != (height, width):
        if abs(mask.shape[0] / mask.shape[1] - height / width) > 0.02:
            return None, f"mask is {mask.shape[1]}x{mask.shape[0]}, the film {width}x{height}"
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask, None


def film_measures(item, expert_mask: np.ndarray | None, boxes: list | None) -> dict:
    """One screened film's evidence: against the lung model's fields (as the product reports it), the
    experts' mask, and the radiologists' boxes, all in the network's view as evaluation measures them."""
    from cxr_core.modelling.evidence import film_evidence, lungs_in_view
    from cxr_core.modelling.lungs import dice
    from cxr_core.pipeline.ingest import boxes_in_view, lesion_mask

    raw, box = item.prediction.raw_heatmap, item.box
    out: dict = {"lung model": item.evidence}
    if raw is None:
        return out
    side = max(64, 8 * raw.shape[0])  # ScreenedImage.evidence's frame (the network's input for the shipped one)
    if expert_mask is not None:
        region = expert_mask[box.top : box.bottom, box.left : box.right]
        _, grown = lungs_in_view(region, max(item.image.pixels.shape), side)
        out["experts' lungs"] = film_evidence(raw, grown)
        if item.lung_mask is not None:  # how well the served lung model draws this hospital's lungs
            out[EXPERTS_DICE] = round(dice(item.lung_mask > 0, expert_mask > 0), 4)
    if boxes:
        lesions = lesion_mask(boxes_in_view(boxes, box, side), side)
        if lesions.any():
            out["lesions"] = film_evidence(raw, None, lesions)
    return out


def run_unseen_check(
    data_path: str | Path,
    predictor,
    masks: str | Path | None = None,
    sources: list[str] | None = None,
    n_boot: int = 1000,
    batch: int = 32,
) -> dict:
    """Score every labelled film of ``data_path`` (optionally only ``sources``) and judge it by the targets.

    Unreadable films, and films the serving path refuses (not a chest X-ray, no plausible lungs), are
    listed with their reason and left out, never fatal: the report says how many.
    """
    from cxr_core.pipeline.dataset_roots import allowed_bases
    from cxr_core.pipeline.datasets import discover, read_record_bytes
    from cxr_core.pipeline.evaluate import dataset_root
    from cxr_core.pipeline.ingest import read_lesion_boxes

    found = discover(data_path)
    records = [r for r in found.records if not sources or r.source in sources]
    if not records:
        wanted = f" of source {', '.join(sources)}" if sources else ""
        raise DatasetError(f"no labelled films{wanted} found in {Path(data_path).name}")
    try:
        lesion_boxes = {os.path.realpath(k): v for k, v in read_lesion_boxes(dataset_root(Path(data_path))).items()}
    except (KeyError, ValueError, TypeError, csv.Error) as error:
        raise DatasetError(f"lesions.csv beside the films cannot be read: it needs path,xmin,ymin,xmax,ymax ({error})") from error
    expert_masks = read_mask_manifest(masks) if masks else {}
    if expert_masks and not any(os.path.realpath(r.path) in expert_masks for r in records if not r.member):
        raise DatasetError(
            f"none of the {len(expert_masks)} images of the mask list is among these films: its image paths must "
            "be relative to the mask list's own folder (films inside a .zip are never matched to masks)"
        )
    roots = allowed_bases()
    skipped = [(path, reason) for path, reason in found.skipped]
    films: list[dict] = []
    for start in range(0, len(records), batch):
        chunk, named = [], []
        for record in records[start : start + batch]:
            try:
                named.append((record.name, read_record_bytes(record)))
                chunk.append(record)
            except (CxrError, OSError) as error:
                skipped.append((record.display_path, str(error)))
        for record, item in zip(chunk, predictor.screen(named), strict=True):
            if not item.ok:
                skipped.append((record.display_path, item.error))
                continue
            real = os.path.realpath(record.path) if not record.member else None
            mask, mask_problem = (None, None)
            if real in expert_masks:
                mask, mask_problem = _expert_lungs(expert_masks[real], item, roots)
            film = {
                "path": record.display_path,
                "source": record.source,
                "label": int(record.label),
                "probability": float(item.prediction.probability),
                **film_measures(item, mask, lesion_boxes.get(real)),
            }
            if mask_problem:
                film["mask_problem"] = mask_problem
            films.append(film)
    if not films:
        raise DatasetError(f"none of the {len(records)} films could be screened; the first reason: {skipped[0][1]}")
    report = judge(films, skipped, predictor, n_boot=n_boot)
    report["mask_list_images"] = len(expert_masks)
    return report


def judge(films: list[dict], skipped: list, predictor, n_boot: int = 1000) -> dict:
    """The report: accuracy with confidence intervals, where the evidence lies, each target met or not."""
    from cxr_core.modelling.evidence import summarise_evidence

    labels = np.array([film["label"] for film in films])
    scores = np.array([film["probability"] for film in films])
    both = 0 < labels.sum() < labels.size
    threshold = predictor.threshold
    accuracy = metrics.evaluate(labels, scores, threshold, sources=[f["source"] for f in films], n_boot=n_boot)
    tb = [film for film in films if film["label"] == 1]
    evidence = {
        "TB films, lung model": summarise_evidence([f["lung model"] for f in tb if f.get("lung model")]),
        "TB films, experts' lungs": summarise_evidence([f["experts' lungs"] for f in tb if "experts' lungs" in f]),
        "normal films, lung model": summarise_evidence(
            [f["lung model"] for f in films if f["label"] == 0 and f.get("lung model")]
        ),
        "lesion films": summarise_evidence([f["lesions"] for f in films if "lesions" in f]),
    }  # fmt: skip
    figures = {
        # one class alone has no ROC-AUC
        "roc_auc": {"auc": accuracy.get("roc_auc"), "auc_n": len(films), "auc_ci": accuracy.get("roc_auc_ci")}
        if both else {},
        "lung model": evidence["TB films, lung model"] or {},
        "experts' lungs": evidence["TB films, experts' lungs"] or {},
        "lesions": evidence["lesion films"] or {},
    }
    targets = []
    for what, group, key, least in TARGETS:
        value = figures[group].get(key)
        n = figures[group].get("lesion_share_n" if key == "lesion_vs_uniform" else key + "_n")
        ci = figures[group].get("auc_ci")
        if key in ("peak_in_lungs", "pointing") and value is not None and n:
            ci = list(metrics.wilson_interval(round(value * n), n))  # a share of films: Wilson, as the card
        low = (ci or [None])[0]
        targets.append({
            "target": what, "at_least": least, "measured": value, "n": n, "ci": ci,
            "met": None if value is None else bool(value >= least),
            # met by the figure, but its 95 % interval reaches below the target: not yet established
            "established": None if value is None or low is None else bool(low >= least),
        })  # fmt: skip
    return {
        "model_version": predictor.version,
        "threshold": threshold,
        "films": len(films),
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        "sources": sorted({film["source"] for film in films}),
        "with_expert_masks": sum("experts' lungs" in film for film in films),
        "mask_problems": sum("mask_problem" in film for film in films),
        "with_lesion_boxes": sum("lesions" in film for film in films),
        "lung_model_dice_with_experts": _spread([f[EXPERTS_DICE] for f in films if EXPERTS_DICE in f]),
        "accuracy": {key: accuracy.get(key) for key in
                     ("n", "prevalence", "roc_auc", "roc_auc_ci", "sensitivity", "sensitivity_ci",
                      "specificity", "specificity_ci")},  # fmt: skip
        "per_source_roc_auc": {
            source: values.get("roc_auc") for source, values in (accuracy.get("per_source") or {}).items()
        },
        "evidence": evidence,
        "targets": targets,
        "per_film": films,
    }


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"films": len(values), "mean": round(float(np.mean(values)), 4), "lowest": round(float(np.min(values)), 4)}


def report_lines(report: dict, json_written: bool = False) -> list[str]:
    """The report as a Markdown table a programme can paste into its decision record."""

    def shown(value, key: str) -> str:
        if value is None:
            return "not measurable here"
        return f"{value:.2f}x" if key == "lesion_vs_uniform" else f"{value:.3f}"

    acc = report["accuracy"]
    left_out = len(report["skipped"])
    lines = [
        f"Model {report['model_version']} on {report['films']} films ({', '.join(report['sources'])}); "
        f"{left_out} left out{' (every one with its reason in the JSON)' if json_written and left_out else ''}; "
        f"{report['with_expert_masks']} with experts' lung masks ({report.get('mask_list_images', 0)} in the list, "
        f"{report['mask_problems']} not usable), {report['with_lesion_boxes']} with lesion boxes.",
    ]
    for entry in report["skipped"][:5]:
        lines.append(f"- left out: {entry['path']}: {entry['reason']}")
    agreement = report.get("lung_model_dice_with_experts")
    if agreement:
        lines.append(
            f"The lung model against the experts' masks: Dice {agreement['mean']:.3f} on average, lowest "
            f"{agreement['lowest']:.3f}, over {agreement['films']} films."
        )
    if acc.get("roc_auc") is not None:
        low, high = acc.get("roc_auc_ci") or (None, None)
        interval = f" (95% CI {low:.3f}-{high:.3f})" if low is not None else ""
        lines.append(
            f"ROC-AUC {acc['roc_auc']:.3f}{interval}; at the threshold {report['threshold']:.4g}: "
            f"sensitivity {acc['sensitivity']:.3f}, specificity {acc['specificity']:.3f}."
        )
        per_source = {k: v for k, v in report["per_source_roc_auc"].items() if v is not None}
        if len(report["sources"]) > 1 and per_source:
            lines.append("Per source: " + ", ".join(f"{k} {v:.3f}" for k, v in per_source.items()) + ".")
    lines += ["", "| target | at least | measured (95% CI) | films | met |", "|---|---|---|---|---|"]
    for target in report["targets"]:
        key = next(k for w, _, k, _ in TARGETS if w == target["target"])
        if target["met"] is None:
            met = "–"
        elif not target["met"]:
            met = "**no**"
        else:
            met = "yes" if target["established"] in (True, None) else "not established (the interval reaches below)"
        least = f"{target['at_least']:.2f}x" if key == "lesion_vs_uniform" else f"{target['at_least']:.2f}"
        measured = shown(target["measured"], key)
        if target["ci"] and target["ci"][0] is not None:
            measured += f" ({target['ci'][0]:.3f}-{target['ci'][1]:.3f})"
        lines.append(f"| {target['target']} | {least} | {measured} | {target['n'] or '–'} | {met} |")
    return lines
