"""What a lung model does to the pictures it will meet: the non-chest probes it must refuse, and the
real X-rays of a labelled dataset it must not.

Held-out Dice is measured on the two sources that have masks; a lung model also serves films from
hospitals with none. The 96 px networks tried for issue #23.1 met the Dice targets and still joined
both lungs through the heart on nine rahmandb TB films, so the check refused them as "not a chest":
Dice never saw it. The census counts those refusals on every film of a dataset (the classifier's
training set) and records the reasons, and the lung gate holds a candidate to them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2

from cxr_core.errors import CxrError
from cxr_core.imaging.preprocess import NOT_A_CHEST, to_model_input
from cxr_core.modelling.lung_probes import non_chest_pictures
from cxr_core.pipeline.datasets import discover, read_record_bytes
from cxr_core.pipeline.lung_extra_data import content_sha256

EXAMPLES = 20  # refused films named in the record, for someone to look at


def lung_census(lungs, films_root: str | Path | None, trained_on=frozenset()) -> dict:
    """Probes refused or accepted; with ``films_root``, how many of its films the lung check refuses.

    Films that fail before the lung check (unreadable, flat) are counted apart: they say nothing
    about the lung model; so are films whose content hash is in ``trained_on`` (the mask images it
    trained and stopped on, the films it was distilled on): the census must judge films the model
    meets for the first time, as a clinic's are.
    """
    probes = {}
    for name, picture in non_chest_pictures().items():
        try:
            to_model_input(cv2.imencode(".png", picture)[1].tobytes(), lungs=lungs)
            probes[name] = "accepted"
        except CxrError as error:
            probes[name] = "refused" if str(error).startswith(NOT_A_CHEST) else f"failed before the check: {error}"
    census = {"probes": probes}
    if films_root is None:
        return census
    found = discover(films_root).records
    refused, other, seen = [], 0, 0
    for record in found:
        try:
            data = read_record_bytes(record)
            if content_sha256(data) in trained_on:
                seen += 1
                continue
            to_model_input(data, lungs=lungs)
        except CxrError as error:
            if str(error).startswith(NOT_A_CHEST):
                refused.append((record, str(error)[len(NOT_A_CHEST) :].strip(" ()")))
            else:
                other += 1
    census["films"] = {
        "data_name": Path(films_root).name,
        "checked": len(found) - seen - other,
        "unreadable_or_flat": other,
        "seen_in_training": seen,
        "refused": len(refused),
        "refused_by_source": dict(sorted(Counter(record.source for record, _ in refused).items())),
        "examples": [{"film": record.display_path.removeprefix(str(Path(films_root)) + "/"), "reason": reason}
                     for record, reason in refused[:EXAMPLES]],  # fmt: skip
    }
    return census
