"""The live server over loopback ZeroMQ with a tiny random-init dance generator on the torch (CPU) engine.

Every server binds a random port, every socket uses linger 0, and every test has its own timeout.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
import torch
import zmq

from models.presets import get_preset
from models.render import render_labels
from models.visualize import to_uint8
from realtime import protocol as P
from realtime.engine import open_engine
from realtime.protocol import ErrorCode
from realtime.server import Server
from realtime.session import Session
from tiny import SERVER_SIZE as SIZE

K = 33
REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------------
def motion(seed: int, n: int) -> list[np.ndarray]:
    """A random skeleton swaying over n frames (all landmarks visible)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.25, 0.75, (K, 3)).astype(np.float32)
    base[:, 2] = 1.0
    phase = rng.uniform(0, 2 * np.pi, (K, 2))
    out = []
    for t in range(n):
        lm = base.copy()
        lm[:, :2] += (0.08 * np.sin(0.4 * t + phase)).astype(np.float32)
        out.append(lm)
    return out


class Client:
    def __init__(self, ctx: zmq.Context, endpoint: str, name: str = "test"):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.name = name

    def send(self, msg) -> None:
        self.sock.send(P.encode(msg))

    def send_raw(self, *parts: bytes) -> None:
        self.sock.send_multipart(list(parts))

    def recv(self, timeout: float = 10.0):
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no reply from the server")
        return P.decode(self.sock.recv())

    def recv_nowait(self):
        try:
            return P.decode(self.sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            return None

    def hello(self) -> P.Welcome:
        self.send(P.Hello(client=self.name))
        w = self.recv()
        assert isinstance(w, P.Welcome), w
        return w

    def landmarks(self, seq: int, lm) -> None:
        self.send(P.Landmarks.from_array(seq, time.time(), lm, K))

    def frame(self, seq: int, lm) -> P.Frame:
        """Lockstep: send one landmarks message and wait for its frame."""
        self.landmarks(seq, lm)
        f = self.recv()
        assert isinstance(f, P.Frame), f
        assert f.seq == seq
        return f

    def close(self) -> None:
        self.sock.close(0)


def rgb(frame: P.Frame) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def served_endpoint(proc: subprocess.Popen, lines: list[str]) -> str:
    """The address a ``serve`` child process logs once it serves (its stderr lines so far go to ``lines``)."""
    while True:
        line = proc.stderr.readline()
        assert line, "the server exited early:\n" + "".join(lines)
        lines.append(line)
        m = re.search(r"serving .* on (tcp://\S+)", line)
        if m:
            return m.group(1)


def wait_until(cond, timeout: float, poll: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return cond()


# -- Session (no sockets) --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_session_matches_generator_rollout_and_resets(engine):
    lms = motion(0, 5)
    s = Session(engine)
    frames = [s.step(lm)[0].copy() for lm in lms]
    labels = torch.stack([torch.from_numpy(render_labels("dance", lm, SIZE, SIZE)) for lm in lms])[None]
    with torch.inference_mode():
        ref = engine.G.rollout(labels)[0][0]
    for got, want in zip(frames, ref):
        assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, to_uint8(want.numpy()))
    _, timings = s.step(lms[0])
    assert set(timings) >= {"render", "engine"} and all(v >= 0 for v in timings.values())
    s.reset()
    np.testing.assert_array_equal(s.step(lms[0])[0], frames[0])


@pytest.mark.timeout(30)
def test_session_validates_landmarks(engine):
    s = Session(engine)
    lm = motion(1, 1)[0]
    with pytest.raises(P.ProtocolError) as e:
        s.check(np.zeros((32, 3), np.float32), seq=7)
    assert e.value.code == ErrorCode.BAD_LANDMARKS and e.value.seq == 7
    for bad in (np.inf, -np.inf, 1e6):
        x = lm.copy()
        x[3, 1] = bad
        with pytest.raises(P.ProtocolError, match="bad_landmarks"):
            s.step(x)
    x = lm.copy()
    x[5:9] = np.nan                     # missing landmarks are fine
    assert s.step(x)[0].shape == (SIZE, SIZE, 3)
    assert s.step(np.full((K, 3), np.nan, np.float32))[0].shape == (SIZE, SIZE, 3)

    class FaceStub:                     # only cfg (and empty input buffers) are needed to validate
        cfg = get_preset("face", size=32)
        plate = None

        def zero_inputs(self):
            return {}

    face = Session(FaceStub())
    for k in (468, 478):
        assert face.check(np.full((k, 3), 0.5, np.float32)).shape == (k, 3)
    with pytest.raises(P.ProtocolError, match="468"):
        face.check(np.full((33, 3), 0.5, np.float32))


# -- server ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_handshake_and_ping(make_server, ctx):
    srv = make_server()
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", srv.endpoint) and not srv.endpoint.endswith(":0")
    c = Client(ctx, srv.endpoint)
    w = c.hello()
    assert (w.version, w.kind, w.size, w.history_frames, w.num_landmarks) == (P.PROTOCOL_VERSION, "dance", SIZE, 2, K)
    assert (w.layout, w.model, w.backend, w.fps, w.subject_stats) == ("mediapipe-pose-33", "dance", "torch", 25.0, None)
    c.send(P.Ping(ts=12.5))
    assert c.recv() == P.Pong(ts=12.5)
    assert srv.session_count == 1
    c.send(P.Bye())
    assert wait_until(lambda: srv.session_count == 0, 5)


def test_a_version_3_session_answers_in_version_3_and_refuses_a_forecast_lead(make_server, ctx):
    srv = make_server()
    old, new = Client(ctx, srv.endpoint, "v3"), Client(ctx, srv.endpoint, "v4")
    old.send(P.Hello(version=3))
    assert old.recv().version == 3
    assert new.hello().version == 4
    lm = motion(0, 1)[0]
    old.sock.send(P.encode(P.Landmarks.from_array(0, 1.0, lm, K), 3))
    raw = old.sock.recv() if old.sock.poll(10_000) else None
    assert raw is not None and "lead_ms" not in msgpack.unpackb(raw)       # a v3 reader would refuse the field
    assert P.decode(raw).seq == 0
    old.send(P.Landmarks.from_array(1, 1.0, lm, K, lead_ms=100.0))          # a v4 field in a v3 session
    err = old.recv()
    assert (err.code, err.seq) == (P.ErrorCode.BAD_MESSAGE, 1) and "needs protocol version 4" in err.reason
    new.send(P.Landmarks.from_array(7, 2.0, lm, K, lead_ms=100.0))
    frame = new.recv()
    assert (frame.seq, frame.lead_ms) == (7, 100.0)                        # echoed
    old.sock.send(P.encode(P.Landmarks.from_array(2, 1.0, lm, K), 3))    # the refusal cost the session nothing
    again = old.recv()
    assert isinstance(again, P.Frame) and again.seq == 2


@pytest.mark.timeout(60)
def test_stream_latest_wins_every_frame_accounted_for(make_server, ctx):
    srv = make_server(rate_hz=10_000, rate_burst=1000)   # this client sends ~1000 msg/s: no rate limit here
    c = Client(ctx, srv.endpoint)
    c.hello()
    n = 150
    lms = motion(2, n)
    frames = []
    for i in range(n):                   # faster than the engine: a burst, then ~1 message per ms
        c.landmarks(i, lms[i])
        if i >= 50:
            time.sleep(0.001)
        while (m := c.recv_nowait()) is not None:
            assert isinstance(m, P.Frame), m
            frames.append(m)
    while not frames or frames[-1].seq != n - 1:
        m = c.recv(timeout=20)
        assert isinstance(m, P.Frame), m
        frames.append(m)
    assert c.recv_nowait() is None
    seqs = [f.seq for f in frames]
    assert all(a < b for a, b in zip(seqs, seqs[1:]))
    drops = [f.dropped for f in frames]
    assert all(a <= b for a, b in zip(drops, drops[1:]))
    assert len(frames) + frames[-1].dropped == n
    assert wait_until(lambda: srv.stats()["frames"] == len(frames), 2)
    assert srv.stats()["dropped"] == frames[-1].dropped
    f = frames[-1]
    assert set(f.timings) == {"decode", "render", "engine", "encode", "total"}
    assert f.timings["total"] >= f.timings["engine"] > 0
    assert rgb(f).shape == (SIZE, SIZE, 3)


@pytest.fixture(scope="module")
def ort_engine(model_dir):
    return open_engine(model_dir, "onnxruntime")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend, max_batch", [("torch", 1), ("onnxruntime", 16)])
def test_two_clients_have_independent_sessions(make_server, ctx, engine, ort_engine, backend, max_batch):
    """A's frames are bit-identical whatever B does: one engine call per session, or (onnxruntime on CPU) one
    batched call for both, which is bit-identical per sample (tests/test_batch.py)."""
    srv = make_server(engine if backend == "torch" else ort_engine, max_batch=max_batch)
    n = 12
    lm_a, lm_b = motion(3, n), motion(4, n)
    alone = Client(ctx, srv.endpoint, "A alone")
    alone.hello()
    ref = [alone.frame(i, lm_a[i]).jpeg for i in range(n)]
    alone.send(P.Bye())
    alone.close()

    a, b = Client(ctx, srv.endpoint, "A"), Client(ctx, srv.endpoint, "B")
    a.hello()
    b.hello()
    got_a, got_b = [], {}
    for i in range(n):
        b.landmarks(i, lm_b[i])          # B streams without waiting
        got_a.append(a.frame(i, lm_a[i]).jpeg)
        while (m := b.recv_nowait()) is not None:
            assert isinstance(m, P.Frame), m
            got_b[m.seq] = m
    while n - 1 not in got_b:
        m = b.recv()
        assert isinstance(m, P.Frame), m
        got_b[m.seq] = m
    assert got_a == ref                   # B's stream did not change a single byte of what A gets
    assert len(got_b) + got_b[n - 1].dropped == n
    assert all(got_b[s].jpeg != got_a[s] for s in got_b)
    assert srv.session_count == 2


@pytest.mark.timeout(30)
def test_reset_returns_to_zero_history(make_server, ctx):
    srv = make_server()
    c = Client(ctx, srv.endpoint)
    c.hello()
    lms = motion(5, 4)
    first = c.frame(0, lms[0])
    for i in range(1, 4):
        c.frame(i, lms[i])
    with_history = c.frame(4, lms[0])
    assert with_history.jpeg != first.jpeg
    c.send(P.Reset())
    after = c.frame(5, lms[0])
    assert after.jpeg == first.jpeg
    np.testing.assert_array_equal(rgb(after), rgb(first))


@pytest.mark.timeout(30)
def test_closed_connection_frees_its_session_at_once(make_server, ctx, caplog):
    caplog.set_level(logging.INFO, logger="posecast.server")
    srv = make_server(idle_timeout_s=30)
    c = Client(ctx, srv.endpoint, "ghost")
    c.hello()
    c.frame(0, motion(6, 1)[0])
    assert srv.session_count == 1
    c.close()                             # no bye: a killed client's kernel closes the TCP connection
    assert wait_until(lambda: srv.session_count == 0, 2)   # long before the 30 s idle timeout
    assert any("ghost" in r.getMessage() and "its connection closed" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_silent_client_expires_after_the_idle_timeout(make_server, ctx, caplog):
    caplog.set_level(logging.INFO, logger="posecast.server")
    srv = make_server(idle_timeout_s=0.5, heartbeat_s=0.2)
    c = Client(ctx, srv.endpoint, "silent")
    c.hello()
    c.frame(0, motion(6, 1)[0])
    alive = Client(ctx, srv.endpoint, "pinging")   # the same wait, but with application heartbeats
    alive.hello()
    pongs = 0
    # The silent socket stays open (ZMTP heartbeats answered) but sends nothing; the other pings every 0.1 s.
    while srv.session_count == 2:
        alive.send(P.Ping())
        assert isinstance(alive.recv(5), P.Pong)
        pongs += 1
        assert pongs < 200, "the silent session never expired"
        time.sleep(0.1)
    assert srv.session_count == 1 and srv.stats()["expired"] == 1      # only the silent one, by its idle timeout
    assert pongs >= 3                     # it outlived several heartbeats of the other one (0.5 s / 0.1 s)
    assert wait_until(lambda: any("expired" in r.getMessage() and "silent" in r.getMessage()
                                  for r in caplog.records), 2)
    c.landmarks(1, motion(6, 1)[0])
    err = c.recv()
    assert isinstance(err, P.Error) and (err.code, err.seq) == (ErrorCode.NO_SESSION, 1)


@pytest.mark.timeout(60)
def test_bad_messages_get_errors_and_a_good_client_is_unaffected(make_server, ctx):
    srv = make_server()
    lms = motion(7, 40)
    ref_client = Client(ctx, srv.endpoint, "reference")
    ref_client.hello()
    ref = [ref_client.frame(i, lms[i]).jpeg for i in range(len(lms))]
    ref_client.send(P.Bye())
    ref_client.close()

    good = Client(ctx, srv.endpoint, "good")
    good.hello()
    bad = Client(ctx, srv.endpoint, "bad")
    rng = np.random.default_rng(0)
    lm = lms[0]
    inf_lm, far_lm, nan_lm = lm.copy(), lm.copy(), lm.copy()
    inf_lm[2, 0] = np.inf
    far_lm[2, 0] = 1e6
    nan_lm[10:20] = np.nan

    def landmarks_raw(**fields):
        d = {"t": "landmarks", "seq": 1, "capture_ts": 0.0, "shape": [K, 3], "data": lm.tobytes()}
        d.update(fields)
        return msgpack.packb(d, use_bin_type=True)

    cases = [   # (raw frames to send, expected reply: an error code, or a message type)
        ([rng.bytes(64)], ErrorCode.BAD_MESSAGE),
        ([b""], ErrorCode.BAD_MESSAGE),
        ([msgpack.packb({"t": "teleport"})], ErrorCode.BAD_MESSAGE),
        ([b"garbage", b"more garbage"], ErrorCode.BAD_MESSAGE),
        ([P.encode(P.Landmarks.from_array(3, 0.0, lm, K))], (ErrorCode.NO_SESSION, 3)),
        ([P.encode(P.Reset())], ErrorCode.NO_SESSION),
        ([P.encode(P.Hello(version=99))], ErrorCode.BAD_VERSION),
        ([P.encode(P.Hello(client="bad"))], P.Welcome),
        ([P.encode(P.Landmarks.from_array(4, 0.0, lm[:20], K))], (ErrorCode.BAD_LANDMARKS, 4)),
        ([landmarks_raw(seq=5, data=lm.tobytes()[:40])], (ErrorCode.BAD_LANDMARKS, 5)),
        ([landmarks_raw(seq=6, shape=[K, 2])], (ErrorCode.BAD_LANDMARKS, 6)),
        ([landmarks_raw(seq=7, seq_extra=1)], (ErrorCode.BAD_MESSAGE, 7)),
        ([landmarks_raw(seq="8")], ErrorCode.BAD_MESSAGE),
        ([P.encode(P.Landmarks.from_array(9, 0.0, inf_lm, K))], (ErrorCode.BAD_LANDMARKS, 9)),
        ([P.encode(P.Landmarks.from_array(10, 0.0, far_lm, K))], (ErrorCode.BAD_LANDMARKS, 10)),
        ([P.encode(P.Landmarks.from_array(11, 0.0, nan_lm, K))], P.Frame),        # NaN = missing: fine
        ([P.encode(P.Landmarks.from_array(12, 0.0, None, K))], P.Frame),          # nothing detected: fine
        ([P.encode(P.Welcome(1, "dance", 32, 2, 33, "x"))], ErrorCode.BAD_MESSAGE),
        ([P.encode(P.Ping(ts=1.0))], P.Pong),
    ]
    i = 0
    for parts, expect in cases:
        bad.send_raw(*parts)
        reply = bad.recv()
        if isinstance(expect, type):
            assert isinstance(reply, expect), (parts, reply)
        else:
            code, seq = expect if isinstance(expect, tuple) else (expect, None)
            assert isinstance(reply, P.Error), (parts, reply)
            assert (reply.code, reply.seq) == (code, seq), (parts, reply)
            assert reply.reason
        assert good.frame(i, lms[i]).jpeg == ref[i]
        i += 1

    # Over MAXMSGSIZE: ZeroMQ drops the sender's connection; the server carries on.
    huge = Client(ctx, srv.endpoint, "huge")
    huge.send_raw(b"\x00" * (P.MAX_MESSAGE_BYTES + 100))
    # Not ZeroMQ at all: a raw TCP connection spewing bytes.
    host, port = srv.endpoint.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as raw:
        raw.sendall(rng.bytes(4096))
    for j in range(i, len(lms)):
        assert good.frame(j, lms[j]).jpeg == ref[j]
    assert good.recv_nowait() is None
    assert huge.recv_nowait() is None
    huge.close()
    assert srv.running


@pytest.mark.timeout(30)
def test_server_busy(make_server, ctx):
    srv = make_server(max_clients=2)
    c1, c2, c3 = (Client(ctx, srv.endpoint, f"c{i}") for i in range(1, 4))
    c1.hello()
    c2.hello()
    c3.send(P.Hello())
    err = c3.recv()
    assert isinstance(err, P.Error) and err.code == ErrorCode.SERVER_BUSY
    c1.send(P.Bye())
    c1.send(P.Ping())                     # same socket, in order: the bye has been handled once the pong is back
    assert isinstance(c1.recv(), P.Pong)
    c3.hello()
    assert srv.session_count == 2


class FlakyEngine:
    """Delegates to a real engine but raises while ``fail`` is set."""

    def __init__(self, engine):
        self.inner, self.cfg, self.backend, self.fail = engine, engine.cfg, "flaky", False
        self.plate, self.zero_inputs = engine.plate, engine.zero_inputs

    def step(self, feeds):
        if self.fail:
            raise RuntimeError("simulated engine failure")
        return self.inner.step(feeds)


@pytest.mark.timeout(30)
def test_internal_error_is_reported_and_the_server_goes_on(make_server, ctx, engine, caplog):
    caplog.set_level(logging.INFO, logger="posecast.server")
    flaky = FlakyEngine(engine)
    srv = make_server(flaky)
    lms = motion(8, 3)
    c = Client(ctx, srv.endpoint)
    c.hello()
    first = c.frame(0, lms[0])
    flaky.fail = True
    c.landmarks(1, lms[1])
    err = c.recv()
    assert isinstance(err, P.Error) and (err.code, err.seq) == (ErrorCode.INTERNAL, 1)
    flaky.fail = False
    c.frame(2, lms[1])
    c.send(P.Reset())
    assert c.frame(3, lms[0]).jpeg == first.jpeg
    assert any(r.exc_info and "simulated engine failure" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.timeout(30)
def test_stop_is_prompt(engine, ctx):
    srv = Server(engine, "tcp://127.0.0.1:0", stats_interval_s=0)
    with srv:
        thread = srv.start()
        c = Client(ctx, srv.endpoint)
        c.hello()
        for i, lm in enumerate(motion(9, 20)):
            c.landmarks(i, lm)
        srv.stop()
        thread.join(5)                        # a hang guard, not a timing claim: stop() is seen within a poll
        assert not thread.is_alive()
    assert not srv.running
    with pytest.raises(RuntimeError, match="serves once"):
        srv.serve_forever()


@pytest.mark.timeout(60)
def test_serve_shuts_down_cleanly_on_sigterm(model_dir, ctx):
    code = ("import sys; from realtime.server import serve; "
            "serve(sys.argv[1], 'tcp://127.0.0.1:0', 'torch', stats_interval_s=0)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, str(model_dir)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        c = Client(ctx, served_endpoint(proc, lines))
        assert c.hello().size == SIZE
        c.frame(0, motion(10, 1)[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        rest = proc.stderr.read()
        assert "SIGTERM received" in rest and "server stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
