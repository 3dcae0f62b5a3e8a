"""Screening and delivery: the queue's ``received`` films become an SR and a Secondary Capture, and both
go back to the PACS.

Screening uses the served model exactly as the CLI does (the Predictor's decode -> lung network in one
call per batch -> one scoring call), with the active site profile when it belongs to that model. The
model and the profile are looked up again every few seconds, so a promotion or a new site profile is
used from the next batch on, as on the dashboard.

Delivery is a C-STORE of both objects to the destination AE. A refused association or a failure
status counts as one failed attempt: the film waits (doubling from ``retry_first_seconds`` up to
``retry_max_seconds``) and, still undelivered after ``give_up_minutes``, is shown as failed to deliver.
The result UIDs are derived from the source film's UID and the model version, so an attempt that
reached the PACS but crashed before it was recorded re-sends the same instances, never a duplicate.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.errors import CxrError
from cxr_core.fsutil import read_json_or_empty
from cxr_core.imaging import dicom_out
from cxr_core.node.queue import FAILED, FilmQueue

log = logging.getLogger("cxr_core.node")

SERVING_RECHECK_SECONDS = 10.0
SUCCESS_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}  # success, or stored with a coercion warning


@dataclass
class Destination:
    ae_title: str
    host: str
    port: int
    calling_ae: str = "CXRTB"


class Serving:
    """The Predictor of the model in use (current registry version, or a pinned one) and its site profile."""

    def __init__(self, model: str | None = None, site: str | None = None):
        self.pinned_model, self.pinned_site = model, site
        self.predictor = None
        self._checked = 0.0
        self._key: tuple | None = None

    def get(self):
        if self.predictor is not None and time.monotonic() - self._checked < SERVING_RECHECK_SECONDS:
            return self.predictor
        from cxr_core.modelling.predictor import Predictor
        from cxr_core.registry.sites import SiteProfiles
        from cxr_core.registry.store import Registry

        registry = Registry()
        model_dir, warning = registry.resolve_with_warning(self.pinned_model)
        sites = SiteProfiles(registry.root)
        try:
            profile = sites.load(self.pinned_site) if self.pinned_site else sites.active()
        except CxrError as error:
            log.warning("site profile not used: %s", error)
            profile = None
        model_file = Path(model_dir) / "model.keras"
        # A twin converted later (`models convert`) is served without a restart. Keyed on the metadata,
        # which the registry writes after the twin's file, so the key never names a half-made twin.
        meta = read_json_or_empty(Path(model_dir) / "metadata.json")
        key = (
            str(model_dir),
            model_file.stat().st_mtime_ns,
            (meta.get("tflite_sha256"), meta.get("tflite_model_sha256")),
            json.dumps(profile, sort_keys=True, default=str),
        )
        if key != self._key:
            predictor = (
                Predictor(model_dir) if self.predictor is None or key[:3] != self._key[:3] else self.predictor
            )
            try:
                predictor.use_site(profile)
            except CxrError as error:  # the active profile was set for another model: use the model's own
                if self.pinned_site:
                    raise
                log.warning("%s", error)
                predictor.use_site(None)
            if warning:
                log.warning("%s", warning)
            log.info(
                "screening with model %s (%s), threshold %.4f%s",
                predictor.version,
                predictor.runtime,
                predictor.threshold,
                f", site profile {predictor.site}" if predictor.site else "",
            )
            self.predictor, self._key = predictor, key
        self._checked = time.monotonic()
        return self.predictor


class Worker:
    """Two threads over one queue: the screener and the deliverer."""

    def __init__(
        self,
        queue: FilmQueue,
        serving: Serving,
        destination: Destination,
        *,
        batch_size: int = 16,
        uid_root: str = "",
        sc_max_side: int = 1024,
        retry_first: float = 2.0,
        retry_max: float = 60.0,
        give_up_after: float = 3600.0,
        threads: int = 2,
        associations: int = 4,
    ):
        self.queue, self.serving, self.destination = queue, serving, destination
        self.batch_size, self.uid_root, self.sc_max_side = batch_size, uid_root, sc_max_side
        self.retry_first, self.retry_max, self.give_up_after = retry_first, retry_max, give_up_after
        self.arrived = threading.Event()
        self.screened = threading.Event()
        self.stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="node-screen")
        self.associations = max(1, associations)
        self._senders = ThreadPoolExecutor(max_workers=self.associations, thread_name_prefix="node-send")
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------------------------- threads
    def start(self) -> None:
        for name, loop in (("node-screener", self._screen_loop), ("node-deliverer", self._deliver_loop)):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.arrived.set()
        self.screened.set()
        for thread in self._threads:
            thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._senders.shutdown(wait=False, cancel_futures=True)

    def _screen_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                worked = self.screen_waiting()
            except Exception:  # keep the node up: log and retry the batch after a pause
                log.exception("screening failed; retrying in 5 s")
                worked = False
                self.stopping.wait(5.0)
            if not worked:
                self.arrived.wait(1.0)
                self.arrived.clear()

    def _deliver_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                worked = self.deliver_due()
            except Exception:
                log.exception("delivery round failed; retrying in 5 s")
                worked = False
                self.stopping.wait(5.0)
            if not worked:
                self.screened.wait(0.5)
                self.screened.clear()

    # ---------------------------------------------------------------------------------- screening
    def warm_up(self) -> None:
        """Screen one bundled sample film before the first real one: the first call of each network
        builds its graph (seconds), which would otherwise be the first patient's wait."""
        from cxr_core.modelling.predictor import iter_image_files
        from cxr_core.settings import PROJECT_ROOT

        predictor = self.serving.get()
        sample_dir = PROJECT_ROOT / "data" / "sample"
        sample = next(iter_image_files([sample_dir]), None) if sample_dir.is_dir() else None
        if sample is not None:
            predictor.screen([("warm-up", sample)])
        else:
            predictor.predict(np.zeros((1, predictor.side, predictor.side, 1), np.uint8))

    def screen_waiting(self) -> bool:
        """Screen one batch of waiting films; False when there was none."""
        rows = self.queue.waiting(self.batch_size)
        if not rows:
            return False
        predictor = self.serving.get()
        sources = list(self._pool.map(self._read, rows))
        decoded = list(self._pool.map(lambda s: (s[0], predictor.decode(s[1]) if s[1] else s[2]), sources))
        items = predictor.finish(decoded, self._pool.map)
        predictor.attach_predictions(items)
        for row, item, (_, data, _error) in zip(rows, items, sources, strict=True):
            if self.stopping.is_set():
                break
            if not item.ok:
                self.queue.skip(row["id"], item.error or "unreadable")
                log.warning(
                    "film #%d not screened: %s (%d skipped for this reason)",
                    row["id"], item.error, self.queue.skip_reasons().get(item.error or "unreadable", 0),
                )  # fmt: skip
                continue
            result, sr, sc = self._results(item, data, predictor)
            self.queue.screened(row["id"], result, sr, sc)
            log.info(
                "film #%d screened: %s, probability %.4f", row["id"], result["label"], result["probability"]
            )
        self.screened.set()
        return True

    def _read(self, row) -> tuple[str, bytes | None, Exception | None]:
        try:
            return (str(row["id"]), self.queue.read_film(row), None)
        except OSError as error:
            return (
                str(row["id"]),
                None,
                CxrError(f"the received film could not be read back: {error.strerror}"),
            )

    def _results(self, item, data: bytes, predictor) -> tuple[dict, bytes, bytes]:
        """The SR and the burnt-in SC of one screened film (both carry the study's identity)."""
        import pydicom

        from cxr_core.modelling.gradcam import overlay

        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        prediction = item.prediction
        probability = round(float(prediction.probability), 6)  # a DICOM decimal string holds 16 characters
        share = item.evidence_in_lungs
        result = dicom_out.ScreeningResult(
            probability=probability,
            threshold=float(predictor.threshold),
            tb_suspected=prediction.label == "Tuberculosis",
            decision=dicom_out.DECISION_TB
            if prediction.label == "Tuberculosis"
            else dicom_out.DECISION_NORMAL,
            model_version=predictor.version,
            site=predictor.site,
            evidence_in_lungs=share,
            warnings=tuple(item.warnings),
        )
        sr = dicom_out.structured_report(header, result, uid_root=self.uid_root)
        identity = {key: header.get(key) for key in dicom_out.IDENTITY_KEYS}
        orientation = header.get("PatientOrientation")
        identity["PatientOrientation"] = "\\".join(orientation) if orientation else ""
        picture = overlay(item.image.pixels, prediction.heatmap, item.box, 0.4, max_side=self.sc_max_side)
        sc = dicom_out.secondary_capture(
            picture,
            identity,
            dicom_out.result_sentence(result),
            model_version=predictor.version,
            lines=dicom_out.burnt_lines(result),
            source={"SOPClassUID": str(header.SOPClassUID), "SOPInstanceUID": str(header.SOPInstanceUID)},
            uid_root=self.uid_root,
        )
        row = {
            "probability": probability,
            "label": prediction.label,
            "threshold": float(predictor.threshold),
            "model_version": predictor.version,
            "site": predictor.site,
            "evidence_in_lungs": None if share is None else round(float(share), 3),
            "warnings": "; ".join(item.warnings) or None,
            "sr_uid": dicom_out.uid_of(sr),
            "sc_uid": dicom_out.uid_of(sc),
        }
        return row, sr, sc

    # ---------------------------------------------------------------------------------- delivery
    def deliver_due(self) -> bool:
        """Send every due result, over ``associations`` associations at once; False when nothing was due.

        Each C-STORE waits for the PACS to store and answer (~0.1 s here, whatever the object's size),
        so a few associations side by side keep up with the screener where one would not.
        """
        rows = self.queue.due(32)
        if not rows:
            return False
        chunks = [rows[i :: self.associations] for i in range(min(self.associations, len(rows)))]
        list(self._senders.map(self._deliver, chunks))
        return True

    def _deliver(self, rows) -> None:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

        ae = AE(ae_title=self.destination.calling_ae)
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title)
        if assoc.is_established:
            # a C-STORE is two small writes (command, then data set): without TCP_NODELAY the second
            # waits for the peer's delayed ACK
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self._failed(rows, f"the PACS ({self.destination.ae_title} at {self.destination.host}:"
                               f"{self.destination.port}) did not accept the association")  # fmt: skip
            return
        try:
            for row in rows:
                if self.stopping.is_set():
                    break
                problem = None
                try:
                    objects = [
                        dcmread(io.BytesIO(self.queue.read_result(n)))
                        for n in (row["sr_path"], row["sc_path"])
                    ]
                except (OSError, ValueError, InvalidDicomError):  # lost or cut by a crash: make them again
                    log.warning("film #%d: its result files are damaged; screening it again", row["id"])
                    self.queue.rescreen(row["id"])
                    self.arrived.set()
                    continue
                for dataset in objects:
                    status = assoc.send_c_store(dataset)
                    code = getattr(status, "Status", None)
                    if code not in SUCCESS_STATUSES:
                        problem = (
                            "no answer from the PACS"
                            if code is None
                            else f"the PACS refused it (status 0x{code:04X})"
                        )
                        break
                if problem:
                    self._failed([row], problem)
                    if not assoc.is_established:
                        break
                else:
                    self.queue.delivered(row["id"])
                    log.info("film #%d: SR and SC delivered to %s", row["id"], self.destination.ae_title)
        finally:
            if assoc.is_established:
                assoc.release()

    def _failed(self, rows, problem: str) -> None:
        for row in rows:
            state = self.queue.delivery_failed(
                row["id"],
                problem,
                first=self.retry_first,
                longest=self.retry_max,
                give_up_after=self.give_up_after,
            )
            if state == FAILED:
                log.error("film #%d: failed to deliver, giving up for now: %s", row["id"], problem)
            else:
                log.warning("film #%d: delivery will be retried: %s", row["id"], problem)
