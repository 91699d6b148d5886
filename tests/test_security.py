"""The server on a network: CURVE + ZAP allow-list, identity from keys, no hijack, no lock-out, limits.

Loopback only, a tiny random-init generator on the torch (CPU) engine, random ports, linger 0, hard timeouts.
Nothing here asserts a wall-clock duration: results are counted in messages, frames and connections.
"""

from __future__ import annotations

import functools

import socket
import subprocess
import sys

import pytest
import zmq

from realtime import protocol as P
from realtime.protocol import ErrorCode
from realtime.security import CurveConfig, KeyFileError, is_loopback, new_keypair
from realtime.server import Server

from test_server import K, REPO, Client, motion, wait_until


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """server pair, allowed clients alice + mallory, and eve (a valid key pair that is not allowed)."""
    root = tmp_path_factory.mktemp("keys")
    new_keypair("server", root / "server")
    for name in ("alice", "mallory"):
        new_keypair(name, root / "clients")
    new_keypair("eve", root / "outsiders")
    allow = root / "allow"
    allow.mkdir()
    for name in ("alice", "mallory"):
        (allow / f"{name}.key").write_bytes((root / "clients" / f"{name}.key").read_bytes())
    return root


@pytest.fixture
def servers(make_server):
    return functools.partial(make_server, stats_interval_s=0)


def curve_of(keys) -> CurveConfig:
    return CurveConfig(keys / "server" / "server.key_secret", keys / "allow")


class KeyClient(Client):
    """A test client with an optional CURVE key pair (``who``: a file under keys/clients or keys/outsiders)."""

    def __init__(self, ctx, endpoint, keys=None, who: str | None = None, name: str = "test", routing_id=None):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if who is not None:
            folder = "outsiders" if who == "eve" else "clients"
            pub, sec = zmq.auth.load_certificate(str(keys / folder / f"{who}.key_secret"))
            self.sock.curve_secretkey, self.sock.curve_publickey = sec, pub
            self.sock.curve_serverkey = zmq.auth.load_certificate(str(keys / "server" / "server.key"))[0]
        self.sock.connect(endpoint)
        self.name = name


def silent(c: Client, timeout: float = 0.5) -> bool:
    return not c.sock.poll(int(timeout * 1000))


# -- keys and binding --------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_keys_new_cli_writes_a_pair_and_never_overwrites(tmp_path):
    cmd = [sys.executable, "-m", "posecast", "keys", "new", "alice", "--dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=50, cwd=REPO)
    assert out.returncode == 0, out.stderr
    pub, sec = zmq.auth.load_certificate(str(tmp_path / "alice.key_secret"))
    assert len(pub) == len(sec) == 40 and zmq.auth.load_certificate(str(tmp_path / "alice.key"))[0] == pub
    assert (tmp_path / "alice.key_secret").stat().st_mode & 0o077 == 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=50, cwd=REPO)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    with pytest.raises(KeyFileError, match="key name"):
        new_keypair("../x", tmp_path)


def test_is_loopback():
    assert all(map(is_loopback, ["tcp://127.0.0.1:5555", "tcp://127.0.0.2:0", "tcp://localhost:1",
                                 "tcp://[::1]:5555", "ipc:///tmp/x", "inproc://x"]))
    assert not any(map(is_loopback, ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.2:5555",
                                     "tcp://eth0:5555", "tcp://[::]:5555", "tcp://example.org:1", "garbage"]))


@pytest.mark.timeout(30)
def test_non_loopback_without_keys_refuses_to_start(engine, keys):
    with pytest.raises(ValueError, match="refusing to serve tcp://0.0.0.0:0 without authentication.*--insecure"):
        Server(engine, "tcp://0.0.0.0:0")
    with Server(engine, "tcp://0.0.0.0:0", insecure=True) as srv:
        assert not srv.secure
    with Server(engine, "tcp://0.0.0.0:0", curve=curve_of(keys)) as srv:
        assert srv.secure


@pytest.mark.timeout(60)
def test_serve_cli_refuses_a_network_bind_without_keys(model_dir):
    out = subprocess.run([sys.executable, "-m", "posecast", "serve", str(model_dir), "--bind", "tcp://0.0.0.0:0",
                          "--backend", "torch"], capture_output=True, text=True, timeout=50, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "refusing to serve tcp://0.0.0.0:0 without authentication" in out.stderr


# -- CURVE ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_unknown_or_missing_key_gets_nothing_allowed_key_streams(servers, ctx, keys):
    srv = servers(curve=curve_of(keys))
    eve = KeyClient(ctx, srv.endpoint, keys, "eve")
    nokey = KeyClient(ctx, srv.endpoint)
    for c in (eve, nokey):
        c.send(P.Hello(client="intruder"))
        c.send(P.Landmarks.from_array(0, 0.0, motion(0, 1)[0], K))
        c.send(P.Ping(ts=1.0))
    alice = KeyClient(ctx, srv.endpoint, keys, "alice", "alice")
    w = alice.hello()
    assert (w.version, w.heartbeat_s, w.idle_timeout_s, w.max_message_bytes) == (4, 1.0, 30.0, P.MAX_MESSAGE_BYTES)
    lms = motion(1, 5)
    assert [alice.frame(i, lm).seq for i, lm in enumerate(lms)] == list(range(5))
    assert silent(eve) and silent(nokey)                 # no welcome, no error, no pong: nothing at all
    assert wait_until(lambda: srv.stats()["auth_failures"] >= 1, 5)
    assert srv.session_count == 1 and srv.stats()["messages"] == 6   # alice's hello + 5 landmarks only
    assert next(iter(srv._clients.values())).key_name == "alice"


@pytest.mark.timeout(60)
def test_capture_client_over_curve(servers, keys):
    from clients.capture import capture

    srv = servers(curve=curve_of(keys))
    stats = capture(srv.endpoint, "synthetic:2", headless=True, max_frames=20, realtime=False, timeout_s=20,
                    server_key=keys / "server" / "server.key", key=keys / "clients" / "alice.key_secret",
                    log=lambda m: None)
    assert stats.frames_sent == 20 and stats.frames_received + stats.dropped == 20 and stats.errors == 0
    with pytest.raises(ConnectionError, match="--allow folder"):
        capture(srv.endpoint, "synthetic:2", headless=True, max_frames=2, timeout_s=0.5, retries=1,
                server_key=keys / "server" / "server.key", key=keys / "outsiders" / "eve.key_secret",
                log=lambda m: None)


@pytest.mark.timeout(60)
def test_seventeen_keyless_peers_cannot_lock_out_an_allowed_client(servers, ctx, keys):
    srv = servers(curve=curve_of(keys), max_clients=16, sessions_per_key=4)
    squatters = [KeyClient(ctx, srv.endpoint) for _ in range(17)]
    for s in squatters:
        s.send(P.Hello(client="squatter"))
    # An allowed but misbehaving key holds at most sessions_per_key sessions: newer ones take over older ones.
    mallory = [KeyClient(ctx, srv.endpoint, keys, "mallory", f"m{i}") for i in range(20)]
    for m in mallory:
        assert isinstance(m.hello(), P.Welcome)
    assert srv.session_count == 4 and srv.stats()["takeovers"] == 16
    alice = KeyClient(ctx, srv.endpoint, keys, "alice", "alice")
    alice.hello()
    assert alice.frame(0, motion(2, 1)[0]).seq == 0
    assert all(silent(s, 0.05) for s in squatters)
    assert srv.session_count == 5


@pytest.mark.timeout(60)
def test_same_key_reconnect_takes_over_other_keys_cannot(servers, ctx, keys):
    srv = servers(curve=curve_of(keys), sessions_per_key=1)
    lm = motion(3, 1)[0]
    first = KeyClient(ctx, srv.endpoint, keys, "alice", "first")
    first.hello()
    first.frame(0, lm)
    other = KeyClient(ctx, srv.endpoint, keys, "mallory", "mallory")
    other.hello()
    assert srv.session_count == 2                        # mallory's session did not touch alice's
    again = KeyClient(ctx, srv.endpoint, keys, "alice", "again")   # alice reconnects (the old socket lingers)
    again.hello()
    assert again.frame(0, lm).seq == 0
    first.landmarks(1, lm)
    err = first.recv()
    assert isinstance(err, P.Error) and (err.code, err.seq) == (ErrorCode.NO_SESSION, 1)
    assert srv.session_count == 2 and srv.stats()["takeovers"] == 1


# -- hijacking --------------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("secure", [False, True])
def test_no_session_reachable_by_a_guessed_routing_id(servers, ctx, keys, secure):
    srv = servers(curve=curve_of(keys) if secure else None)
    who = ("alice", "mallory") if secure else (None, None)
    lms = motion(4, 40)
    ref = KeyClient(ctx, srv.endpoint, keys, who[0], "reference")
    ref.hello()
    want = [ref.frame(i, lm).jpeg for i, lm in enumerate(lms)]
    ref.send(P.Bye())
    ref.close()

    victim = KeyClient(ctx, srv.endpoint, keys, who[0], "victim")
    victim.hello()
    assert victim.frame(0, lms[0]).jpeg == want[0]
    rid = next(c.rid for c in srv._clients.values() if c.name == "victim")   # what an attacker would guess
    n = int.from_bytes(rid[1:], "big")
    guesses = [rid] + [b"\x00" + ((n + d) % 2**32).to_bytes(4, "big") for d in range(-150, 151) if d]
    attackers = []
    for i, g in enumerate(guesses):
        a = KeyClient(ctx, srv.endpoint, keys, who[1], "attacker", routing_id=g)
        a.landmarks(1000 + i, lms[5])
        attackers.append(a)
    for i in range(1, 20):                               # the victim streams on, frame for frame unchanged
        assert victim.frame(i, lms[i]).jpeg == want[i]
    got = [m for a in attackers for m in iter(a.recv_nowait, None)]
    assert not any(isinstance(m, P.Frame) for m in got)
    assert all(isinstance(m, P.Error) and m.code == ErrorCode.NO_SESSION for m in got)
    for a in attackers:
        a.close()
    # The victim vanishes without a bye; a peer claiming its routing id gets no session, not its history.
    victim.close()
    assert wait_until(lambda: srv.session_count == 0, 5)
    late = KeyClient(ctx, srv.endpoint, keys, who[1], "late", routing_id=rid)
    late.landmarks(7, lms[20])
    err = late.recv()
    assert isinstance(err, P.Error) and (err.code, err.seq) == (ErrorCode.NO_SESSION, 7)


@pytest.mark.timeout(30)
def test_logs_never_show_a_routing_id(servers, ctx, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="posecast.server")
    srv = servers()
    c = Client(ctx, srv.endpoint, "named")
    c.hello()
    c.send_raw(b"junk")
    c.recv()
    rid = next(iter(srv._clients))
    c.send(P.Bye())
    assert wait_until(lambda: srv.session_count == 0, 5)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "named" in text and rid.hex() not in text and rid.hex()[:8] not in text


# -- limits -----------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_connection_over_its_rate_is_read_slower_nothing_is_dropped(servers, ctx):
    srv = servers(rate_hz=400, rate_burst=20)
    good = Client(ctx, srv.endpoint, "good")
    good.hello()
    flood = Client(ctx, srv.endpoint, "flood")
    flood.hello()                                        # (before hello a connection may send only a few frames)
    n = 600                                              # 30x the burst: most of it must wait for the budget
    for i in range(n):
        flood.send(P.Ping(ts=float(i)))
    lms = motion(5, 10)
    assert [good.frame(i, lm).seq for i, lm in enumerate(lms)] == list(range(10))
    pongs = [flood.recv(10) for _ in range(n)]           # every ping answered, in order: none dropped unread
    assert [p.ts for p in pongs] == [float(i) for i in range(n)]
    st = srv.stats()
    assert st["paused"] >= 1 and st["send_failures"] == 0 and st["messages"] == n + 12
    # Landmarks over the rate wait too, and latest-wins accounting still holds.
    for i in range(200):
        flood.landmarks(i, lms[i % 10])
    got = []
    while not got or got[-1].seq != 199:
        got.append(flood.recv(10))
    assert all(isinstance(m, P.Frame) for m in got) and len(got) + got[-1].dropped == 200


@pytest.mark.timeout(60)
def test_a_junk_flood_costs_the_streaming_client_nothing(servers, ctx, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="posecast.server")
    srv = servers(rate_hz=200, rate_burst=20)
    lms = motion(8, 12)
    ref = Client(ctx, srv.endpoint, "reference")
    ref.hello()
    want = [ref.frame(i, lm).jpeg for i, lm in enumerate(lms)]
    ref.close()
    good = Client(ctx, srv.endpoint, "good")
    good.hello()
    flood = Client(ctx, srv.endpoint, "flood")
    flood.hello()
    for _ in range(3000):
        flood.send_raw(b"x")
    assert [good.frame(i, lm).jpeg for i, lm in enumerate(lms)] == want   # frame for frame unchanged
    errors = 0
    while errors < 3000:                                 # the flood is answered in full, at its rate
        m = flood.recv(20)
        assert isinstance(m, P.Error) and m.code == ErrorCode.BAD_MESSAGE
        errors += 1
    assert srv.stats()["send_failures"] == 0 and srv.running


@pytest.mark.timeout(60)
def test_connections_without_a_session_are_closed(servers, ctx):
    srv = servers(greeting_timeout_s=0.3, handshake_timeout_s=0.6)
    port = int(srv.endpoint.rsplit(":", 1)[1])
    raws = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]   # not even a greeting
    pinger = Client(ctx, srv.endpoint, "pinger")         # speaks ZeroMQ, never says hello
    pinger.send(P.Ping())
    assert isinstance(pinger.recv(), P.Pong)
    keep = Client(ctx, srv.endpoint, "keep")             # a client with a session is never closed
    keep.hello()
    for r in raws:                                       # closed by the server: EOF
        r.settimeout(5)
        assert r.recv(4096) == b""
        r.close()
    assert wait_until(lambda: srv.stats()["greeting_timeouts"] == 3, 5)
    assert wait_until(lambda: srv.stats()["handshake_timeouts"] >= 1, 5)   # (ZeroMQ reconnects it: closed again)
    pinger.close()
    assert keep.frame(0, motion(6, 1)[0]).seq == 0
    assert wait_until(lambda: srv.stats()["open_connections"] == 1, 5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("per_address", [False, True])
def test_idle_connections_never_lock_a_newcomer_out(servers, ctx, per_address):
    cap = dict(max_connections_per_address=8) if per_address else dict(max_connections=8)
    srv = servers(greeting_timeout_s=30, **cap)
    port = int(srv.endpoint.rsplit(":", 1)[1])
    keep = Client(ctx, srv.endpoint, "keep")             # holds a session: never evicted
    keep.hello()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    assert wait_until(lambda: srv.stats()["connections"] == 41, 15)   # (silent ones reach accept() after ~1 s)
    st = srv.stats()
    assert st["open_connections"] == 8 and st["evicted"] == 33 and st["connections_refused"] == 0
    newcomer = Client(ctx, srv.endpoint, "newcomer")
    assert isinstance(newcomer.hello(), P.Welcome)
    assert keep.frame(0, motion(6, 1)[0]).seq == 0
    closed = 0
    for r in idle:                                       # the oldest idle ones were closed to make room
        r.settimeout(0.2)
        try:
            closed += r.recv(1) == b""
        except (TimeoutError, socket.timeout):
            pass
        r.close()
    assert closed == 34                                  # 33 evicted for the idle ones, one for the newcomer


@pytest.mark.timeout(60)
def test_no_frame_is_made_for_a_client_that_does_not_read(servers, ctx):
    srv = servers(send_hwm=2, rate_hz=1000, rate_burst=1, out_buffer_bytes=2048, sndbuf_bytes=8192)
    lazy = ctx.socket(zmq.DEALER)
    lazy.setsockopt(zmq.LINGER, 0)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.RCVBUF, 4096)
    lazy.connect(srv.endpoint)
    lazy.send(P.encode(P.Hello(client="lazy")))
    lm = motion(7, 1)[0]
    n = 600
    for i in range(n):
        lazy.send(P.encode(P.Landmarks.from_array(i, 0.0, lm, K)))
        # each landmarks message handled (rendered, skipped or dropped) before the next: on a busy machine a burst
        # would be coalesced (latest wins) into too few frames to ever fill the client's queue
        assert wait_until(lambda: srv.stats()["frames"] + srv.stats()["dropped"] >= i + 1, 5, poll=0.001), srv.stats()
    assert wait_until(lambda: srv.stats()["messages"] == n + 1, 10)
    st = srv.stats()
    assert st["not_rendered"] > 0                        # once the queue was full, landmarks were dropped unrendered:
    # every round sent it a frame, or skipped it, or (once: the frame that found the queue full) rendered in vain
    assert st["frames"] + st["not_rendered"] + st["undeliverable"] == st["rounds"] and st["undeliverable"] == 1
    assert st["frames"] + st["dropped"] == n             # ... and every landmarks message is accounted for
    lazy.close(0)
