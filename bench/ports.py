"""The one way a test or a benchmark picks a local port for a server it starts (the dashboard, Orthanc,
the screening node, Airflow's API server)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000  # above the fixed ports of the services on this machine and the project's defaults


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, below the kernel's ephemeral range.

    A port from ``bind(0)`` comes from the range the kernel also gives outgoing connections their source
    ports from: between choosing it and the server binding it, any client connection of a suite running
    beside it (PostgreSQL, Redis, Airflow, a browser) could take it, and a fresh clone's run saw the
    screening node exit with "Address already in use". Below that range only another explicit bind can
    take it; a random port there, tried first, keeps parallel test workers apart.
    """
    floor = _ephemeral_floor()
    candidates = range(LOWEST, floor)
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {LOWEST} and {floor}")
