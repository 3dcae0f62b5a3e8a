"""The model card written beside every registered version, generated from its own figures.

Hand-written cards drift from the model they describe; this one is rendered from the metadata, the
test report and the ingest summary of the run that produced the model, so what a clinician reads on the
Model page is what was measured.
"""

from pathlib import Path


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(interval) -> str:
    if not interval or interval[0] is None:
        return ""
    return f" (95% CI {interval[0]:.3f}–{interval[1]:.3f})"


def render_model_card(metadata: dict, report: dict, ingest_summary: dict) -> str:
    op = report
    counts = ingest_summary.get("counts", {})
    lines = [
        f"# Model card: TB screening CNN {metadata.get('version') or '(candidate)'}",
        "",
        "## Intended use",
        "Decision support for research and demonstration: it flags frontal chest X-rays that may show",
        "tuberculosis so that a clinician can prioritise confirmatory testing. **It is not a medical device**,",
        "is not cleared for diagnosis, and must not be the only basis for a clinical decision.",
        "",
        "## Model",
        f"Reference CNN (Conv 16/32/64, Dense {metadata['params']['model']['dense_units']}, dropout "
        f"{metadata['params']['model']['dropout']}), input {metadata['input_side']}x{metadata['input_side']}x1, "
        f"trained {metadata['epochs_run']} epochs (best epoch {metadata['best_epoch']}), created {metadata['created']}.",
        "",
        "## Training data",
        f"Dataset `{ingest_summary.get('data_name') or Path(str(ingest_summary.get('data_path'))).name}` (layout: {ingest_summary.get('layout')}), "
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
        "## Test results (held-out split)",
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
    fixed = report.get("at_fixed_0_5")
    if fixed:
        lines.append(
            f"- For comparison with the original system (accuracy 0.975, TB recall 0.922, TB precision 0.935 on a "
            f"random split at 0.5): at 0.5 this model has accuracy {_fmt(fixed['accuracy'])}, TB recall "
            f"{_fmt(fixed['tb_recall'])}, TB precision {_fmt(fixed['tb_precision'])}."
        )
    per_source = report.get("per_source") or {}
    if per_source:
        lines += [
            "",
            "### Per source",
            "",
            "| source | n | TB | ROC-AUC | sensitivity | specificity |",
            "|---|---|---|---|---|---|",
        ]
        for source, values in sorted(per_source.items()):
            sop = values
            lines.append(
                f"| {source} | {values.get('n')} | {values.get('n_positive')} | {_fmt(values.get('roc_auc'))} | "
                f"{_fmt(sop.get('sensitivity'))} | {_fmt(sop.get('specificity'))} |"
            )
    lines += [
        "",
        "## Known limits",
        "- **Site confound.** In the bundled development data every TB image comes from one source (TBX11K) and",
        "  almost every normal from another (a teaching collection). A network can separate the classes by",
        "  recognising the hospital (framing, exposure, markers) rather than the disease. Preprocessing trims",
        "  borders, crops to a square and equalises intensity, and augmentation varies framing and exposure,",
        "  but that does not remove the cue: the per-source rows show how the model treats Normal images from",
        "  the hospitals that supplied the TB images. Test figures on such data are an upper bound; validate on",
        "  images from the clinic where it will be used, and retrain on data where both classes share sources",
        "  (such as the Kaggle database), before relying on it.",
        "- Small test split: the confidence intervals above are wide; read them, not the point estimates.",
        "- Adults' frontal (PA/AP) radiographs only; lateral views, children and non-chest images are out of scope.",
        "  Inputs far from the training images in the model's feature space are flagged with a warning.",
        "- Grad-CAM shows where the network's evidence for TB lies at 28x28 resolution; it is not a lesion outline.",
        "",
        "## Retraining on the Kaggle TB Chest X-ray Database",
        "Download the database (folders `Normal/` and `Tuberculosis/`), then either set `data.path` in",
        "`params.yaml` and run `dvc repro`, or run `python -m cxr_core pipeline --data /path/to/TB_Chest_Radiography_Database`,",
        "or use the dashboard's Retrain page. A new version is promoted only when it passes the quality gate.",
        "",
    ]
    return "\n".join(lines)
