"""The lung census the lung gate reads: the shipped lung model on real films, a picture with no lungs
slipped into a dataset, and a flat picture that fails before the lung check."""

import shutil
from pathlib import Path

import cv2
import numpy as np

from cxr_core.modelling.lung_probes import non_chest_pictures
from cxr_core.modelling.lungs import load_lung_model
from cxr_core.pipeline.lung_census import lung_census

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def test_the_census_counts_the_films_the_lung_check_refuses_and_names_them(tmp_path):
    films = tmp_path / "films"
    for label in ("Normal", "Tuberculosis"):
        (films / label).mkdir(parents=True)
        for path in sorted((SAMPLE / label).glob("*.png"))[:2]:
            shutil.copy(path, films / label / path.name)
    cv2.imwrite(str(films / "Normal" / "scan-of-a-form.png"), non_chest_pictures()["text page"])
    cv2.imwrite(str(films / "Normal" / "flat.png"), np.full((400, 400), 90, np.uint8))

    census = lung_census(load_lung_model(), films)

    assert set(census["probes"]) == set(non_chest_pictures()) and set(census["probes"].values()) == {"refused"}
    counted = census["films"]
    assert counted["checked"] == 5 and counted["unreadable_or_flat"] == 1  # the flat one says nothing of lungs
    assert counted["refused"] == 1 and sum(counted["refused_by_source"].values()) == 1
    (example,) = counted["examples"]
    assert example["film"] == "Normal/scan-of-a-form.png" and example["reason"]
    assert counted["data_name"] == "films"


def test_without_films_only_the_probes_are_tried():
    census = lung_census(load_lung_model(), None)
    assert set(census) == {"probes"} and len(census["probes"]) == 9
