"""bench/ports.py: the ports the suite's servers are started on."""

import socket

from bench.ports import LOWEST, _ephemeral_floor, free_port


def test_a_free_port_lies_below_the_range_outgoing_connections_take_their_ports_from():
    """Outgoing connections get their source ports from the kernel's ephemeral range, so a port chosen
    there can be taken before the server binds it; each port given lies below it and a server can listen
    on it."""
    floor = _ephemeral_floor()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # drawn at random: parallel test workers do not all try the same port
    for port in ports:
        assert LOWEST <= port < floor
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_port_something_listens_on_is_never_given(monkeypatch):
    with socket.socket() as busy:
        taken = free_port()
        busy.bind(("127.0.0.1", taken))
        busy.listen()
        # a range of 20 ports, the first of them taken: every draw must give one of the other 19
        monkeypatch.setattr("bench.ports.LOWEST", taken)
        monkeypatch.setattr("bench.ports._ephemeral_floor", lambda: taken + 20)
        given = {free_port() for _ in range(30)}
        assert given and taken not in given and given <= set(range(taken + 1, taken + 20))
