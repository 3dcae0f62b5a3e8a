"""The model card written beside every registered version, generated from its own figures.

Hand-written cards drift from the model they describe; this one is rendered from the metadata, the
test report, the ingest summary and (when it was run) the leave-one-source-out report of the version,
so what a clinician reads on the Model page is what was measured. It names the training data by name,
layout and fingerprint, never by a path on the machine that trained it.
"""

from pathlib import Path

ORIGINAL = {"accuracy": 0.975, "tb_recall": 0.922, "tb_precision": 0.935}
LOSO_FILE = "loso.json"
LOSO_REFERENCE_FILE = "loso_reference.json"
INGEST_SUMMARY_FILE = "ingest_summary.json"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ci(interval) -> str:
    if not interval or interval[0] is None:
        return ""
    return f" (95% CI {interval[0]:.3f}–{interval[1]:.3f})"


def _spread(cell: dict | None) -> str:
    """``mean [min–max]`` over seeds."""
    if not cell:
        return "n/a"
    if cell.get("n", 1) == 1:
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} [{cell['min']:.3f}–{cell['max']:.3f}]"


def _model_line(metadata: dict) -> str:
    model = metadata["params"]["model"]
    side = metadata["input_side"]
    if model.get("architecture", "reference") == "reference":
        name = f"Reference CNN (Conv {'/'.join(map(str, model['filters']))}, Dense {model['dense_units']})"
    else:
        name = (
            f"Compact CNN ({len(model['filters'])} Conv-BN-ReLU stages of {'/'.join(map(str, model['filters']))} "
            f"filters, global average pooling, Dense {model['dense_units']})"
        )
    parameters = f", {metadata['parameters']:,} parameters" if metadata.get("parameters") else ""
    seconds = f" in {metadata['train_seconds']:.0f} s" if metadata.get("train_seconds") else ""
    return (
        f"{name}, dropout {model['dropout']}, input {side}x{side}x1{parameters}; trained {metadata['epochs_run']} "
        f"epochs{seconds} (best epoch {metadata['best_epoch']}), created {metadata['created']}."
    )


def _input_line(metadata: dict) -> list[str]:
    pre = metadata.get("preprocessing") or {}
    lung = pre.get("lung_model") or {}
    if not lung:
        return ["Input: the whole film (borders trimmed, centre square), 128 px, histogram-equalised."]
    what = (
        f"the lungs' box (grown by {pre.get('lung_margin', 0.08):.0%}, squared"
        + (", outside the lung fields blanked)" if pre.get("lung_mask") else ")")
        if pre.get("lung_crop")
        else "the whole film"
    )
    return [
        "",
        f"Input: {what}, 128 px, histogram-equalised; films without a plausible pair of lung fields are refused. "
        f"Lung model {lung.get('version')} (sha256 `{str(lung.get('sha256'))[:16]}`), required at serving; "
        "its training masks (Shenzhen, CC BY-NC-SA 4.0; JSRT/SCR, research only) make this model, too, "
        "for non-commercial research use.",
    ]


def _loso_section(loso: dict | None, reference: dict | None) -> list[str]:
    if not loso:
        return [
            "## At a hospital it never saw (leave-one-source-out)",
            "Not measured for this version: run `python -m cxr_core loso --data DATASET --out models/VERSION`.",
            "",
        ]
    lines = [
        "## At a hospital it never saw (leave-one-source-out)",
        "For each source with both classes, the same recipe was trained on all *other* sources (threshold",
        "chosen on their validation split) and tested on every film of the held-out source; films elsewhere",
        f"that duplicate a held-out film were left out of training. Seeds {loso.get('seeds')}: mean [min–max].",
        "",
        "| held-out source | films (TB) | recipe | ROC-AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|",
    ]
    for source, cell in sorted((loso.get("summary") or {}).get("loso", {}).items()):
        rows = [("shipped", cell)]
        ref = ((reference or {}).get("summary") or {}).get("loso", {}).get(source)
        if ref:
            rows.append(("original recipe, whole film", ref))
        for recipe, values in rows:
            lines.append(
                f"| {source} | {values['n']} ({values['n_tb']}) | {recipe} | {_spread(values['roc_auc'])} | "
                f"{_spread(values['sensitivity'])} | {_spread(values['specificity'])} |"
            )
    lines += _loso_evidence_lines(loso.get("summary") or {})
    within = (loso.get("summary") or {}).get("within", {})
    if within:
        lines += [
            "",
            "Beside it, the same recipe trained on the pooled train split and tested on each source's own",
            "test films (within-source): "
            + "; ".join(f"{source} {_spread(cell['roc_auc'])}" for source, cell in sorted(within.items()))
            + ".",
        ]
    return [*lines, ""]


def _mean(cell: dict | None, key: str) -> str:
    value = ((cell or {}).get(key) or {}).get("mean")
    return _fmt(value, 2)


def _loso_evidence_lines(summary: dict) -> list[str]:
    """Where each held-out hospital's evidence lay, and the shortcut audit beside the network."""
    folds = summary.get("loso") or {}
    if not any(cell.get("evidence_tb") or cell.get("shortcut_auc") for cell in folds.values()):
        return []
    lines = [
        "",
        "Where the evidence lay on the held-out hospital's films (Grad-CAM; lung fields grown by 5 % of the",
        "film's longer side), and the shortcut audit: a logistic regression on a 16x16 thumbnail of the whole",
        "film plus five intensity statistics, trained on the same split (how much needs no pathology at all).",
        "Means over seeds:",
        "",
        "| held-out source | TB films: mass in lungs | TB films: peak in lungs | normals: peak in lungs | "
        "film's outer band (TB) | shortcut audit ROC-AUC |",
        "|---|---|---|---|---|---|",
    ]
    for source, cell in sorted(folds.items()):
        tb, normal = cell.get("evidence_tb") or {}, cell.get("evidence_normal") or {}
        lines.append(
            f"| {source} | {_mean(tb, 'lung_share')} | {_mean(tb, 'peak_in_lungs')} | "
            f"{_mean(normal, 'peak_in_lungs')} | {_mean(tb, 'outer_band')} | {_spread(cell.get('shortcut_auc'))} |"
        )
    lesion = ((summary.get("lesion_test") or {}).get("loso") or {}).get("evidence_tb")
    if lesion:
        lines += [
            "",
            "On the lesion test set (TBX11K TB films whose radiologists' boxes and labels no training run saw),",
            f"over every fold and seed: the map's peak lies on a lesion box on {_mean(lesion, 'pointing')} of films; "
            f"the share of its mass on the boxes is {_mean(lesion, 'lesion_share')} against "
            f"{_mean(lesion, 'uniform_share')} for an evenly spread map ({_mean(lesion, 'lesion_vs_uniform')}x).",
        ]
    return lines


def render_model_card(
    metadata: dict,
    report: dict,
    ingest_summary: dict,
    loso: dict | None = None,
    loso_reference: dict | None = None,
) -> str:
    op = report
    counts = ingest_summary.get("counts", {})
    data_name = ingest_summary.get("data_name") or Path(str(ingest_summary.get("data_path"))).name
    lines = [
        f"# Model card: TB screening CNN {metadata.get('version') or '(candidate)'}",
        "",
        "## Intended use",
        "Decision support for research and demonstration: it flags frontal chest X-rays that may show",
        "tuberculosis so that a clinician can prioritise confirmatory testing. **It is not a medical device**,",
        "is not cleared for diagnosis, and must not be the only basis for a clinical decision.",
        "",
        "## Model",
        _model_line(metadata),
        *_input_line(metadata),
        "",
        "## Training data",
        f"Dataset `{data_name}` (layout: {ingest_summary.get('layout')}), "
        f"fingerprint `{ingest_summary.get('data_fingerprint', '')[:16]}`: {ingest_summary.get('images')} images used, "
        f"{ingest_summary.get('skipped')} skipped as unreadable; duplicates: {ingest_summary.get('duplicates')}.",
        "Split stratified by label and source, seeded, with duplicate groups kept on one side:",
        "",
        "| split | label | images by source |",
        "|---|---|---|",
    ]
    for split in ("train", "val", "test"):
        for label, by_source in counts.get(split, {}).items():
            detail = ", ".join(f"{source}: {n}" for source, n in by_source.items())
            lines.append(f"| {split} | {label} | {detail} |")
    lines += [
        "",
        "## Operating threshold",
        f"**{metadata['threshold']:.4f}**, chosen as the {metadata['threshold_rule']}. The test split played no part.",
        "",
        *_loso_section(loso, loso_reference),
        "## Test results (held-out split of the pooled sources: an upper bound)",
        f"- ROC-AUC {_fmt(report.get('roc_auc'))}{_ci(report.get('roc_auc_ci'))}; "
        f"PR-AUC {_fmt(report.get('pr_auc'))}{_ci(report.get('pr_auc_ci'))}",
        f"- At the threshold: sensitivity {_fmt(op.get('sensitivity'))}{_ci(op.get('sensitivity_ci'))}, "
        f"specificity {_fmt(op.get('specificity'))}{_ci(op.get('specificity_ci'))}, "
        f"PPV {_fmt(op.get('ppv'))}, NPV {_fmt(op.get('npv'))} "
        f"(TP {op.get('tp')}, FP {op.get('fp')}, TN {op.get('tn')}, FN {op.get('fn')})",
        f"- WHO minimum for a screening test (sensitivity >= 0.90, specificity >= 0.70) met on this split: "
        f"{'yes' if report.get('who_minimum_met') else 'no'}",
        f"- Brier score {_fmt(report.get('brier'))}, expected calibration error {_fmt(report.get('ece'))}",
    ]
    per_source = report.get("per_source") or {}
    if per_source:
        lines += [
            "",
            "### Per source (within-source ROC-AUC where a source has both classes)",
            "",
            "| source | n | TB | ROC-AUC | sensitivity | specificity |",
            "|---|---|---|---|---|---|",
        ]
        for source, values in sorted(per_source.items()):
            lines.append(
                f"| {source} | {values.get('n')} | {values.get('n_positive')} | "
                f"{_fmt(values.get('roc_auc'))}{_ci(values.get('roc_auc_ci'))} | "
                f"{_fmt(values.get('sensitivity'))} | {_fmt(values.get('specificity'))} |"
            )
    lines += _original_comparison(report)
    lines += _evidence_section(report)
    lines += _acquisition_section(report)
    lines += evidence_warning_paragraph(metadata)
    lines += [
        "",
        "## Known limits",
        "- **Sites.** `tbx11k` supplies only TB films and `openist` only normals: on those, a network can",
        "  separate the classes by recognising the source. Pooled test figures are an upper bound; the",
        "  leave-one-source-out table is the estimate for a new hospital. Validate on films from the clinic",
        "  where it will be used, and choose the threshold there, before relying on it.",
        "- Small test splits per source: read the confidence intervals, not the point estimates.",
        "- Adults' frontal (PA/AP) radiographs only; lateral views, children and non-chest images are out of scope.",
        "  Inputs far from the training images in the model's feature space are flagged with a warning.",
        "- Grad-CAM shows where the network's evidence for TB lies (at the last convolution's resolution),",
        "  drawn in units of the film's TB probability: a film scored 0.07 shows almost no colour, red only",
        "  near 1. It is not a lesion outline; how much of it lies in the lungs is under \"Where the evidence lies\".",
        "",
        "## Retraining",
        "Set `data.path` in `params.yaml` and run `dvc repro`, or run",
        "`python -m cxr_core pipeline --data /path/to/dataset`, or use the dashboard's Retrain page. A new",
        "version is promoted only when it passes the quality gate.",
        "",
    ]
    return "\n".join(lines)


def evidence_warning_paragraph(metadata: dict) -> list[str]:
    """How the Screen page decides that a film's evidence is unusual, from ``evidence_reference`` in the
    metadata; without that key no film is warned about, and the card says so."""
    reference = metadata.get("evidence_reference")
    if not isinstance(reference, dict) or reference.get("lung_share_p05") is None:
        return [
            "",
            "**When a film's evidence is called unusual.** This version records no reference for the share of",
            "Grad-CAM evidence inside the lung fields, so the Screen page shows that share as information only",
            "and warns about no film.",
        ]
    how = str(reference.get("how") or "").strip()
    return [
        "",
        "**When a film's evidence is called unusual.** The Screen page shows every film's share of Grad-CAM",
        f"evidence inside the lung fields as information, and warns only below {float(reference['lung_share_p05']):.1%}:",
        f"the 5th percentile over the {reference.get('n_films', 'n/a')} {reference.get('split', 'validation')} films of",
        f"this version (median {float(reference.get('lung_share_p50') or 0):.1%})." + (f" {how}" if how else ""),
    ]


def _original_comparison(report: dict) -> list[str]:
    """The original system's own figures (random split, 0.5) set beside ours on its own data."""
    per_source = report.get("at_fixed_0_5_per_source") or {}
    rows = [("all test films", report.get("at_fixed_0_5"))]
    if "rahmandb" in per_source:
        rows.insert(0, ("rahmandb (the original system's data)", per_source["rahmandb"]))
    rows = [(name, values) for name, values in rows if values]
    if not rows:
        return []
    lines = [
        "",
        "### Beside the original system (at a fixed 0.5)",
        "",
        "| test films | n | accuracy | TB recall | TB precision |",
        "|---|---|---|---|---|",
        f"| original system, random split of its data | – | {ORIGINAL['accuracy']} | {ORIGINAL['tb_recall']} | "
        f"{ORIGINAL['tb_precision']} |",
    ]
    for name, values in rows:
        lines.append(
            f"| {name} | {values.get('n', '')} | {_fmt(values.get('accuracy'))} | {_fmt(values.get('tb_recall'))} | "
            f"{_fmt(values.get('tb_precision'))} |"
        )
    return lines


def _evidence_section(report: dict) -> list[str]:
    evidence = report.get("evidence") or {}
    framing = report.get("framing") or {}
    if not evidence and not framing.get("films"):
        return []
    lines = ["", "### Where the evidence lies", ""]
    if evidence:
        lines += [
            "Share of Grad-CAM mass in the outer eighth of the **film** on each side (borders, corners, markers,",
            "chest walls: the hospital, not the lungs; target <= 0.10) and in the outer eighth of the network's own",
            "input (for a lung-box input this band is mostly lung); mean over the TB test films:",
            "",
            "| source | TB films | film's outer band | input's outer band |",
            "|---|---|---|---|",
        ]
        for source, values in sorted(evidence.items(), key=lambda item: (item[0] == "all", item[0])):
            lines.append(
                f"| {source} | {values['tb_films']} | {_fmt(values.get('film_band_share'))} | "
                f"{_fmt(values.get('outer_band_share'))} |"
            )
    lines += _evidence_where_lines(report)
    if framing.get("films"):
        lines += [
            "",
            f"Framing: with TB films cropped to their middle {framing['tb_crop_rows_kept']:.0%} of rows and normals "
            f"padded with black bars to {framing['normal_pad_aspect']:.2f}:1, {framing['flipped']} of "
            f"{framing['films']} test decisions changed ({framing['share']:.1%}; target <= 5 %).",
        ]
    return lines


ACQUISITION_ROWS = (
    ("upscale3000", "the film at 3,000 px (bicubic), through the whole path"),
    ("blur", "the network's input blurred (Gaussian, sigma 0.7 px)"),
    ("unsharp", "the network's input edge-enhanced (unsharp mask 0.5, sigma 1 px)"),
)


def _acquisition_section(report: dict) -> list[str]:
    """How far the probability moves when only the film's resolution or sharpness changes."""
    found = report.get("acquisition") or {}
    rows = [(name, label, (found.get(name) or {}).get("all") or {}) for name, label in ACQUISITION_ROWS]
    rows = [row for row in rows if row[2].get("films")]
    if not rows:
        return []
    tolerance = float(found.get("tolerance", 0.05))
    lines = [
        "",
        "### Resolution and sharpness",
        "",
        "Hospitals differ most in detector resolution and edge enhancement, not in disease: the same test films",
        f"changed only in that (target: |change of probability| <= {tolerance} on every film, as between file formats):",
        "",
        f"| change | films | median abs. change | films beyond {tolerance} | median signed change |",
        "|---|---|---|---|---|",
    ]
    for _, label, values in rows:
        lines.append(
            f"| {label} | {values['films']} | {_fmt(values['median_abs'])} | {_fmt(values['over_tolerance'])} | "
            f"{values['median_signed']:+.3f} |"
        )
    worst = max(rows, key=lambda row: abs(row[2]["median_signed"]))
    if abs(worst[2]["median_signed"]) > tolerance:
        lines += [
            "",
            f"**This version reads sharpness as evidence**: {worst[1]} moves its probability by a median "
            f"{worst[2]['median_signed']:+.3f}, in the same direction on most films. A hospital whose processing is",
            "sharper or softer than the development data's gets systematically higher or lower scores: validate on",
            "the site's own films and use a site profile, whose threshold is chosen on them.",
        ]
    return lines


def _evidence_where_lines(report: dict) -> list[str]:
    """The test split's evidence measures, lesion test set, strips and markers, and shortcut audit."""
    where = report.get("evidence_where") or {}
    lines: list[str] = []
    groups = {key: value for key, value in where.items() if isinstance(value, dict) and "/" in key}
    if groups:
        lines += [
            "",
            "Against the lung fields grown by 5 % of the film's longer side (hila and pleura count), per source",
            "and class of the test films: share of the Grad-CAM mass inside them, and share of films whose map",
            "peak lies inside (targets on TB films: mass >= 0.80, peak >= 0.90 on every source):",
            "",
            "| source / class | films | mass in lungs | peak in lungs | film's outer band |",
            "|---|---|---|---|---|",
        ]
        for key, values in sorted(groups.items(), key=lambda item: (item[0].startswith("all/"), item[0])):
            lines.append(
                f"| {key} | {values['films']} | {_fmt(values.get('lung_share'))} | "
                f"{_fmt(values.get('peak_in_lungs'))} | {_fmt(values.get('outer_band'))} |"
            )
    lesion = where.get("lesion_test")
    if lesion:
        lines += [
            "",
            f"Lesion test set ({lesion['films']} TBX11K TB films held out of every training run, boxes by radiologists):",
            f"peak on a lesion on {_fmt(lesion.get('pointing'))} of films (target >= 0.60); mass on the boxes "
            f"{_fmt(lesion.get('lesion_share'))} against {_fmt(lesion.get('uniform_share'))} for an evenly spread map "
            f"({_fmt(lesion.get('lesion_vs_uniform'), 2)}x; target >= 2x).",
        ]
    strips = report.get("strips_and_markers") or {}
    if strips.get("films"):
        low, high = strips["strip_fraction_of_height"]
        lines += [
            "",
            f"Strips and markers: each test film given a strip of {low:.0%}-{high:.0%} of its height on one edge (dark or",
            f"bright) and a burnt-in text marker: {strips['flipped']} of {strips['films']} decisions changed "
            f"({_share(strips['flipped_share'])}; target <= 2 %), the map's peak lay on the strip on "
            f"{strips['peak_on_strip']} ({_share(strips.get('peak_on_strip_share'))} of the maps that have a peak; "
            "target <= 2 %).",
        ]
    unlike = report.get("held_out_markers") or {}
    if unlike.get("films"):
        lines += [
            "",
            f"The same with a marker in a word and a font the training never draws ({', '.join(unlike['markers'][:4])}, "
            f"...): {unlike['flipped']} of {unlike['films']} decisions changed ({_share(unlike['flipped_share'])}; "
            "target <= 2 %).",
        ]
    shortcut = report.get("shortcut") or {}
    rows = {k: v for k, v in shortcut.items() if isinstance(v, dict) and v.get("cnn_auc") is not None}
    if rows:
        lines += [
            "",
            f"Shortcut audit ({shortcut.get('features')}, trained on the same train split): ROC-AUC on the test split,",
            "beside the network's. Where the thumbnail comes close, the figure says more about the data than about",
            "the network's sight.",
            "",
            "| test films | network | shortcut audit |",
            "|---|---|---|",
        ]
        for key, values in sorted(rows.items(), key=lambda item: (item[0] == "all", item[0])):
            lines.append(f"| {key} | {_fmt(values['cnn_auc'])} | {_fmt(values['shortcut_auc'])} |")
    return lines


def write_card(version_dir: str | Path) -> Path:
    """Render a registered version's card again from the files in its folder (after a LOSO run was added)."""
    import json

    from cxr_core.fsutil import read_json_or_empty, write_text_atomic
    from cxr_core.settings import Layout

    folder = Path(version_dir)
    metadata = json.loads((folder / Layout.METADATA).read_text())
    report = json.loads((folder / Layout.METRICS).read_text())
    card = render_model_card(
        metadata,
        report,
        read_json_or_empty(folder / INGEST_SUMMARY_FILE),
        read_json_or_empty(folder / LOSO_FILE) or None,
        read_json_or_empty(folder / LOSO_REFERENCE_FILE) or None,
    )
    write_text_atomic(folder / Layout.CARD, card)
    return folder / Layout.CARD
