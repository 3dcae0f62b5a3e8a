"""The Storage SCP: accepts films over DICOM, keeps them durably, answers only then.

Every storage SOP class is accepted (uncompressed transfer syntaxes; the PACS transcodes when it holds
a compressed film), so a film the node must not screen is not an association failure at the sender but
a counted, logged refusal here. Only the allowed calling AE titles may connect (empty list: any).
"""

from __future__ import annotations

import logging

from cxr_core.node.admission import refusal_reason
from cxr_core.node.queue import FilmQueue

log = logging.getLogger("cxr_core.node")

STATUS_STORED = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # "Refused: Out of Resources": the sender keeps the film and may retry
STATUS_CANNOT_UNDERSTAND = 0xC000


def store_handler(queue: FilmQueue, on_arrival=None):
    """The C-STORE handler: header check, then film + queue row on disk, then the success status."""

    def handle(event) -> int:
        try:
            ds = event.dataset
            sop_uid = str(ds.SOPInstanceUID)
            sop_class = str(ds.SOPClassUID)
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
        except Exception:  # a dataset pynetdicom cannot decode: the sender gets a failure status
            log.warning("a received dataset could not be read; refused")
            return STATUS_CANNOT_UNDERSTAND
        calling = str(event.assoc.requestor.ae_title).strip()
        if queue.known(sop_uid):
            log.info("a film already received was sent again; not screened twice")
            return STATUS_STORED
        reason = refusal_reason(ds)
        if reason is None and not study_uid:
            reason = "no Study Instance UID, so no result could be filed with the study"
        try:
            if reason:
                if queue.skip_on_arrival(
                    sop_uid, reason, sop_class=sop_class, study_uid=study_uid, calling_ae=calling
                ):
                    count = queue.skip_reasons().get(reason, 0)
                    log.warning(
                        "film from %s not screened: %s (%d so far for this reason)", calling, reason, count
                    )
                return STATUS_STORED
            queue.receive(
                sop_uid, event.encoded_dataset(), sop_class=sop_class, study_uid=study_uid, calling_ae=calling
            )
        except OSError as error:  # a full disk: refuse, so the PACS keeps the film and can send it again
            log.error("cannot keep a received film: %s", error.strerror or error)
            return STATUS_OUT_OF_RESOURCES
        if on_arrival is not None:
            on_arrival()
        return STATUS_STORED

    return handle


def make_ae(ae_title: str, allowed_calling: list[str]):
    from pynetdicom import AE, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_calling_aet = [title for title in allowed_calling if title]
    ae.maximum_associations = 16
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def start(
    queue: FilmQueue, *, ae_title: str, bind: str, port: int, allowed_calling: list[str], on_arrival=None
):
    """Start listening (in background threads); returns the server, ``.shutdown()`` stops it."""
    from pynetdicom import evt

    ae = make_ae(ae_title, allowed_calling)
    return ae.start_server(
        (bind, port), block=False, evt_handlers=[(evt.EVT_C_STORE, store_handler(queue, on_arrival))]
    )
