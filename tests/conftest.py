"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from realtime.server import Server


@pytest.fixture
def make_server(engine):
    """Start servers on OS-chosen loopback ports over the module's ``engine`` fixture (or ``eng``); all closed
    at the end of the test."""
    servers = []

    def make(eng=None, **kw):
        kw.setdefault("stats_interval_s", 0.5)
        kw.setdefault("idle_timeout_s", 30.0)   # test clients do not heartbeat; a loaded machine stalls them
        srv = Server(eng or engine, "tcp://127.0.0.1:0", **kw)
        servers.append(srv)
        srv.start()
        return srv

    yield make
    for srv in servers:
        srv.close()
