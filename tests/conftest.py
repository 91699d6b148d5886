"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

# One intra-op thread for torch and OpenMP in the tests and the processes they start: the models are tiny, and on
# a 2-core machine that is busy with anything else two threads collapse (measured: a 20-iteration tiny training
# took 223 s with 2 threads against 6 s with 1 while another job held a core).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# Measured batch sizes (posecast serve) go to a cache folder of this test session, not the user's ~/.cache.
if "POSECAST_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["POSECAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="posecast-test-cache-")
    atexit.register(shutil.rmtree, os.environ["POSECAST_CACHE_DIR"], ignore_errors=True)   # (not left in /tmp)

import torch  # noqa: E402 - after the thread settings

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pytest
import zmq

from realtime.engine import open_engine
from realtime.server import Server
from tiny import SERVER_SIZE, random_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """The ``random_checkpoint`` factory, for module fixtures: ``tiny_checkpoint(root, "lite", size=32)``."""
    return random_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny dance model (SERVER_SIZE px) for the server, protocol and security tests."""
    return random_checkpoint(tmp_path_factory.mktemp("model"), "dance", size=SERVER_SIZE, ngf=8, ndf=8,
                             meta={"subject_stats": None, "dataset_fps": 25.0})


@pytest.fixture(scope="module")
def engine(model_dir):
    return open_engine(model_dir, "torch")


@pytest.fixture
def ctx():
    """A ZeroMQ context, destroyed with linger 0 at the end of the test."""
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


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
