"""The servers Tower starts listen on 127.0.0.1 only: a simulator or a local Prefect
server reachable from the network would let anyone queue prompts or read runs."""

from __future__ import annotations

import socket
from pathlib import Path

from tower.cli.local_server import (
    ensure_prefect_server,
    ensure_simulator,
    free_port,
    stop_started_servers,
)
from tower.simulator import SimulatorConfig, start_simulator

LISTEN = "0A"


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (IPv4 and IPv6), from
    /proc/net/tcp*: what the kernel says, whatever the server thinks it did."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == LISTEN and int(port_hex, 16) == port:
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found



def test_the_simulator_listens_on_loopback_only(tmp_path):
    with start_simulator(SimulatorConfig(output_dir=tmp_path / "out")) as sim:
        assert listening_addresses(sim.port) == {"127.0.0.1"}


def test_the_started_simulator_and_prefect_server_listen_on_loopback_only(tmp_path):
    sim_port, prefect_port = free_port(), free_port()
    try:
        ensure_simulator(tmp_path, port=sim_port)
        ensure_prefect_server(tmp_path, port=prefect_port, api_url="")
        assert listening_addresses(sim_port) == {"127.0.0.1"}
        assert listening_addresses(prefect_port) == {"127.0.0.1"}
    finally:
        stop_started_servers(tmp_path)
