"""A drop of films is screened within per-batch limits (files, total pixels), a chunk at a time."""

import pytest
from conftest import shared_records

from cxr_core.modelling.predictor import Predictor
from cxr_core.registry.store import Registry
from ui import screening_view


@pytest.fixture(scope="module")
def predictor():
    model_dir, _ = Registry().resolve_with_warning(None)  # the shipped model, read only
    return Predictor(model_dir)


@pytest.fixture(scope="module")
def uploads(shared_cxr):
    rows = shared_records("tbx11k", "Tuberculosis")[:7]  # 512x512 each: 0.26 megapixels
    assert len(rows) == 7
    found, _ = screening_view.dedupe_uploads([(f"film{i}.png", (shared_cxr / r["path"]).read_bytes())
                                              for i, r in enumerate(rows)])  # fmt: skip
    assert len(found) == 7
    return found


class Spy:
    """The real predictor, with each call's batch size written down."""

    def __init__(self, predictor):
        self.predictor, self.calls = predictor, []

    def screen(self, items, **options):
        self.calls.append(len(items))
        return self.predictor.screen(items, **options)


def test_films_are_scored_in_chunks_and_kept_only_at_display_size(predictor, uploads):
    spy = Spy(predictor)
    items, notice = screening_view.screen_in_chunks(spy, uploads, chunk=3)
    assert spy.calls == [3, 3, 1] and notice is None  # never all seven decoded at once
    assert [item.name for item in items] == [upload.name for upload in uploads]
    assert all(item.ok and item.prediction is not None for item in items)
    alone = predictor.screen([(uploads[4].name, uploads[4].data)])[0]
    assert items[4].prediction.probability == pytest.approx(alone.prediction.probability, abs=1e-5)


def test_the_number_of_files_per_batch_is_capped(predictor, uploads, monkeypatch):
    monkeypatch.setenv("CXR_MAX_BATCH_FILES", "5")
    spy = Spy(predictor)
    items, notice = screening_view.screen_in_chunks(spy, uploads, chunk=4)
    assert len(items) == 5 and sum(spy.calls) == 5
    assert "first 5 of 7 files" in notice


def test_the_total_pixels_per_batch_are_capped(predictor, uploads, monkeypatch):
    monkeypatch.setenv("CXR_MAX_BATCH_MEGAPIXELS", "1")
    spy = Spy(predictor)
    items, _ = screening_view.screen_in_chunks(spy, uploads, chunk=2)
    assert spy.calls == [2, 2]  # 4 x 0.26 MP reaches the limit: the last three films are not decoded
    assert [item.ok for item in items] == [True] * 4 + [False] * 3
    assert all("not screened" in item.error and "limit 1" in item.error for item in items[4:])
