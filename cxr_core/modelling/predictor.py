"""Serving: one loaded model version scores batches of X-rays with Grad-CAM and an OOD check.

The original system loaded the model on every request and called ``model.predict`` per image; here a
:class:`Predictor` is built once per process (the dashboard caches it, the CLI builds one per run) and
scores whole batches through a single compiled function.
"""

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from cxr_core.errors import CxrError, ModelError
from cxr_core.imaging.decode import IMAGE_EXTENSIONS, DecodedImage
from cxr_core.imaging.preprocess import (
    CropBox,
    DecodedFilm,
    decode_for_model,
    finish_model_inputs,
    model_input_from_image,
    to_model_input,
)
from cxr_core.modelling import ood
from cxr_core.modelling.evidence import film_evidence, lungs_in_view, outer_band_share
from cxr_core.settings import Layout

TB = "Tuberculosis"
NORMAL = "Normal"
BATCH_SIZE = 32
DECODE_AHEAD = 2 * BATCH_SIZE  # files the CLI decodes ahead of scoring (bounds memory, keeps cores busy)


@dataclass
class Prediction:
    probability: float
    label: str
    threshold: float
    heatmap: np.ndarray  # in TB-probability units: [0, probability], see gradcam.absolute_heatmaps
    ood_distance: float | None = None
    warnings: list[str] = field(default_factory=list)
    raw_heatmap: np.ndarray | None = field(default=None, repr=False)  # un-scaled, for evidence shares

    @property
    def evidence_outer_band(self) -> float | None:
        """Share of the Grad-CAM mass in the frame's outer band: framing, not lungs."""
        return None if self.raw_heatmap is None else outer_band_share(self.raw_heatmap)


@dataclass
class ScreenedImage:
    """Everything the dashboard and CLI show for one input, good or bad."""

    name: str
    ok: bool
    error: str | None = None
    image: DecodedImage | None = None
    box: CropBox | None = None
    prediction: Prediction | None = None
    model_input: np.ndarray | None = field(default=None, repr=False)
    lungs: dict | None = field(default=None, repr=False)  # lung mask at the picture's size, box, plausibility

    @property
    def lung_mask(self) -> np.ndarray | None:
        return None if self.lungs is None else self.lungs["mask"]

    @lung_mask.setter
    def lung_mask(self, mask: np.ndarray | None) -> None:
        self.lungs = None if mask is None else {**(self.lungs or {}), "mask": mask}

    @property
    def evidence(self) -> dict:
        """Where the Grad-CAM lies: share of its mass in the (grown) lung fields, and whether its peak is.

        Measured in the network's view with the lungs grown by 5 % of the film's longer side, exactly as
        evaluation and the model card measure it (:func:`cxr_core.modelling.evidence.film_evidence`).
        """
        if self.lungs is None or self.prediction is None or self.prediction.raw_heatmap is None:
            return {"lung_share": None, "peak_in_lungs": None}
        box = self.box
        region = self.lungs["mask"][box.top : box.bottom, box.left : box.right]
        if not region.size:
            return {"lung_share": None, "peak_in_lungs": None}
        side = max(64, 8 * self.prediction.raw_heatmap.shape[0])
        _, grown = lungs_in_view(region, max(self.image.pixels.shape), side)
        return film_evidence(self.prediction.raw_heatmap, grown)

    @property
    def evidence_in_lungs(self) -> float | None:
        """Share of the Grad-CAM mass inside the grown lung fields (None without a lung model)."""
        return self.evidence["lung_share"]

    @property
    def warnings(self) -> list[str]:
        found = list(self.image.warnings) if self.image else []
        if self.prediction:
            found += self.prediction.warnings
        return found


class Predictor:
    """A registry version (or any folder with ``model.keras`` and ``metadata.json``) ready to score."""

    def __init__(self, model_dir: str | Path):
        from cxr_core.modelling.runtime import serving_scorer

        self.model_dir = Path(model_dir)
        model_path = self.model_dir / Layout.MODEL
        if not model_path.exists():
            raise ModelError(f"no model file in {self.model_dir}")
        try:
            self.metadata = json.loads((self.model_dir / Layout.METADATA).read_text())
        except (OSError, ValueError) as error:
            raise ModelError(f"model metadata in {self.model_dir} is missing or unreadable") from error
        self._model = None
        self.version = self.metadata.get("version") or self.model_dir.name
        self.threshold = float(self.metadata["threshold"])
        self.model_threshold = self.threshold
        self.site: str | None = None
        self.ood_stats = ood.load(self.model_dir / Layout.OOD)
        # TFLite when the version carries its checked twin (docs/performance.md: twice as fast for one
        # film, level batched, same outputs), with no Keras (and no TensorFlow) in the process; else the
        # Keras Grad-CAM pass. ``scorer.forward`` is its bare inference, which benchmarks count as the
        # floor of a film's cost
        self.scorer, archive = serving_scorer(self.model_dir, self.metadata, lambda: self.model)
        self.side = archive.side if archive is not None else int(self.model.input_shape[1])
        self.runtime = self.scorer.name
        self.preprocessing = self.metadata.get("preprocessing") or {}
        self.lungs = _lung_model_for(self.preprocessing)
        self.crop_to_lungs = bool(self.preprocessing.get("lung_crop")) and self.lungs is not None
        self.lung_margin = float(self.preprocessing.get("lung_margin", 0.08))
        self.mask_to_lungs = self.crop_to_lungs and bool(self.preprocessing.get("lung_mask"))

    @property
    def model(self):
        """The Keras network, loaded in safe mode on first use (at once when Keras serves).

        When the TFLite twin serves, a model.keras that Keras would refuse is refused here, on first use
        (benchmarks, the Keras runtime): the twin was made from these checked bytes, and a file whose
        layers the archive reader does not take is loaded by Keras already when the Predictor is built.
        """
        if self._model is None:
            from cxr_core.modelling.networks import load_model

            try:
                self._model = load_model(self.model_dir / Layout.MODEL)
            except Exception as error:  # Keras raises many types for a damaged archive
                # a Lambda layer, or a stored lambda inside a layer's settings (Keras names the latter
                # only by its config, not by safe mode): Python code inside the model file
                if "safe_mode" in str(error) or "'__lambda__'" in str(error):
                    raise ModelError(
                        f"model file in {self.model_dir} is refused: it contains executable code (a Lambda "
                        "layer or a custom object), which is never loaded"
                    ) from error
                raise ModelError(f"model file in {self.model_dir} cannot be loaded: it is damaged") from error
        return self._model

    def model_input(self, source, **read_options):
        """:func:`to_model_input` exactly as this model was trained: same lung check, same crop."""
        return to_model_input(source, self.side, **self.lung_options(), **read_options)

    def model_input_from_image(self, image: DecodedImage):
        return model_input_from_image(image, self.side, **self.lung_options())

    def lung_options(self) -> dict:
        """The lung-model arguments of the input path, exactly as this model was trained with them."""
        return {
            "lungs": self.lungs,
            "crop_to_lungs": self.crop_to_lungs,
            "lung_margin": self.lung_margin,
            "mask_to_lungs": self.mask_to_lungs,
        }

    def use_site(self, profile: dict | None) -> None:
        """Decide at a site profile's threshold (None: the model's own, chosen on development data).

        A profile was measured with one model version; on another its threshold means nothing.
        """
        if profile is None:
            self.threshold, self.site = self.model_threshold, None
            return
        if profile.get("model_version") != self.version:
            raise ModelError(
                f"The site profile {profile.get('name')!r} was set for model {profile.get('model_version')}, "
                f"but this is {self.version}: validate the new model on the site's films again."
            )
        self.threshold, self.site = float(profile["threshold"]), profile["name"]

    def predict(self, images: np.ndarray) -> list[Prediction]:
        """Score preprocessed uint8 images ``(n, side, side[, 1])`` in batches."""
        results: list[Prediction] = []
        for start in range(0, len(images), BATCH_SIZE):
            cams = self.scorer(images[start : start + BATCH_SIZE])
            distances = ood.distance(self.ood_stats, cams.embeddings) if self.ood_stats is not None else None
            for i, probability in enumerate(cams.probabilities):
                probability = float(probability)
                warnings = []
                distance = None if distances is None else float(distances[i])
                if distance is not None and distance > float(self.ood_stats["alarm"]):
                    warnings.append(
                        "this image does not resemble the chest X-rays the model was trained on; "
                        "treat the result with caution (is it a frontal chest radiograph?)"
                    )
                results.append(
                    Prediction(
                        probability=probability,
                        label=TB if probability >= self.threshold else NORMAL,
                        threshold=self.threshold,
                        heatmap=cams.heatmaps[i],
                        ood_distance=distance,
                        warnings=warnings,
                        raw_heatmap=cams.raw[i],
                    )
                )
        return results

    def screen(
        self, items: Iterable[tuple[str, bytes | str | os.PathLike]], **read_options
    ) -> list[ScreenedImage]:
        """Decode, check, preprocess and score named inputs; a bad one gets its message, the rest go on."""
        screened = self.finish([(name, self.decode(source, read_options)) for name, source in items])
        self.attach_predictions(screened)
        return screened

    def decode(self, source, read_options: dict | None = None):
        """First half of :meth:`model_input` (decode, checks, lung input): a DecodedFilm or the error."""
        try:
            return decode_for_model(source, lungs=self.lungs, **(read_options or {}))
        except CxrError as error:
            return error

    def finish(self, decoded: list[tuple[str, object]], map_fn=map) -> list[ScreenedImage]:
        """Second half for many films: the lung network once for all of them, then each film's crop."""
        prepared = finish_model_inputs(
            [film for _, film in decoded], self.side, **self.lung_options(), map_fn=map_fn
        )
        return [_screened(name, result) for (name, _), result in zip(decoded, prepared, strict=True)]

    def attach_predictions(self, items: list[ScreenedImage]) -> None:
        """Score, in one batch, every item that decoded; failed items keep their message."""
        good = [item for item in items if item.ok]
        if good:
            batch = np.stack([item.model_input for item in good])[..., None]
            for item, prediction in zip(good, self.predict(batch), strict=True):
                item.prediction = prediction


def _lung_model_for(preprocessing: dict):
    """The lung model the classifier was trained with (checked by checksum), else the current one.

    Without any registered lung model the screening still works, without outline, lung evidence and
    the anatomical check; a classifier trained on lung crops cannot, and says so.
    """
    from cxr_core.modelling.lungs import load_lung_model

    recorded = preprocessing.get("lung_model") or {}
    if recorded:
        return load_lung_model(recorded.get("version"), recorded.get("sha256"))
    try:
        return load_lung_model()
    except (CxrError, OSError):
        return None


def _screened(name: str, prepared) -> ScreenedImage:
    if isinstance(prepared, CxrError):
        return ScreenedImage(name=name, ok=False, error=str(prepared))
    return ScreenedImage(
        name=name, ok=True, image=prepared.image, box=prepared.box, model_input=prepared.pixels,
        lungs=prepared.lungs,
    )  # fmt: skip


def iter_image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named directly (whatever they are), and the image-like files below named folders.

    Inside a folder, a README or a CSV is not an X-ray somebody forgot: only image extensions and
    extensionless files (DICOM often has none) are taken; hidden files are skipped.
    """
    for path in map(Path, paths):
        if not path.is_dir():
            yield path
            continue
        for child in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
            image_like = child.suffix.lower() in IMAGE_EXTENSIONS or not child.suffix
            if child.is_file() and not hidden and image_like:
                yield child


def predict_paths(
    paths: Iterable[str | Path], predictor: Predictor, workers: int | None = None
) -> Iterator[dict]:
    """One CLI row per file; decoding runs in threads (the decoders release the GIL) ahead of scoring.

    At most ``DECODE_AHEAD`` files are decoded ahead of the scorer, so memory stays flat for any
    folder size (a full-resolution picture is held until its batch is scored) and stopping early
    does not wait for the whole folder to be decoded. Each batch of files goes through the lung
    network in one call (a third less CPU per film than one call per film); the per-film steps after
    it run on a second, small pool so that they do not queue behind the files being decoded ahead.
    """
    files = iter(list(iter_image_files(paths)))
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=workers) as after:

        def submit(path: Path):
            return pool.submit(lambda: (str(path), predictor.decode(path)))

        pending = deque(submit(path) for path in islice(files, DECODE_AHEAD))
        chunk: list[tuple[str, DecodedFilm | CxrError]] = []
        while pending:
            chunk.append(pending.popleft().result())
            following = next(files, None)
            if following is not None:
                pending.append(submit(following))
            if len(chunk) == BATCH_SIZE or not pending:
                items = predictor.finish(chunk, after.map)
                predictor.attach_predictions(items)
                # a row's lung-evidence share resizes the heatmap to the film: not on the scoring thread
                yield from after.map(lambda item: result_row(item, predictor), items)
                chunk = []


def result_row(item: ScreenedImage, predictor: Predictor) -> dict:
    """The flat record exported by the CLI and the dashboard's CSV."""
    prediction = item.prediction
    in_lungs = item.evidence_in_lungs  # once: it resizes the heatmap to the film (a third of a ms)
    return {
        "file": item.name,
        "ok": item.ok,
        # unrounded: a site threshold is one film's own score, so a rounded probability could sit below a
        # threshold it reached (the decision compares the unrounded values; the row must show why)
        "probability": None if prediction is None else float(prediction.probability),
        "label": None if prediction is None else prediction.label,
        "threshold": predictor.threshold,
        "model_version": predictor.version,
        "site": predictor.site,
        "evidence_in_lungs": None if in_lungs is None else round(in_lungs, 3),
        "error": item.error,
        "warning": "; ".join(item.warnings) or None,
    }


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """Neutralise text a spreadsheet would run as a formula (file names are user-controlled)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
