"""Retrain page: run the training pipeline in the background, follow it live, then promote or roll back."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core import settings
from cxr_core.errors import CxrError
from cxr_core.pipeline import jobs
from cxr_core.pipeline.dataset_roots import save_uploaded_zip
from cxr_core.settings import load_params
from ui import evaluation_view, retrain_view, versions_view

st.title("Retrain and manage models")

registry = ui_common.registry()
job_list = jobs.list_jobs()
latest = job_list[0] if job_list else None
active = latest is not None and latest.get("state") in jobs.ACTIVE

if not ui_common.admin_gate("Retraining, promoting and rolling back models"):
    if active:
        view = retrain_view.job_view(latest)
        st.info(f"A retrain job is running: {view['stage_label'].lower()}. Screening is not affected.")
    st.stop()

# ------------------------------------------------------------------------------------------ start
params = load_params()
defaults = settings.form_defaults(params)
with st.form("retrain_form"):
    st.markdown("**Start a retrain**: the same pipeline as `dvc repro`, run in a separate process.")
    data_path = st.text_input(
        "Dataset (folder or .zip on the server)",
        value=defaults["data_path"],
        key="data_path",
        help="The bundled sample is data/sample. For the Kaggle 'Tuberculosis (TB) Chest X-ray Database' "
        "give the folder holding Normal/ and Tuberculosis/. NLM file names (*_0.png, *_1.png) and a "
        "manifest.csv (path,label) work too. Only the configured dataset folders are read.",
    )
    dataset_zip = st.file_uploader(
        "…or upload a dataset .zip (kept in the uploads folder, checked before use)",
        type=["zip"],
        key="dataset_zip",
    )
    c1, c2, c3, c4 = st.columns(4)
    # No min/max on the fields: the browser would only colour a bad value red and submit another one.
    # retrain_view.form_problems refuses anything out of range with a message (ranges in the labels).
    epochs = c1.number_input("Epochs (1–500)", value=defaults["epochs"], step=1, key="epochs")
    batch_size = c2.number_input("Batch size (1–1024)", value=defaults["batch_size"], step=1, key="batch_size")
    learning_rate = c3.number_input(
        "Learning rate (0.000001–1)", value=defaults["learning_rate"], format="%.5f", key="learning_rate"
    )
    patience = c4.number_input("Early-stopping patience (1–100)", value=defaults["patience"], step=1, key="patience")
    st.markdown("Operating threshold and quality gate")
    g1, g2, g3, g4 = st.columns(4)
    min_sensitivity = g1.number_input(
        "Threshold: sensitivity target on validation (0.5–1)",
        value=defaults["min_sensitivity"],
        step=0.01,
        key="min_sensitivity",
        help="The threshold is the highest-specificity one that keeps validation sensitivity at this level.",
    )
    # The server's floors are the lowest values offered: the form can make the gate stricter only.
    gate_min_sensitivity = g2.number_input(
        "Gate: minimum sensitivity", value=defaults["gate_min_sensitivity"], step=0.01, key="gate_min_sens",
        help="The server's policy is the floor; you may ask for more.",
    )  # fmt: skip
    gate_min_specificity = g3.number_input(
        "Gate: minimum specificity", value=defaults["gate_min_specificity"], step=0.01, key="gate_min_spec",
        help="The server's policy is the floor; you may ask for more.",
    )  # fmt: skip
    gate_max_auc_drop = g4.number_input(
        "Gate: largest allowed AUC drop", value=defaults["gate_max_auc_drop"], step=0.005, format="%.3f",
        key="gate_auc_drop", help="The server's policy is the ceiling.",
    )  # fmt: skip
    with st.expander("Data split"):
        s1, s2, s3 = st.columns(3)
        val_fraction = s1.number_input("Validation fraction (0.05–0.5)", value=defaults["val_fraction"], step=0.05)
        test_fraction = s2.number_input("Test fraction (0.05–0.5)", value=defaults["test_fraction"], step=0.05)
        seed = s3.number_input("Random seed", value=defaults["seed"], step=1)
    start = st.form_submit_button("Start retraining", type="primary")

if start:
    values = {
        "data_path": data_path,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "patience": patience,
        "min_sensitivity": min_sensitivity,
        "gate_min_sensitivity": gate_min_sensitivity,
        "gate_min_specificity": gate_min_specificity,
        "gate_max_auc_drop": gate_max_auc_drop,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    problems = retrain_view.form_problems(values, defaults)
    if problems:
        st.error("Not started — correct these values:\n\n" + "\n".join(f"- {p}" for p in problems))
        st.stop()
    try:
        if dataset_zip is not None:
            data_path = str(save_uploaded_zip(dataset_zip.getvalue(), dataset_zip.name))
            values["data_path"] = data_path
        dataset = retrain_view.check_dataset_path(data_path)
        job_id = jobs.start_job(
            dataset, settings.params_from_form(params, values), models_root=registry.root, promote="never",
            actor=ui_common.actor(),
        )  # fmt: skip
    except jobs.JobBusy as error:
        st.warning(f"Not started: {error}.")
    except CxrError as error:
        st.error(str(error))
    else:
        st.session_state["started_job"] = job_id
        st.rerun()


# ------------------------------------------------------------------------------------------ progress
def progress_panel() -> None:
    listed = jobs.list_jobs()
    if not listed:
        st.caption("No retrain job has been run yet.")
        return
    status = listed[0]
    view = retrain_view.job_view(status)
    st.markdown(f"**Latest job** `{view['id']}`")
    st.progress(view["fraction"], text=view["label"])  # the one state label of this job
    if view["epoch"] is not None:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Epoch", f"{view['epoch']} / {view['epochs']}")
        c2.metric("Training loss", ui_common.num(view["loss"]))
        c3.metric("Validation AUC", ui_common.num(view["val_auc"]))
        if view["eta"]:
            c4.metric("Time left (training)", view["eta"])
        elif view["elapsed"]:
            c4.metric("Ran for", view["elapsed"])
    elif view["active"]:
        st.caption(f"{view['detail'] or view['label']} — running for {view['elapsed'] or 'a moment'}.")
    elif view["elapsed"]:
        st.caption(f"Ran for {view['elapsed']}.")
    if view["state"] == "failed":
        st.error(f"The job failed: {view['error']}")
    elif view["state"] == "cancelled":
        st.warning("The job was cancelled; nothing was registered.")
    if view["active"] and st.button("Cancel this job", key="cancel_job"):
        jobs.cancel_job(view["id"], actor=ui_common.actor())
        st.rerun()
    with st.expander("Progress log (last lines)", expanded=view["state"] == "failed"):
        log = retrain_view.progress_log(jobs.log_tail(view["id"], lines=400), lines=30)
        st.code(log or "(no progress yet)", language=None)
    if active and not view["active"]:
        st.rerun()  # the job just ended: redraw the whole page to show the quality gate's verdict


st.subheader("Progress")
st.fragment(progress_panel, run_every=2 if active else None)()

# ------------------------------------------------------------------------------------------ verdict
try:
    current = registry.current_version()
except CxrError:
    current = None

finished = next((j for j in job_list if retrain_view.gate_view(j)), None)
gate = retrain_view.gate_view(finished) if finished else None
if gate and not retrain_view.show_gate(active):
    st.caption(f"The verdict on the previous candidate ({gate['version']}) is hidden while a new job runs.")
elif gate:
    st.subheader(f"Candidate {gate['version']}")
    candidate_versions = {m["version"] for m in registry.versions()}
    if gate["version"] not in candidate_versions:
        st.warning(f"Version {gate['version']} is no longer in the registry.")
    else:
        compared = [gate["version"]] + ([current] if current and current != gate["version"] else [])
        table = versions_view.compare_rows([evaluation_view.load_evaluation(registry, v) for v in compared])
        st.table(pd.DataFrame(table).set_index("").iloc[:11])
        if gate["floors"]:
            st.caption(retrain_view.floors_caption(gate["floors"], gate["compared_with"]))
        for note in gate["notes"]:
            st.caption(f"Not applied: {note}.")
        if gate["passed"]:
            against = f" against {gate['compared_with']}" if gate["compared_with"] else ""
            st.success(f"Quality gate passed{against}: it may be promoted.", icon=":material/verified:")
        else:
            st.error(
                "Quality gate failed, so it cannot be promoted from here:\n\n"
                + "\n".join(f"- {reason}" for reason in gate["reasons"]),
                icon=":material/block:",
            )
        verdict = retrain_view.verdict_now(gate, registry, params)
        if verdict.state == "in_use":
            st.info(verdict.message)
        elif verdict.state == "stale":
            st.warning(verdict.message)
        elif verdict.allowed and st.button(f"Promote {gate['version']} to the model in use", type="primary"):
            try:
                registry.promote(gate["version"], actor=ui_common.actor())
            except CxrError as error:
                st.error(str(error))
            else:
                st.session_state["admin_notice"] = f"{gate['version']} is now the model in use."
                st.rerun()

# ------------------------------------------------------------------------------------------ rollback
st.subheader("Model in use")
notice = st.session_state.pop("admin_notice", None)
if notice:
    st.success(notice)
try:
    history = registry.history()
except CxrError:
    history = []
st.markdown(f"Current version: **{current or 'none'}**")
if history:
    if st.button(f"Roll back to the previous version ({history[-1]})", key="rollback"):
        try:
            version = registry.rollback(actor=ui_common.actor())
        except CxrError as error:
            st.error(str(error))
        else:
            st.session_state["admin_notice"] = f"Rolled back: {version} is now the model in use."
            st.rerun()
else:
    st.caption("There is no earlier version to roll back to.")

st.subheader("Refused candidates")
pruned = retrain_view.prune_refused(registry, actor=ui_common.actor())
refused = retrain_view.refused_versions(registry)
if refused:
    st.dataframe(
        pd.DataFrame([{"version": v, "why the gate refused it": "; ".join(r)} for v, r in sorted(refused.items(), reverse=True)]),
        hide_index=True,
    )
st.caption(
    f"Candidates that failed the quality gate are kept apart from usable versions and never offered for promotion. "
    f"Retention: the newest {retrain_view.KEEP_REFUSED} are kept for inspection, older ones are deleted."
    + (f" Deleted now: {', '.join(pruned)}." if pruned else "")
    + ("" if refused else " None at present.")
)

st.subheader("Job history")
if job_list:
    st.dataframe(pd.DataFrame(retrain_view.history_rows(job_list)), hide_index=True)
else:
    st.caption("No jobs yet.")
