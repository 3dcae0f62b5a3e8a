"""Local validation scores a clinic's films exactly as the Screen page and ``predict`` would."""

from pathlib import Path

import numpy as np
from builders import clinic_folder
from conftest import PROJECT_ROOT, shared_records

from cxr_core.modelling.predictor import Predictor
from cxr_core.pipeline.local_validation import score_local_set
from cxr_core.registry.store import Registry


def test_local_scores_are_the_serving_scores_lung_box_included(tmp_path, shared_cxr):
    """A site threshold chosen on other inputs (e.g. whole films for a lung-box model) would mean nothing."""
    rows = shared_records("da", "Tuberculosis")[:5] + shared_records("da", "Normal")[:5]
    clinic = clinic_folder(tmp_path / "clinic", rows, shared_cxr)
    predictor = Predictor(Registry(PROJECT_ROOT / "models").resolve())
    assert predictor.crop_to_lungs, "the shipped model sees the lungs' box"
    scored = score_local_set(clinic, predictor)
    served = {Path(s.name).name: s.prediction.probability
              for s in predictor.screen([(Path(p).name, Path(p)) for p in sorted(clinic.glob("*.jpg")) +
                                         sorted(clinic.glob("*.png"))])}  # fmt: skip
    assert len(scored["scores"]) == len(rows) == len(served) and not scored["skipped"]
    for path, score in zip(scored["paths"], scored["scores"], strict=True):
        assert np.isclose(score, served[Path(path).name], atol=1e-5), path
