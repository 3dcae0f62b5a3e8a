"""Evaluation page: how well a model version did on its held-out test images, and what that means in a clinic."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core import metrics
from cxr_core.errors import CxrError
from ui import evaluation_view, screening_view, versions_view

st.title("How well does the model work?")

registry = ui_common.registry()
versions = [meta["version"] for meta in reversed(registry.versions())]
if not versions:
    st.info(
        "No model is registered yet. Train one on the Retrain page or with `python -m cxr_core pipeline`."
    )
    st.stop()
try:
    current = registry.current_version()
except CxrError:
    current = None


def _label(version: str) -> str:
    return f"{version} (in use)" if version == current else version


version = st.selectbox(
    "Model version",
    versions,
    index=versions.index(current) if current in versions else 0,
    format_func=_label,
    key="eval_version",
)
try:
    ev = evaluation_view.load_evaluation(registry, version)
except CxrError as error:
    st.error(str(error))
    st.stop()
for problem in ev.problems:
    st.info(problem)

m, op = ev.metrics, ev.operating_point
st.caption(
    f"Held-out test split: {versions_view.test_set_text(ev)}, never used for training or for choosing the "
    f"threshold. Operating threshold **{ev.threshold:.3f}**: "
    f"{ev.metadata.get('threshold_rule', 'rule not recorded')}."
)

tab_report, tab_curves, tab_threshold, tab_errors, tab_evidence, tab_compare = st.tabs(
    ["Report", "ROC, PR and calibration", "Threshold explorer", "Errors with Grad-CAM", "Where the evidence lies",
     "Compare versions"]
)  # fmt: skip

few = evaluation_view.too_few_test_films(ev)

with tab_report:
    # The figure a new clinic should expect comes first: leave-one-source-out, each hospital's films scored
    # by the recipe trained without it. The pooled split below is an upper bound (same hospitals as training).
    estimate = evaluation_view.new_clinic_estimate(ev)
    st.markdown("### At a new clinic (leave-one-source-out estimate)")
    if estimate:
        n_seeds = len(estimate["seeds"])
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Sensitivity at a new clinic", evaluation_view.fmt_pct(estimate["sensitivity"]))
        c1.caption(
            evaluation_view.fmt_interval(estimate["sensitivity_ci"], percent=True)
            + " over films; "
            + evaluation_view.fmt_seed_range(estimate["sensitivity_seed_range"], seeds=n_seeds)
        )
        c2.metric("Specificity at a new clinic", evaluation_view.fmt_pct(estimate["specificity"]))
        c2.caption(
            evaluation_view.fmt_interval(estimate["specificity_ci"], percent=True)
            + " over films; "
            + evaluation_view.fmt_seed_range(estimate["specificity_seed_range"], seeds=n_seeds)
        )
        if estimate["worst_auc"]:
            c3.metric("ROC AUC, weakest unseen hospital", ui_common.num(estimate["worst_auc"][1]))
            c3.caption(f"{estimate['worst_auc'][0]} (mean over seeds)")
        c4.metric(
            "WHO minimum at a new clinic",
            "met" if estimate["who_minimum_met"] else "not met",
            help="Sensitivity ≥ 90% with specificity ≥ 70%, on films of hospitals the model never saw.",
        )
        st.caption(
            f"{estimate['films']} films ({estimate['with_tb']} with TB) of {len(estimate['hospitals'])} hospitals "
            f"({', '.join(estimate['hospitals'])}), each scored by the recipe trained without its hospital, pooled. "
            "The 95% CI over films (Wilson) is how much the figure could move with other films; the seed spread "
            f"(lowest–highest over {n_seeds} training seeds) is how much it moves when the recipe is trained "
            "again. It is not a confidence interval."
        )
        st.markdown("**Per hospital it never saw**")
        st.table(pd.DataFrame(evaluation_view.unseen_hospital_table(ev)).set_index("hospital left out"))
    else:
        st.warning(
            "No estimate for a new clinic: leave-one-source-out was not run for this version "
            "(`python -m cxr_core loso --data DATASET --out models/VERSION`, then "
            "`python -m cxr_core models card VERSION`). The pooled figures below are an upper bound.",
            icon=":material/warning:",
        )

    st.markdown("### On the pooled test split (upper bound)")
    st.caption(
        "Test films of the same hospitals the model was trained on: scanners, framing and case mix it already "
        "knows. A new clinic should expect the figures above, not these."
    )
    # What limits these figures comes first: no verdict badge stands above a warning that undoes it.
    for warning in evaluation_view.trust_warnings(ev):
        st.warning(warning, icon=":material/warning:")
    if few:
        st.markdown(f"**ROC AUC, sensitivity, specificity, WHO minimum:** {few}.")
    else:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric(
            "ROC AUC (pooled split)",
            ui_common.num(m.get("roc_auc")),
            help="Area under the ROC curve: 0.5 is chance, 1 perfect.",
        )
        c1.caption(evaluation_view.fmt_interval(m.get("roc_auc_ci")))
        c2.metric(
            "Sensitivity (pooled split)",
            evaluation_view.fmt_pct(op.get("sensitivity")),
            help="Share of TB cases flagged.",
        )
        c2.caption(evaluation_view.fmt_interval(op.get("sensitivity_ci"), percent=True))
        c3.metric(
            "Specificity (pooled split)",
            evaluation_view.fmt_pct(op.get("specificity")),
            help="Share of normal films the model clears.",
        )
        c3.caption(evaluation_view.fmt_interval(op.get("specificity_ci"), percent=True))
        badge = evaluation_view.who_badge(ev)
        if badge:
            c4.metric(
                "WHO minimum (pooled split, upper bound)",
                badge[0],
                help="Sensitivity ≥ 90% with specificity ≥ 70%.",
            )
            c4.caption(badge[1])
        else:
            c4.metric(
                "WHO minimum (pooled split)",
                "not assessable",
                help="The warning above: these data cannot show it.",
            )

    st.markdown("**Classification report** at the operating threshold")
    report = pd.DataFrame(evaluation_view.report_table(m.get("classification_report") or {}))
    if not report.empty:
        shown = report.set_index("")
        for column in ("precision", "recall", "f1-score"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
        shown["support"] = shown["support"].map(lambda v: "" if pd.isna(v) else str(int(v)))
        shown.index.name = None
        st.table(shown)
        st.caption(
            "Precision of the Tuberculosis row is the PPV and its recall the sensitivity; the recall of the "
            "Normal row is the specificity. Support is the number of test images in each row."
        )
    else:
        st.info("This version has no classification report.")

    col_cm, col_src = st.columns(2)
    with col_cm:
        st.markdown("**Confusion matrix** (test images)")
        confusion = evaluation_view.confusion_table(ev)
        if confusion:
            st.table(pd.DataFrame(confusion).set_index(""))
    with col_src:
        st.markdown("**By data source** (a pooled figure can hide a hospital the model fails on)")
        sources = pd.DataFrame(evaluation_view.per_source_table(ev))
        if few:
            st.markdown(f"Withheld: {few}.")
        elif not sources.empty:
            st.table(sources.set_index("source"))
            st.caption(
                "95% CIs over films: bootstrap for AUC, Wilson for rates. A small source moves a lot with one film."
            )
    fixed = m.get("at_fixed_0_5")
    original = m.get("original_system")
    if fixed and original:
        st.caption(
            f"For comparison with the original system (accuracy {original['accuracy']:.3f}, TB recall "
            f"{original['tb_recall']:.3f}, TB precision {original['tb_precision']:.3f} at a fixed 0.5 on a "
            f"random split): at 0.5 this version has accuracy {ui_common.num(fixed.get('accuracy'))}, TB recall "
            f"{ui_common.num(fixed.get('tb_recall'))}, TB precision {ui_common.num(fixed.get('tb_precision'))}."
        )

with tab_curves:
    col_roc, col_pr, col_cal = st.columns(3)
    with col_roc:
        auc = few or evaluation_view.fmt_ci(m.get("roc_auc"), m.get("roc_auc_ci"))
        st.markdown(f"**ROC curve** — AUC {auc}")
        if ev.plots["roc"]:
            operating = (op.get("sensitivity"), op.get("specificity"))
            chart = ui_common.roc_chart(ev.plots["roc"], operating if None not in operating else None)
            st.altair_chart(chart, width="stretch")
        else:
            st.info("No ROC curve: the test split lacks one of the classes.")
    with col_pr:
        pr_auc = few or evaluation_view.fmt_ci(m.get("pr_auc"), m.get("pr_auc_ci"))
        st.markdown(f"**Precision–recall curve** — AUC {pr_auc}")
        if ev.plots["pr"]:
            st.altair_chart(ui_common.pr_chart(ev.plots["pr"]), width="stretch")
    with col_cal:
        st.markdown(
            f"**Calibration** — {few}"
            if few
            else f"**Calibration** — expected calibration error {ui_common.num(m.get('ece'))}, "
            f"Brier score {ui_common.num(m.get('brier'))}"
        )
        if ev.plots["calibration"]:
            st.altair_chart(ui_common.calibration_chart(ev.plots["calibration"]), width="stretch")
    st.caption(
        "ROC: each point is one threshold; the orange dot is the operating point. Precision–recall: how "
        "many flagged films really have TB (PPV) at each sensitivity. Calibration: points on the dashed "
        "diagonal mean a predicted probability of 0.3 really corresponds to 30% with TB."
    )


def _reset_threshold(key: str, value: float) -> None:
    st.session_state[key] = value


@st.fragment
def threshold_explorer(ev: evaluation_view.Evaluation) -> None:
    if not ev.predictions:
        st.info("This version has no stored test predictions, so the threshold cannot be explored.")
        return
    few = evaluation_view.too_few_test_films(ev)
    if few:
        st.warning(f"Threshold explorer withheld: {few}.", icon=":material/warning:")
        return
    key = f"threshold_{ev.version}"
    table = evaluation_view.threshold_table(ev)
    # The clinic's own prevalence leads: PPV and NPV depend on it, and it is what a programme plans with.
    col_p, col_t = st.columns([2, 3])
    prevalence = col_p.number_input(
        "TB prevalence among the people you screen (%)",
        min_value=0.1,
        max_value=99.0,
        value=5.0,
        step=0.5,
        key="prevalence_pct",
        help="Typical screening programmes see 0.5–10%. PPV depends strongly on it; sensitivity does not.",
    )
    threshold = col_t.slider(
        "Threshold on TB probability", 0.0, 1.0, float(ev.threshold), 0.001, format="%.3f", key=key
    )
    col_t.button(
        f"Back to the model's operating point ({ev.threshold:.3f})",
        on_click=_reset_threshold,
        args=(key, float(ev.threshold)),
    )
    result = evaluation_view.explore_threshold(ev, threshold, prevalence / 100.0, table)
    pct = evaluation_view.fmt_pct
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        f"PPV in your clinic ({prevalence:g}% TB)",
        pct(result["clinic_ppv"]),
        help="Of everyone flagged, how many have TB.",
    )
    c2.metric(
        f"NPV in your clinic ({prevalence:g}% TB)",
        pct(result["clinic_npv"]),
        help="Of everyone cleared, how many are free of TB.",
    )
    c3.metric("Sensitivity", pct(result["sensitivity"]))
    c4.metric("Specificity", pct(result["specificity"]))
    per = result["per_1000"]
    if per is not None:
        count = evaluation_view.fmt_count
        st.markdown(
            f"**In a clinic where {prevalence:g}% of those screened have TB**, per 1,000 people screened: "
            f"about {count(per['referred'])} referred for confirmatory testing, {count(per['detected'])} of the "
            f"{count(per['with_tb'])} with TB found, {count(per['missed'])} missed, "
            f"{count(per['false_alarms'])} false alarms."
        )
    st.caption(
        f"On the test images at {threshold:.3f}: {result['tp']} TB found, {result['fn']} TB missed, "
        f"{result['fp']} false alarms, {result['tn']} normal films cleared. Test-set PPV {pct(result['ppv'])} "
        f"and NPV {pct(result['npv'])} hold only at the test set's own TB prevalence "
        f"({pct(result['test_prevalence'])}), not your clinic's."
    )
    trusted = not evaluation_view.trust_warnings(ev)
    if result["who_minimum_met"] and trusted:
        st.success(
            "Meets the WHO minimum for a TB screening test (sensitivity ≥ 90% with specificity ≥ 70%).",
            icon=":material/verified:",
        )
    elif result["who_minimum_met"]:
        st.caption(
            "Reaches the WHO minimum on this test split, which cannot be trusted (see the Report tab)."
        )
    else:
        st.warning(
            "Below the WHO minimum for a TB screening test (sensitivity ≥ 90% with specificity ≥ 70%).",
            icon=":material/warning:",
        )
    st.altair_chart(
        ui_common.threshold_chart(evaluation_view.threshold_curve_rows(table), threshold), width="stretch"
    )
    st.caption(
        f"Dashed lines: WHO minimum sensitivity {metrics.WHO_MIN_SENSITIVITY:.0%} and specificity "
        f"{metrics.WHO_MIN_SPECIFICITY:.0%}. Moving the threshold here does not change the model in use."
    )


with tab_threshold:
    threshold_explorer(ev)


# Keyed on where the training data was found too: data moved into place shows on the next run.
@st.cache_data(max_entries=6, show_spinner="Computing Grad-CAM for the misclassified test images…")
def gallery(
    model_dir: str, sha256: str, twin: str | None, version: str, data_root: str | None
) -> tuple[list[evaluation_view.GalleryEntry], int]:
    evaluation = evaluation_view.load_evaluation(ui_common.registry(), version)
    rows = evaluation_view.misclassified(evaluation)
    predictor = ui_common.load_predictor(model_dir, sha256, twin)
    return evaluation_view.error_gallery(predictor, rows, limit=12, data_root=data_root), len(rows)


data_folder = evaluation_view.training_data_folder(ev)


with tab_errors:
    if not ev.predictions:
        st.info("This version has no stored test predictions.")
    else:
        try:
            serving = screening_view.serving_model(registry, version)
            entries, total = gallery(str(serving.model_dir), serving.sha256, serving.tflite_sha256, version, data_folder)
        except CxrError as error:
            st.error(str(error))
            entries, total = [], 0
        if total == 0:
            st.success("The model classified every test image correctly at its operating threshold.")
        else:
            st.caption(
                f"{total} test image(s) misclassified at the operating threshold; missed TB first. "
                f"Showing {len(entries)}. Heatmap colour is in TB-probability units, as on the Screen page, "
                "so a missed TB film (a low score) shows little colour."
            )
            columns = st.columns(3)
            for i, entry in enumerate(entries):
                with columns[i % 3]:
                    caption = f"{entry.name} ({entry.source}) — {entry.kind}, TB probability {entry.probability:.3f}"
                    if entry.overlay is not None:
                        st.image(entry.overlay, caption=caption, width="stretch")
                    else:
                        st.markdown(f"**{ui_common.md(entry.name)}** — {entry.kind}")
                        st.caption(entry.problem)

@st.cache_data(max_entries=6, show_spinner="Computing Grad-CAM for test films with radiologists' boxes…")
def lesion_gallery(
    model_dir: str, sha256: str, twin: str | None, version: str, data_root: str | None
) -> list[evaluation_view.GalleryEntry]:
    evaluation = evaluation_view.load_evaluation(ui_common.registry(), version)
    predictor = ui_common.load_predictor(model_dir, sha256, twin)
    return evaluation_view.lesion_gallery(predictor, evaluation, limit=6, data_root=data_root)


with tab_evidence:
    st.markdown(
        "Where the model's **Grad-CAM** (its evidence for TB, in TB-probability units on the Screen page) lies, "
        "against the lung model's fields grown by 5 % of the film's longer side (hila and pleura count) and the "
        "radiologists' lesion boxes. A model that learned the hospital puts its evidence on borders, markers "
        "and the abdomen; one that learned the disease puts it in the lungs, on the lesions."
    )
    held_out = evaluation_view.held_out_evidence_rows(ev)
    if held_out:
        st.markdown("**At hospitals the recipe never saw** (leave-one-source-out, means over seeds)")
        st.dataframe(held_out, hide_index=True, width="stretch")
        st.caption(
            "Shortcut audit: a logistic regression on a 16x16 thumbnail of the whole film and five intensity "
            "statistics, trained on the same split. It needs no pathology; where it comes close to the network, "
            "the figure says more about the data than about what the network sees."
        )
    rows = evaluation_view.evidence_rows(ev)
    if rows:
        st.markdown("**Test split, per source and class**")
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.info("This version's evaluation has no evidence measures (it predates them).")
    for sentence in (evaluation_view.lesion_summary(ev), evaluation_view.robustness_summary(ev)):
        if sentence:
            st.markdown(sentence)
    audit = evaluation_view.shortcut_rows(ev)
    if audit:
        st.markdown("**Shortcut audit on the test split**")
        st.dataframe(audit, hide_index=True, width="stretch")
    if ev.predictions:
        try:
            serving = screening_view.serving_model(registry, version)
            lesion_entries = lesion_gallery(
                str(serving.model_dir), serving.sha256, serving.tflite_sha256, version, data_folder
            )
        except CxrError as error:
            st.error(str(error))
            lesion_entries = []
        missing_boxes = evaluation_view.missing_lesion_boxes(ev, data_folder)
        if missing_boxes:
            st.info(missing_boxes)
        if lesion_entries:
            st.markdown("**Test films with radiologists' boxes** (white): the film, and the model's map")
            for entry in lesion_entries:
                left, right = st.columns(2)
                if entry.overlay is None:
                    left.markdown(f"**{ui_common.md(entry.name)}**")
                    left.caption(entry.problem)
                    continue
                left.image(entry.image, caption=f"{entry.name}: radiologists' boxes", width="stretch")
                right.image(
                    entry.overlay, caption=f"Grad-CAM, TB probability {entry.probability:.3f}", width="stretch"
                )

with tab_compare:
    if len(versions) < 2:
        st.info("Only one version is registered; there is nothing to compare yet.")
    else:
        col_a, col_b = st.columns(2)
        first = col_a.selectbox("Version A", versions, index=versions.index(version), format_func=_label)
        others = [v for v in versions if v != first]
        second = col_b.selectbox("Version B", others, index=0, format_func=_label)
        pair = [evaluation_view.load_evaluation(registry, v) for v in (first, second)]
        same = evaluation_view.same_films_comparison(*pair)
        if same["same"]:
            st.success(
                f"Both versions were tested on the same {same['films_a']} films: the figures compare directly."
            )
        else:
            st.warning(
                f"**The two versions were tested on different films** ({first}: {same['films_a']}, {second}: "
                f"{same['films_b']}, {same['shared']} in both). Their own figures below do not compare directly"
                + (
                    ": compare them on the shared films."
                    if same["rows"]
                    else "; no shared films to compare on."
                ),
                icon=":material/warning:",
            )
            if same["rows"]:
                st.markdown(
                    f"**On the {same['shared']} films both were tested on** (each at its own threshold)"
                )
                st.table(pd.DataFrame(same["rows"]).set_index(""))
                if same.get("notice"):
                    st.caption(same["notice"])
        st.markdown("**Each on its own test split**" if not same["same"] else "**On the shared test split**")
        st.table(pd.DataFrame(versions_view.compare_rows(pair)).set_index(""))
        st.caption(
            "When the test films differ, compare on the shared films or the confidence intervals, not the point "
            "estimates. The quality gate re-scores the model in use on the candidate's test split for a "
            "like-for-like check."
        )
        curves = [dict(row, version=e.version, order=i) for e in pair for i, row in enumerate(e.plots["roc"])]
        if curves:
            col_chart, _ = st.columns(2)
            col_chart.markdown("**ROC curves**")
            col_chart.altair_chart(ui_common.roc_compare_chart(curves, [first, second]), width="stretch")
