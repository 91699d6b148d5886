"""What a hostile peer tried (the server-must-not-die issue), replayed as tests: no peer, keyed or not, can abort,
wedge or starve the server, and every reply is delivered or counted.

The attacks that once aborted libzmq run against a ``posecast serve`` in a child process (an abort would take
pytest down with it); the rest use an in-process server. Results are counted (replies, frames, closed
connections, the server process still running), never timed: fps and latency under flood are ``make fuzz``'s
(posecast/stress.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

from posecast.attack import LIBZMQ_FIRST_ID, reset_round, zmtp_greeting, zmtp_ready
from realtime import protocol as P
from realtime.protocol import ErrorCode

from test_security import KeyClient, curve_of, keys  # noqa: F401 - keys is a fixture
from test_server import REPO, Client, motion, served_endpoint, wait_until

SERVE = ("import sys, json; from realtime.server import serve; "
         "serve(sys.argv[1], sys.argv[2], 'torch', stats_interval_s=0, **json.loads(sys.argv[3]))")


@contextlib.contextmanager
def server_child(model_dir, bind: str = "tcp://127.0.0.1:0", *, killed: bool = False, **limits):
    """``serve`` in a child process; yields (endpoint, process, its stderr lines so far). On leaving, the process
    must still be running (it is then stopped with SIGTERM and must exit cleanly) unless ``killed`` (the test
    kills it)."""
    limits.setdefault("idle_timeout_s", 30.0)            # the test clients do not heartbeat
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(model_dir), bind, json.dumps(limits)], cwd=REPO,
                            env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        endpoint = served_endpoint(proc, lines)
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        yield endpoint, proc, lines
        if not killed:
            assert proc.poll() is None, "the server died:\n" + "".join(lines[-20:])
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    text = "".join(lines)
    assert "Assertion failed" not in text and (code == 0 or killed), text[-3000:]


def raw_connect(endpoint: str) -> socket.socket:
    host, port = endpoint.rsplit("/", 1)[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


class Streamers:
    """``n`` clients streaming lock-step in threads until ``stop()``; every reply must be the frame for its seq."""

    def __init__(self, ctx, endpoint: str, n: int):
        self.frames = [0] * n
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(ctx, endpoint, i), daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, ctx, endpoint: str, i: int) -> None:
        c = Client(ctx, endpoint, f"streamer-{i}")
        try:
            c.hello()
            lms = motion(i, 20)
            seq = 0
            while not self._stop.is_set() or seq < 5:
                m = c.frame(seq, lms[seq % 20])
                self.frames[i] += m.seq == seq
                seq += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.wrong.append(f"streamer {i}: {type(e).__name__}: {e}")
        finally:
            c.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


# -- the two aborts --------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_preclaimed_routing_ids_cannot_abort_the_server(model_dir):
    """libzmq's ROUTER invents ids 00 + rand() + n (the first is 006b8b4567 in every process) and aborted when a
    peer had claimed the next one. Here the server chooses every id: claims are ignored, even two equal ones."""
    first = int.from_bytes(LIBZMQ_FIRST_ID[1:], "big")
    with server_child(model_dir) as (endpoint, proc, _), zmq.Context() as ctx:
        claimers = []
        for k in range(48):                              # the ids libzmq would make next, each claimed twice
            for _ in range(2):
                c = KeyClient(ctx, endpoint, routing_id=b"\0" + ((first + k) % 2**32).to_bytes(4, "big"))
                c.send(P.Ping(ts=float(k)))
                claimers.append((k, c))
        raw = raw_connect(endpoint)                      # the same claim, in a READY written by hand
        raw.sendall(zmtp_greeting() + zmtp_ready(identity=LIBZMQ_FIRST_ID))
        for k, c in claimers:                            # every claimer is answered on its own connection
            assert c.recv(10) == P.Pong(ts=float(k))
        anonymous = [Client(ctx, endpoint, f"anon-{i}") for i in range(6)]   # peers without an id, after them
        for i, c in enumerate(anonymous):
            c.hello()
            assert c.frame(0, motion(i, 1)[0]).seq == 0
        for _, c in claimers:
            c.close()
        for c in anonymous:
            c.close()
        raw.close()
        assert proc.poll() is None


@pytest.fixture(scope="module")
def busy_model_dir(tmp_path_factory, tiny_checkpoint):
    """A model whose frames take the engine a while (lite at 128 px): a server busy enough to fall behind."""
    return tiny_checkpoint(tmp_path_factory.mktemp("busy"), "lite", size=128)


@pytest.mark.timeout(180)
def test_resets_with_an_unread_backlog_under_load(busy_model_dir):
    """A connection sends 3,000 one-byte messages and resets while a dozen sessions stream: libzmq aborted when a
    reset reached a connection it had stopped reading. Here nothing stops reading a link, and the server goes on."""
    with server_child(busy_model_dir) as (endpoint, proc, _), zmq.Context() as ctx:
        streamers = Streamers(ctx, endpoint, 12)
        for round_ in range(6):
            reset_round(ctx, endpoint, hello=bool(round_ % 2), settle_s=0.3)
        streamers.stop()
        assert not streamers.wrong, streamers.wrong
        assert all(n >= 5 for n in streamers.frames), streamers.frames
        late = Client(ctx, endpoint, "late")
        assert isinstance(late.hello(), P.Welcome)
        late.close()
        assert proc.poll() is None


# -- getting in ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_idle_connections_held_and_reopened_never_lock_a_newcomer_out(model_dir):
    with server_child(model_dir, max_connections=64, greeting_timeout_s=3.0) as (endpoint, proc, _), \
            zmq.Context() as ctx:
        held = [raw_connect(endpoint) for _ in range(200)]   # never say a word
        stop = threading.Event()
        churned = [0]

        def churn():                                     # and more of them, re-opened in a loop
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    raw_connect(endpoint).close()
                    churned[0] += 1

        t = threading.Thread(target=churn, daemon=True)
        t.start()
        try:
            time.sleep(1.5)                              # (until the silent ones reach the server: not an assertion)
            newcomers = [Client(ctx, endpoint, f"newcomer-{i}") for i in range(3)]
            for i, c in enumerate(newcomers):
                assert isinstance(c.hello(), P.Welcome)
                assert c.frame(0, motion(i, 1)[0]).seq == 0
        finally:
            stop.set()
            t.join(10)
        for s in held:                                   # every idle one is closed: evicted, or timed out
            s.settimeout(15)
            assert s.recv(1) == b""
            s.close()
        assert churned[0] > 0 and newcomers[0].frame(1, motion(0, 2)[1]).seq == 1
        assert proc.poll() is None


@pytest.mark.timeout(120)
def test_slowloris_connections_are_closed_and_never_lock_a_newcomer_out(model_dir):
    with server_child(model_dir, greeting_timeout_s=1.0, handshake_timeout_s=2.0) as (endpoint, proc, _), \
            zmq.Context() as ctx:
        slow = []
        for i in range(150):
            s = raw_connect(endpoint)
            if i % 3 == 0:
                s.sendall(zmtp_greeting()[:5])           # a partial greeting
            elif i % 3 == 1:
                s.sendall(zmtp_greeting() + zmtp_ready() + b"\x02")   # a frame header cut short
            else:
                s.sendall(zmtp_greeting() + zmtp_ready() + b"\x00\xc8" + b"x" * 10)   # a message cut short
            slow.append(s)
        newcomer = Client(ctx, endpoint, "newcomer")
        assert isinstance(newcomer.hello(), P.Welcome)
        for s in slow:                                   # every one of them is closed by the server
            s.settimeout(10)
            data = b"x"
            with contextlib.suppress(ConnectionResetError):
                while data:
                    data = s.recv(4096)
            s.close()
        assert newcomer.frame(0, motion(0, 1)[0]).seq == 0
        assert proc.poll() is None


# -- every reply delivered or counted ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_burst_within_the_rate_is_answered_in_full(make_server, ctx):
    srv = make_server(stats_interval_s=0)
    c = Client(ctx, srv.endpoint, "burst")
    w = c.hello()
    assert (w.rate_burst, w.reply_queue) == (32, 64) and w.reply_queue > w.rate_burst
    for i in range(w.rate_burst - 1):                    # at once, no reply read in between
        c.send_raw(msgpack.packb({"t": "landmarks", "seq": i}))
    got = [c.recv(10) for _ in range(w.rate_burst - 1)]
    assert [(m.code, m.seq) for m in got] == [(ErrorCode.BAD_MESSAGE, i) for i in range(w.rate_burst - 1)]
    for i in range(100):                                 # beyond the burst: read at the rate, every one answered
        c.send(P.Ping(ts=float(i)))
    assert [c.recv(10).ts for _ in range(100)] == [float(i) for i in range(100)]
    assert srv.stats()["send_failures"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("secure", [False, True])
def test_a_message_of_the_announced_size_is_accepted_under_curve(make_server, ctx, keys, secure):  # noqa: F811
    srv = make_server(stats_interval_s=0, curve=curve_of(keys) if secure else None)
    c = KeyClient(ctx, srv.endpoint, keys, "alice" if secure else None, "big")
    limit = c.hello().max_message_bytes
    base = len(P.encode(P.Hello(client="")))

    def hello_of(size: int) -> bytes:                    # a hello padded to exactly ``size`` bytes
        name = "n" * (size - base - 2)                   # (a str16 header: 2 bytes more than the empty one)
        raw = P.encode(P.Hello(client=name))
        assert len(raw) == size
        return raw

    c.send_raw(hello_of(limit))                          # a hello on a live session restarts it: a welcome
    assert isinstance(c.recv(10), P.Welcome)
    assert c.frame(0, motion(0, 1)[0]).seq == 0
    closed = srv.stats()["connections_closed"]
    c.send_raw(hello_of(limit + 1))                      # one byte more: ZeroMQ drops the connection
    assert wait_until(lambda: srv.session_count == 0, 5)   # (its session freed with it)
    assert srv.stats()["connections_closed"] == closed + 1
    d = KeyClient(ctx, srv.endpoint, keys, "alice" if secure else None, "next")
    assert isinstance(d.hello(), P.Welcome)
    assert srv.stats()["internal_errors"] == 0


@pytest.mark.timeout(60)
def test_a_big_message_before_hello_closes_the_connection(make_server, ctx):
    srv = make_server(stats_interval_s=0)
    c = Client(ctx, srv.endpoint, "big")
    c.send_raw(b"\x00" * (srv.limits.sessionless_max_message_bytes + 1))
    assert wait_until(lambda: srv.stats()["oversized_sessionless"] == 1, 5)   # closed, not answered
    assert srv.stats()["messages"] == 0
    d = Client(ctx, srv.endpoint, "after")               # after hello the same message is just a bad one
    d.hello()
    d.send_raw(b"\x00" * (srv.limits.sessionless_max_message_bytes + 1))
    assert d.recv().code == ErrorCode.BAD_MESSAGE


@pytest.mark.timeout(60)
def test_a_big_message_in_an_earlier_session_does_not_count_against_the_next_hello(make_server, ctx):
    srv = make_server(stats_interval_s=0)
    c = Client(ctx, srv.endpoint, "big")
    c.hello()
    c.send_raw(b"\x00" * (4 * srv.limits.sessionless_max_message_bytes))   # fine with a session: a bad message
    assert c.recv().code == ErrorCode.BAD_MESSAGE
    c.send(P.Bye())                                      # no session now; then hello again on the same connection
    assert wait_until(lambda: srv.session_count == 0, 5)
    time.sleep(0.2)                                      # (the front hears of it: a wait, not an assertion)
    c.send(P.Ping(ts=3.0))
    assert c.recv() == P.Pong(ts=3.0)
    assert isinstance(c.hello(), P.Welcome) and c.frame(0, motion(0, 1)[0]).seq == 0
    assert srv.stats()["oversized_sessionless"] == 0


@pytest.mark.timeout(60)
def test_before_hello_a_connection_may_send_only_a_few_frames(make_server, ctx):
    srv = make_server(stats_interval_s=0, sessionless_frames=10, handshake_timeout_s=1.0)
    c = Client(ctx, srv.endpoint, "chatty")
    for i in range(40):
        c.send(P.Ping(ts=float(i)))
    pongs = []
    while c.sock.poll(1500):
        pongs.append(c.recv().ts)
    assert pongs == [float(i) for i in range(9)]         # 10 frames: ZMTP's READY and 9 pings; then closed
    assert wait_until(lambda: srv.stats()["handshake_timeouts"] == 1, 5)


# -- a server restart, as the capture client sees it ----------------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("client_timeout_s", [10.0, 1.0], ids=["back-before-the-timeout", "back-after-it"])
def test_the_capture_clients_books_balance_across_a_server_restart(model_dir, client_timeout_s):
    """The server is killed (SIGKILL: whatever it held is gone) and started again on the same address while a
    capture client streams. Back before the client's timeout, the client finds its session gone (no_session) and
    says hello again on the same connection; back after it, the client reconnects. Either way: one reconnect, and
    sent = received + dropped + errors + lost."""
    from clients.capture import CaptureClient
    from clients.sources import open_source

    logs: list[str] = []
    result: dict = {}
    with server_child(model_dir, killed=True) as (endpoint, first, _):
        def run():
            c = CaptureClient(endpoint, timeout_s=client_timeout_s, retries=10, normalize="off", log=logs.append)
            try:
                c.connect()
                result["stats"] = c.run(open_source("synthetic:3", "dance", realtime=True, default_fps=30.0),
                                        headless=True, max_frames=300)
            except Exception as e:  # noqa: BLE001 - reported below
                result["error"] = e
            finally:
                c.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        time.sleep(2.0)                                  # streaming (not a timing claim: counted below)
        first.kill()
        first.wait()
    with server_child(model_dir, endpoint) as (_, second, lines):   # the same address, a fresh process
        t.join(120)
        assert "error" not in result, (result.get("error"), logs)
        st = result["stats"]
        assert st.frames_sent == 300 and st.frames_received > 60
        assert st.frames_sent == st.frames_received + st.dropped + st.errors + st.lost, st
        assert st.reconnects == 1, (st, logs)            # one outage, one reconnect
        assert any("connected" in line for line in lines)
