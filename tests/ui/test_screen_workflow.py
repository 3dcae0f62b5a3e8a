"""Issue 12 view-models: worklist order and filter, duplicates, identity for people, viewer helpers, the PDF."""

import datetime as dt
import io
import zipfile

import numpy as np
import pytest
from test_views import PREDICTOR, screened

from cxr_core.imaging.display import apply_window
from ui import report_pdf, screening_view


def batch():
    t = PREDICTOR.threshold
    return [
        screened("normal.png", t - 0.3),
        screened("broken.png", error="image file is truncated or corrupt"),
        screened("tb-low.png", t + 0.1),
        screened("border.png", t - 0.02),
        screened("tb-high.png", t + 0.5),
    ]


def test_worklist_is_sorted_by_risk_and_filtered_by_result():
    items = batch()
    rows = screening_view.summary_rows(items, PREDICTOR)
    listed = screening_view.worklist(rows, items)
    assert [r["file"] for r in listed] == [
        "tb-high.png",
        "tb-low.png",
        "border.png",
        "normal.png",
        "broken.png",
    ]
    assert [r["result"] for r in listed] == [
        "TB suspected",
        "TB suspected",
        "Borderline (no-TB side)",
        "No TB signs",
        "Unreadable",
    ]
    assert [r["film"] for r in listed] == [4, 2, 3, 0, 1]  # indices back into the batch
    only = screening_view.worklist(rows, items, ["Borderline", "Unreadable"])
    assert [r["file"] for r in only] == ["border.png", "broken.png"]
    assert screening_view.group_counts(items) == {
        "TB suspected": 2, "Borderline": 1, "No TB signs": 1, "Unreadable": 1
    }  # fmt: skip


def test_the_same_content_is_one_entry_whatever_its_name():
    files = [("a.png", b"one"), ("b.png", b"two"), ("a copy.png", b"one"), ("a.png", b"one")]
    kept, duplicates = screening_view.dedupe_uploads(files)
    assert [u.name for u in kept] == ["a.png", "b.png"]
    assert duplicates == [("a copy.png", "a.png"), ("a.png", "a.png")]
    notice = screening_view.duplicate_notice(duplicates)
    assert notice.startswith("2 duplicate files counted once")
    assert "a copy.png is the same file as a.png" in notice and "a.png was dropped twice" in notice
    assert screening_view.duplicate_notice([]) is None


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("DOE^JOHN", "Doe, John"),
        ("Doe^Jane", "Doe, Jane"),
        ("O'BRIEN^MARY^ANN", "O'Brien, Mary Ann"),
        ("McDonald^Ann", "McDonald, Ann"),
        ("SMITH^JOHN^^DR^JR", "Smith, Dr John, Jr"),
        ("DOE^JOHN=ドウ^ジョン", "Doe, John"),
        ("ANONYMOUS", "Anonymous"),
        ("", ""),
    ],
)
def test_person_names_are_written_for_people(raw, shown):
    assert screening_view.person_name(raw) == shown


def test_identity_is_formatted_and_only_in_rows_when_switched_on():
    metadata = {
        "PatientName": "DOE^JOHN",
        "PatientID": "MRN1",
        "StudyDate": "20240131",
        "AccessionNumber": "ACC9",
        "StudyInstanceUID": "1.2.3",
    }
    item = screened("s.dcm", 0.9, metadata=metadata)
    assert screening_view.identity_lines(item) == [
        ("Patient", "Doe, John"), ("Patient ID", "MRN1"), ("Study date", "2024-01-31"), ("Accession number", "ACC9")
    ]  # fmt: skip
    row = screening_view.summary_rows([item], PREDICTOR, include_identifiers=True)[0]
    assert row["patient_name"] == "Doe, John" and row["accession_number"] == "ACC9"
    assert "patient_name" not in screening_view.summary_rows([item], PREDICTOR)[0]


def test_window_level_maps_the_chosen_greys_to_black_and_white():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(apply_window(gray, 128, 256), gray)
    narrow = apply_window(gray, 100, 51)
    assert narrow[gray <= 74].max() == 0 and narrow[gray >= 125].min() == 255
    assert 120 <= narrow.ravel()[100] <= 135


def test_lung_outline_is_drawn_only_when_a_mask_is_there():
    item = screened("x.png", 0.5)
    assert screening_view.lung_contours(item, (300, 300)) is None
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 10:40] = 1
    mask[20:80, 60:90] = 1
    item.lung_mask = mask
    contours = screening_view.lung_contours(item, (300, 300))
    assert len(contours) == 2 and all(c.shape[1] == 2 for c in contours)
    assert max(c[:, 0].max() for c in contours) > 200  # scaled to the picture shown


def test_model_change_notice():
    assert screening_view.model_change_notice(None, "v2") is None
    assert screening_view.model_change_notice("v2", "v2") is None
    assert "from v1 to v2" in screening_view.model_change_notice("v1", "v2")


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def test_pdf_report_holds_the_result_and_identity_only_on_request():
    metadata = {
        "PatientName": "DOE^JOHN",
        "PatientID": "MRN1",
        "StudyDate": "20240131",
        "AccessionNumber": "ACC9",
    }
    item = screened("chest.dcm", PREDICTOR.threshold + 0.3, metadata=metadata)
    item.prediction.heatmap = np.random.default_rng(0).random((8, 8))
    when = dt.datetime(2026, 11, 30, 9, 15, tzinfo=dt.UTC)
    text = pdf_text(
        report_pdf.film_report_pdf(item, model_version="v-test", include_identifiers=True, created=when)
    )
    for expected in (
        "chest.dcm", screening_view.DECISION_TB, "0.720", "TB suspected at 0.420 or above", "v-test",
        "2026-11-30 09:15", "Doe, John", "MRN1", "2024-01-31", "ACC9", "Not a medical device",
    ):  # fmt: skip
        assert expected in text, expected
    anonymous = pdf_text(report_pdf.film_report_pdf(item, model_version="v-test", created=when))
    assert "Doe" not in anonymous and "MRN1" not in anonymous and "ACC9" not in anonymous
    assert "v-test" in anonymous


def test_unreadable_film_gets_a_report_and_the_batch_zip_keeps_every_file():
    item = screened("broken.png", error="image file is truncated or corrupt")
    text = pdf_text(report_pdf.film_report_pdf(item, model_version="v-test"))
    assert screening_view.DECISION_FAILED in text and "truncated" in text
    assert report_pdf.report_name(item) == "broken_tb_report.pdf"
    archive = report_pdf.batch_zip([("a.pdf", b"1"), ("a.pdf", b"2"), ("b.csv", b"3")])
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.namelist() == ["a.pdf", "a_2.pdf", "b.csv"] and z.read("a_2.pdf") == b"2"


def test_export_names_are_safe():
    assert screening_view.report_stem("../../etc/pa ss.wd.png") == "pa_ss.wd"
    assert screening_view.report_stem("=cmd|x") == "cmd_x"
    assert screening_view.report_stem(".png") == "png"


# ------------------------------------------------------------------------------ evaluation: honest figures


def test_percentages_never_round_to_a_false_certainty():
    from ui.evaluation_view import fmt_count, fmt_pct

    assert fmt_pct(0.9996) == "> 99.9%" and fmt_pct(0.99951) == "> 99.9%"
    assert fmt_pct(0.0004) == "< 0.1%" and fmt_pct(0.00049) == "< 0.1%"
    assert fmt_pct(1.0) == "100%" and fmt_pct(0.0) == "0%"
    assert fmt_pct(0.912) == "91.2%" and fmt_pct(None) == "n/a"
    assert fmt_count(0) == "0" and fmt_count(0.04) == "< 0.1" and fmt_count(0.4) == "0.4"
    assert fmt_count(9.96) == "10.0" and fmt_count(123.4) == "123"


def test_tiny_test_split_withholds_figures():
    from types import SimpleNamespace

    from ui import evaluation_view

    def ev(n, tb):
        labels = [1] * tb + [0] * (n - tb)
        return SimpleNamespace(
            predictions=[{"label": x} for x in labels],
            labels=np.array(labels),
            metrics={"who_minimum_met": True, "per_source": {}},
        )

    assert evaluation_view.too_few_test_films(ev(4, 1)) == "too few test films (n=4)"
    assert evaluation_view.too_few_test_films(ev(100, 9)) == "too few test films (n=100)"
    assert evaluation_view.too_few_test_films(ev(30, 10)) is None
    assert evaluation_view.who_badge(ev(4, 1)) is None
    assert evaluation_view.who_badge(ev(40, 20)) == ("met", "for a TB screening test")


# ------------------------------------------------------------------------------ retrain: one state per job


def test_job_states_have_one_label_and_no_time_left_after_the_end():
    from ui import retrain_view

    assert retrain_view.job_view({"state": "running", "created_ts": 0})["label"] == "Starting"
    assert retrain_view.job_view({"state": "starting"})["label"] == "Starting"
    training = {
        "state": "running",
        "stage": "train",
        "progress": {"epoch": 1, "epochs": 4, "eta_seconds": 90},
    }
    view = retrain_view.job_view(training)
    assert view["label"] == "Training" and view["eta"] == "1 min 30 s"
    cancelled = retrain_view.job_view(dict(training, state="cancelled"))
    assert cancelled["label"] == "Cancelled" and cancelled["eta"] is None and cancelled["epoch"] == 1
    assert retrain_view.show_gate(active=True) is False and retrain_view.show_gate(active=False) is True


def test_progress_log_keeps_the_pipeline_lines_only():
    from ui import retrain_view

    log = "\n".join(
        [
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            "I0000 00:00:1796012721.921887   32663 port.cc:153] oneDNN custom operations are on.",
            "E0000 00:00:1796012721.9 cuda_dnn.cc:8310] Unable to register cuDNN factory",
            "WARNING:absl:Compiled the loaded model, but the compiled metrics have yet to be built.",
            "epoch 1/2 loss=0.7461 val_loss=0.7037 val_auc=0.7365 eta=12.0s",
            "",
            "Traceback (most recent call last):",
            "cxr_core.errors.DatasetError: no images found",
        ]
    )
    assert retrain_view.progress_log(log).splitlines() == [
        "epoch 1/2 loss=0.7461 val_loss=0.7037 val_auc=0.7365 eta=12.0s",
        "Traceback (most recent call last):",
        "cxr_core.errors.DatasetError: no images found",
    ]
    assert (
        retrain_view.progress_log("\n".join(f"line {i}" for i in range(50)), lines=3)
        == "line 47\nline 48\nline 49"
    )


def test_version_comparison_withholds_figures_of_a_tiny_split():
    from types import SimpleNamespace

    from ui import versions_view

    labels = [1, 0, 0, 0]
    tiny = SimpleNamespace(
        version="v-tiny",
        metadata={"created": "2026-11-30T00:00:00"},
        metrics={"roc_auc": 1.0, "roc_auc_ci": [1.0, 1.0], "n": 4, "n_positive": 1, "who_minimum_met": True},
        operating_point={"sensitivity": 1.0},
        predictions=[{"label": x} for x in labels],
        labels=np.array(labels),
        threshold=0.5,
    )
    rows = {row[""]: row["v-tiny"] for row in versions_view.compare_rows([tiny])}
    assert (
        rows["ROC AUC"] == "too few test films (n=4)"
        and rows["WHO minimum met"] == "too few test films (n=4)"
    )
    assert rows["Operating threshold"] == "0.5000"


def _text_boxes(fig) -> list[tuple[str, object]]:
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts if t.get_text()]


@pytest.mark.parametrize("ok", [True, False])
def test_the_pdf_never_overlaps_whatever_the_length_of_names_and_messages(ok):
    """Every text box of the page is measured with matplotlib's renderer: none intersects another or a
    picture, and all lie on the page; long names without spaces and long messages included."""
    import matplotlib

    name = "Patient_" + "VeryLongFileNameWithoutAnySpaces" * 8 + ".dcm"
    if ok:
        item = screened(name, PREDICTOR.threshold + 0.01, warnings=["small image: 200x180, " + "less reliable " * 30])
        mask = np.zeros(item.image.pixels.shape, np.uint8)
        mask[20:80, 10:40] = 1
        mask[20:80, 60:90] = 1
        item.lung_mask = mask
    else:
        item = screened(name, error="image file is truncated or corrupt: " + "the decoder stopped early; " * 60)
    with matplotlib.rc_context(report_pdf._RC):
        fig = report_pdf.report_figure(item, model_version="v-test-" + "x" * 80, include_identifiers=False)
    boxes = _text_boxes(fig)
    page = fig.bbox
    assert len(boxes) >= 8
    for text, box in boxes:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 + 0.5 and page.y0 <= box.y0 and box.y1 <= page.y1, text
    for i, (first, a) in enumerate(boxes):
        for second, b in boxes[i + 1 :]:
            assert not a.overlaps(b), (first[:40], second[:40])
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for text, box in boxes:
            assert not ax.get_window_extent(renderer).overlaps(box), text[:40]
    written = "\n".join(text for text, _ in boxes)
    if ok:
        assert screening_view.DECISION_BORDERLINE_TB in written and "Borderline:" in written  # the flag
        assert "Evidence inside the lung fields" in written or item.evidence_in_lungs is None
        outlines = [line for ax in fig.axes for line in ax.lines]
        assert len(outlines) == 4  # two lung fields, on the film and on the Grad-CAM
    else:
        assert "Result:" in written and "Problem:" in written and "…" in written  # cut, not run over
