"""``server_process``: ``posecast serve`` in a child process, for the tools that drive a live server.

The demo, the stream benchmark and the soak test run the server in its own interpreter (no GIL shared with the
capture clients in the calling process), as in a real deployment. It re-runs the command line, so it lives on the
top floor with it, not in realtime/.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import zmq


@contextlib.contextmanager
def server_process(model, backend: str = "onnxruntime", *, threads: int | None = None, host: str = "127.0.0.1",
                   extra_args: tuple[str, ...] = (), info: dict | None = None):
    """Run ``posecast serve MODEL`` in a child process on a free loopback port; yields its address.

    The server gets its own interpreter (no GIL shared with the caller's capture client), as in a real
    deployment. It is stopped with SIGTERM (clean shutdown) when the block ends; if it died early, its stderr is
    raised as a RuntimeError. ``info``, when given, receives the child's ``pid`` at start and its ``stderr``
    (the server log) at the end.
    """
    with zmq.Context() as ctx:  # a free port: bind, read it, release it
        probe = ctx.socket(zmq.ROUTER)
        port = probe.bind_to_random_port(f"tcp://{host}")
        probe.close(0)
    address = f"tcp://{host}:{port}"
    cmd = [sys.executable, "-m", "posecast", "serve", str(model), "--bind", address, "--backend", backend,
           "--stats-interval", "3600", *(["--threads", str(threads)] if threads else []), *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if info is not None:
        info["pid"] = proc.pid
    try:
        yield address
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if info is not None:
            info["stderr"] = err
        if proc.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"posecast serve exited with {proc.returncode}: {err.strip()[-2000:]}")
