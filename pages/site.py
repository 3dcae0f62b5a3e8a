"""Local validation: measure the model on this clinic's confirmed films and set the clinic's operating point."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.pipeline.datasets import allowed_dataset_path, save_uploaded_zip
from cxr_core.pipeline.outcomes import local_set_counts, local_set_dir
from cxr_core.registry.sites import OperatingRule, SiteProfiles
from cxr_core.settings import project_relative
from ui import site_view

st.title("Set up at this clinic")
st.markdown(
    "A model trained elsewhere meets other scanners, exposure and case mix. Validate it on films whose "
    "outcome this clinic has confirmed, and choose the operating point for your prevalence and the number "
    "of confirmatory tests you can run."
)
serving, problem = ui_common.serving_model_or_none()
if serving is None:
    st.error(problem)
    st.stop()
registry = ui_common.registry()
sites = SiteProfiles(registry.root)

st.subheader("Site profiles")
rows = site_view.profile_rows(sites)
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True)
else:
    st.caption("No site profile yet: the model's own threshold, chosen on development data, is in use.")
counts = local_set_counts()
st.caption(
    f"Confirmed outcomes recorded on the Screen page so far: {counts['Tuberculosis']} TB, {counts['Normal']} "
    f"not TB (the local set `uploads/local`, usable below)."
)

if not ui_common.admin_gate("Validating, creating and switching site profiles"):
    st.stop()

if rows:
    c1, c2 = st.columns([3, 1])
    choice = c1.selectbox("Profile in use", ["(none: the model's own threshold)", *sites.names()],
                          index=(sites.names().index(sites.active_name()) + 1) if sites.active_name() else 0)  # fmt: skip
    if c2.button("Apply", key="site_apply"):
        try:
            sites.activate(None if choice.startswith("(none") else choice, actor=ui_common.actor())
        except CxrError as error:
            st.error(str(error))
        else:
            st.rerun()

st.subheader("Validate on local films")
with st.form("local_data"):
    path_text = st.text_input(
        "Local films (folder or .zip inside the dataset folders)", value=project_relative(local_set_dir()),
        help="Normal/ and Tuberculosis/ folders, NLM names, a manifest.csv (path,label), or a .zip of these.",
    )  # fmt: skip
    uploaded = st.file_uploader("…or upload a .zip of confirmed films", type=["zip"], key="local_zip")
    run = st.form_submit_button("Score these films with the model in use", type="primary")
if run:
    try:
        if uploaded is not None:
            path = save_uploaded_zip(uploaded.getvalue(), uploaded.name)
            st.caption(f"Saved the upload as {path.name} in the uploads folder.")
        else:
            path = allowed_dataset_path(path_text)
        with st.spinner("Scoring every film through the screening path…"):
            st.session_state["site_validation"] = site_view.validate(ui_common.predictor_for(serving), path)
    except CxrError as error:
        st.error(str(error))

validation = st.session_state.get("site_validation")
if validation:
    report = validation["report"]
    if report.get("warning"):
        st.warning(report["warning"])
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Films scored", len(validation["labels"]))
    c2.metric("ROC AUC here", ui_common.num(report.get("roc_auc")))
    c2.caption(f"model card: {ui_common.num(validation['card'].get('roc_auc'))}")
    c3.metric("Sensitivity at the model's threshold", ui_common.pct(report.get("sensitivity")))
    c4.metric("Specificity at the model's threshold", ui_common.pct(report.get("specificity")))
    if validation["skipped"]:
        st.caption(f"{len(validation['skipped'])} files could not be scored (listed in the log).")
    st.altair_chart(ui_common.calibration_chart(report["calibration_curve"]), use_container_width=True)

    st.markdown("**Choose this clinic's operating point**")
    with st.form("site_profile"):
        name = st.text_input("Site name", value="", placeholder="e.g. district-hospital-a")
        how = st.radio("Rule", ["Sensitivity at least", "Referrals per 100 films"], horizontal=True)
        c1, c2, c3 = st.columns(3)
        floor = c1.number_input("Sensitivity floor", 0.5, 1.0, 0.90, 0.01)
        referrals = c2.number_input("Referrals per 100 films", 1.0, 100.0, 20.0, 1.0)
        calibration = c3.selectbox("Probability calibration", ["none", "platt", "isotonic"])
        save = st.form_submit_button("Create the profile (not yet in use)")
    if save:
        rule = (OperatingRule(min_sensitivity=floor) if how.startswith("Sensitivity")
                else OperatingRule(min_sensitivity=None, referrals_per_100=referrals))  # fmt: skip
        try:
            profile = site_view.propose_profile(
                name.strip(), ui_common.predictor_for(serving), validation, rule,
                None if calibration == "none" else calibration, ui_common.actor(),
            )  # fmt: skip
            sites.save(profile, actor=ui_common.actor())
        except CxrError as error:
            st.error(str(error))
        else:
            st.success(f"Profile {profile['name']} saved. Switch it on above when you are ready.")
            for line in site_view.evidence_lines(profile):
                st.markdown(line)
