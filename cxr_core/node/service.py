"""One node process: the SCP, the worker, logging, and a clean stop on SIGTERM/SIGINT.

Logs go to stderr and to ``<state_dir>/node.log``; they say what happened to film #N (its queue number)
and why a film was refused, never whose film it was.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from cxr_core.node import scp
from cxr_core.node.queue import FilmQueue
from cxr_core.node.worker import Destination, Serving, Worker
from cxr_core.settings import resolve_data_path

log = logging.getLogger("cxr_core.node")


def state_dir(settings: dict) -> Path:
    """The node's folder: ``CXR_NODE_DIR`` if set (tests, Docker), else ``node.state_dir`` (project-relative)."""
    return Path(os.environ.get("CXR_NODE_DIR") or resolve_data_path(settings["state_dir"]))


def _logging(folder: Path) -> None:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(), logging.FileHandler(folder / "node.log", encoding="utf-8")):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO/DEBUG lines dump headers


def run(settings: dict, *, model: str | None = None, site: str | None = None) -> int:
    """Serve until SIGTERM/SIGINT. ``settings`` is the ``node`` section (params.yaml + flags)."""
    folder = state_dir(settings)
    queue = FilmQueue(folder)
    _logging(folder)
    serving = Serving(model, site)
    predictor = serving.get()  # load the model before listening: a broken model fails here, loudly
    worker = Worker(
        queue,
        serving,
        Destination(
            settings["destination_ae"], settings["destination_host"], int(settings["destination_port"]),
            calling_ae=settings["ae_title"],
        ),
        batch_size=int(settings["batch_size"]),
        uid_root=settings["uid_root"],
        sc_max_side=int(settings["sc_max_side"]),
        retry_first=float(settings["retry_first_seconds"]),
        retry_max=float(settings["retry_max_seconds"]),
        give_up_after=60.0 * float(settings["give_up_minutes"]),
    )  # fmt: skip
    worker.warm_up()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = scp.start(
        queue,
        ae_title=settings["ae_title"],
        bind=settings["bind"],
        port=int(settings["port"]),
        allowed_calling=list(settings["allowed_calling_aes"] or []),
        on_arrival=worker.arrived.set,
    )
    worker.start()
    counts = queue.counts()
    log.info(
        "node %s listening on %s:%s (model %s); results to %s at %s:%s; queue: %s",
        settings["ae_title"], settings["bind"], settings["port"], predictor.version, settings["destination_ae"],
        settings["destination_host"], settings["destination_port"], counts,
    )  # fmt: skip
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping")
        server.shutdown()
        worker.stop()
    return 0
