"""Local validation: measure the model on this clinic's confirmed films and set the clinic's operating point."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.pipeline.dataset_roots import allowed_dataset_path, save_uploaded_zip
from cxr_core.pipeline.outcomes import local_set_counts, local_set_dir
from cxr_core.registry.sites import SiteProfiles, floor_check
from cxr_core.settings import project_relative
from ui import screening_view, site_view

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
flash = st.session_state.pop("site_flash", None)
if isinstance(flash, str):
    st.success(flash)
rows = site_view.profile_rows(sites)
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True)
else:
    st.caption("No site profile yet: the model's own threshold, chosen on development data, is in use.")
try:
    active = sites.active()
except CxrError:
    active = None
st.markdown(
    "**In use:** " + screening_view.site_text(active, serving.threshold if not active else float(active["threshold"]))
)
counts = local_set_counts()
st.caption(
    f"Confirmed outcomes recorded on the Screen page so far: {counts['Tuberculosis']} TB, {counts['Normal']} "
    f"not TB (the local set `uploads/local`, usable below)."
)

if not ui_common.admin_gate("Validating, creating and switching site profiles"):
    st.stop()

NONE_CHOICE = "(none: the model's own threshold)"


def _cancel_pending() -> None:
    st.session_state.pop("site_pending", None)


if rows:
    names = sites.names()
    c1, c2, c3 = st.columns([3, 1, 1])
    choice = c1.selectbox("Profile in use", [NONE_CHOICE, *names],
                          index=(names.index(sites.active_name()) + 1) if sites.active_name() in names else 0)  # fmt: skip
    if c2.button("Apply", key="site_apply"):
        st.session_state["site_pending"] = "" if choice == NONE_CHOICE else choice
    if active and c3.button("Switch off", key="site_off", help="Back to the model's own threshold."):
        st.session_state["site_pending"] = ""

pending = st.session_state.get("site_pending")
if isinstance(pending, str):
    with st.container(border=True):
        if pending == "":
            st.markdown("**Switch site profiles off?** Decisions go back to the model's own threshold "
                        f"({serving.threshold:.4g}, chosen on development data).")  # fmt: skip
            c1, c2 = st.columns(2)
            if c1.button("Confirm: switch off", key="site_confirm_off", type="primary"):
                sites.activate(None, actor=ui_common.actor())
                st.session_state.pop("site_pending", None)
                st.session_state["site_flash"] = "Site profiles switched off: the model's own threshold is in use."
                st.rerun()
            c2.button("Cancel", key="site_cancel", on_click=_cancel_pending)
        else:
            try:
                summary = site_view.activation_summary(sites.load(pending))
            except CxrError as error:
                st.error(str(error))
                st.session_state.pop("site_pending", None)
                st.stop()
            st.markdown(f"**Switch on the site profile {pending}?** Every screening decision will use its threshold.")
            for line in summary["lines"]:
                st.markdown(line)
            measured = "n/a" if summary["measured"] is None else f"{summary['measured']:.1%}"
            st.caption(f"Floor check on the {summary['basis']}: {measured} against a floor of {summary['floor_text']}.")
            if summary["ok"]:
                c1, c2 = st.columns(2)
                if c1.button(f"Confirm: switch on {pending}", key="site_confirm", type="primary"):
                    try:
                        sites.activate(pending, actor=ui_common.actor())
                    except CxrError as error:
                        st.error(str(error))
                    else:
                        st.session_state.pop("site_pending", None)
                        st.session_state["site_flash"] = f"Site profile {pending} is in use."
                        st.rerun()
                c2.button("Cancel", key="site_cancel", on_click=_cancel_pending)
            else:
                st.error(f"**Refused:** {summary['message']}", icon=":material/block:")
                reason = st.text_input(
                    "Reason for switching it on below its floor (kept in the audit trail)", key="site_override_reason"
                )
                understood = st.checkbox(
                    f"I override the floor of {summary['floor_text']} for this clinic, knowing it will miss more TB.",
                    key="site_override_ok",
                )
                c1, c2 = st.columns(2)
                if c1.button("Switch on below the floor (audited override)", key="site_override"):
                    if not understood or not reason.strip():
                        st.error("An override needs a written reason and the box ticked; nothing was changed.")
                    else:
                        sites.activate(pending, actor=ui_common.actor(), override_reason=reason)
                        st.session_state.pop("site_pending", None)
                        st.session_state["site_flash"] = (
                            f"Site profile {pending} is in use below its floor, by an audited override."
                        )
                        st.rerun()
                c2.button("Cancel", key="site_cancel", on_click=_cancel_pending)

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
        # No min/max on the inputs: a browser clamps or keeps a red field silently; the page refuses with a message.
        floor = c1.number_input("Sensitivity floor (0.90–1.00)", value=0.90, step=0.01, key="site_floor")
        referrals = c2.number_input("Referrals per 100 films (1–100)", value=20.0, step=1.0, key="site_referrals")
        calibration = c3.selectbox("Probability calibration", ["none", "platt", "isotonic"])
        save = st.form_submit_button("Create the profile (not yet in use)")
    if save:
        try:
            rule = site_view.rule_from_form(how, floor, referrals)
            profile = site_view.propose_profile(
                name.strip(), ui_common.predictor_for(serving), validation, rule,
                None if calibration == "none" else calibration, ui_common.actor(),
            )  # fmt: skip
            sites.save(profile, actor=ui_common.actor())
        except CxrError as error:
            st.error(str(error))
        else:
            check = floor_check(profile)
            st.session_state["site_flash"] = (
                f"Profile {profile['name']} saved (not yet in use). "
                + ("Switch it on above when you are ready." if check["ok"] else check["message"])
                + " " + " ".join(site_view.evidence_lines(profile))
            )
            st.rerun()  # the list above shows the new profile at once
